"""Exact on-policy log-linear softmax bandit: policy, gradient, Hessian, one update.

Model (docs/theory.md §1): one question with K candidate outputs, features X (K, d), parameters
theta (d,), policy p = softmax(X theta), one correct output a, objective J(theta) = p_a = pi*.

Numerics: everything is float64. 1 - pi* is never formed as ``1 - p_a``; it is the sum of the
other probabilities, so pi* -> 1 keeps full relative accuracy (down to 1 - pi* ~ 1e-300).
Every function validates its inputs and names the offending argument in the error.
"""

from __future__ import annotations

import numpy as np

METHODS = ("reinforce", "grpo")


# ----------------------------------------------------------------------------- validation


def _as_features(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a (K, d) feature matrix, got shape {X.shape}")
    if X.shape[0] < 2:
        raise ValueError(f"X must have at least K=2 candidate outputs (rows), got {X.shape[0]}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    return X


def _as_theta(theta, d: int) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (d,):
        raise ValueError(f"theta must have shape ({d},) to match X (K, {d}), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or inf")
    return theta


def _as_index(a, K: int) -> int:
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
        raise TypeError(f"a must be an integer index in [0, {K}), got {a!r}")
    if not 0 <= int(a) < K:
        raise ValueError(f"a must be in [0, K) = [0, {K}), got {a}")
    return int(a)


def _validated(X, a, theta):
    X = _as_features(X)
    return X, _as_index(a, X.shape[0]), _as_theta(theta, X.shape[1])


# ----------------------------------------------------------------------- logit-space kernels


def softmax_with_complement(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the last axis and 1 - p computed without cancellation.

    For entries with p <= 1/2, ``1 - p`` is exact to rounding. Only the arg-max entry can exceed
    1/2; its complement is the sum of the other probabilities.

    Args:
        z: logits, shape (..., K).

    Returns:
        (p, q) with p = softmax(z) and q = 1 - p, both (..., K).
    """
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)  # (..., K)
    s = e.sum(axis=-1, keepdims=True)
    p = e / s
    q = 1.0 - p
    top = np.argmax(z, axis=-1)[..., None]  # (..., 1)
    # ``s - e_top`` would cancel when the top entry dominates: sum the others explicitly.
    e_others = e.copy()
    np.put_along_axis(e_others, top, 0.0, axis=-1)
    others = e_others.sum(axis=-1, keepdims=True) / s
    np.put_along_axis(q, top, others, axis=-1)
    return p, q


def logit_direction(p: np.ndarray, q: np.ndarray, a, method: str) -> np.ndarray:
    """Logit-space update direction g, with theta <- theta + eta X^T g.

    REINFORCE (Eq. 4/5): g = (diag(p) - p p^T) e_a = pi* (e_a - p).
    GRPO (Eq. 6): the same divided by sqrt(pi* (1 - pi*)), evaluated as
    sqrt(pi*/(1 - pi*)) (e_a - p), whose a-th entry is sqrt(pi* (1 - pi*)). When 1 - pi* = 0
    in float64 the gradient is exactly zero (all rewards equal), and so is the update.

    Args:
        p, q: probabilities and their complements from `softmax_with_complement`, (..., K).
        a: correct indices, int or integer array broadcastable to p.shape[:-1].
        method: "reinforce" or "grpo".

    Returns:
        g, shape (..., K).
    """
    a = np.asarray(a)[..., None]
    pa = np.take_along_axis(p, a, axis=-1)  # (..., 1)
    qa = np.take_along_axis(q, a, axis=-1)  # (..., 1) = 1 - pi*, accurate
    u = -p.copy()
    np.put_along_axis(u, a, qa, axis=-1)  # e_a - p with the a-th entry exact
    if method == "reinforce":
        return pa * u
    if method == "grpo":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(qa > 0, np.sqrt(pa / np.where(qa > 0, qa, 1.0)), 0.0)
        return scale * u
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def logit_hessians(p: np.ndarray, q: np.ndarray, a, z: np.ndarray | None = None) -> np.ndarray:
    """Hessians of pi* = p_a with respect to the logits, cancellation-free, vectorized.

    d^2 p_a / dz^2 = p_a [u u^T - diag(p) + p p^T] with u = e_a - p. Entry by entry
    (M = bracket): M_jk = 2 p_j p_k - delta_jk p_j for j, k != a; M_aj = p_j (p_a - q_a);
    M_aa = q_a (q_a - p_a), so no entry subtracts two numbers close to 1. For K = 2 every
    entry is proportional to q_a - p_a = tanh((z_b - z_a)/2), taken from the logits when
    given, so the Hessian keeps full relative accuracy even next to pi* = 1/2 where it is 0.

    Args:
        p, q: (..., K) probabilities and complements (`softmax_with_complement`).
        a: correct index, int or integer array broadcastable to p.shape[:-1].
        z: (..., K) logits (optional; used for K = 2).

    Returns:
        (..., K, K) Hessians in logit space.
    """
    K = p.shape[-1]
    a_idx = np.broadcast_to(np.asarray(a), p.shape[:-1])[..., None]  # (..., 1)
    pa = np.take_along_axis(p, a_idx, axis=-1)  # (..., 1)
    qa = np.take_along_axis(q, a_idx, axis=-1)  # (..., 1) = 1 - pi*, accurate
    onehot = np.arange(K) == a_idx  # (..., K)
    if K == 2 and z is not None:
        za = np.take_along_axis(z, a_idx, axis=-1)
        zb = np.take_along_axis(z, 1 - a_idx, axis=-1)
        dq = np.tanh(0.5 * (zb - za))[..., 0]  # (...,) = q_a - p_a
        pb = np.take_along_axis(p, 1 - a_idx, axis=-1)[..., 0]
        M = np.empty(p.shape + (2,))
        M[...] = (pb * dq)[..., None, None]  # the (b, b) entry
        off = (-pb * dq)[..., None, None]
        M = np.where(onehot[..., :, None] ^ onehot[..., None, :], off, M)
        diag_a = (qa[..., 0] * dq)[..., None, None]
    else:
        M = 2.0 * p[..., :, None] * p[..., None, :]
        M[..., np.arange(K), np.arange(K)] -= p
        row = p * (pa - qa)  # (..., K)
        M = np.where(onehot[..., :, None], row[..., None, :], M)
        M = np.where(onehot[..., None, :], row[..., :, None], M)
        diag_a = (qa * (qa - pa))[..., 0][..., None, None]
    M = np.where(onehot[..., :, None] & onehot[..., None, :], diag_a, M)
    return pa[..., None] * M


def logit_hessian(p: np.ndarray, q: np.ndarray, a: int, z: np.ndarray | None = None) -> np.ndarray:
    """:func:`logit_hessians` of one question: (K,) -> (K, K)."""
    return logit_hessians(p, q, a, z)


# ------------------------------------------------------------------------- public functions


def policy(X, theta) -> np.ndarray:
    """pi_theta(. | q) = softmax(X theta).

    Args:
        X: (K, d) features.
        theta: (d,) parameters.

    Returns:
        (K,) probabilities, float64.
    """
    X = _as_features(X)
    theta = _as_theta(theta, X.shape[1])
    return softmax_with_complement(X @ theta)[0]


def pi_star(X, a, theta) -> tuple[float, float]:
    """(pi*, 1 - pi*) with the complement computed without cancellation."""
    X, a, theta = _validated(X, a, theta)
    p, q = softmax_with_complement(X @ theta)
    return float(p[a]), float(q[a])


def grad_J(X, a, theta) -> np.ndarray:
    """Gradient of J = pi*: X^T (diag(p) - p p^T) e_a = pi* X^T (e_a - p)  (Eq. 4).

    Args:
        X: (K, d) features. a: correct index. theta: (d,) parameters.

    Returns:
        (d,) gradient.
    """
    X, a, theta = _validated(X, a, theta)
    p, q = softmax_with_complement(X @ theta)
    return X.T @ logit_direction(p, q, a, "reinforce")


def hess_J(X, a, theta) -> np.ndarray:
    """Hessian of J = pi*: X^T H_z X with H_z from `logit_hessian` (Lemma 2's object).

    Args:
        X: (K, d) features. a: correct index. theta: (d,) parameters.

    Returns:
        (d, d) symmetric Hessian.
    """
    X, a, theta = _validated(X, a, theta)
    z = X @ theta
    p, q = softmax_with_complement(z)
    return X.T @ logit_hessian(p, q, a, z) @ X


def paper_step_size(X, method: str) -> float:
    """The paper's step sizes: 1/X_max^2 (REINFORCE, Thm 3), 1/(2 X_max^2) (GRPO, Thm 4).

    X_max is the spectral norm of X (one question) or the max over questions of a (n, K, d)
    stack.
    """
    X = np.asarray(X, dtype=np.float64)
    xmax2 = float(np.max(np.linalg.norm(X, ord=2, axis=(-2, -1)))) ** 2
    if xmax2 == 0.0:
        raise ValueError("X is zero: the paper's step size 1/X_max^2 is undefined")
    if method == "reinforce":
        return 1.0 / xmax2
    if method == "grpo":
        return 1.0 / (2.0 * xmax2)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def update(X, a, theta, method: str = "grpo", eta: float | None = None) -> np.ndarray:
    """One exact on-policy step on question (X, a).

    REINFORCE (Eq. 5): theta + eta X^T (diag(p) - p p^T) e_a.
    GRPO (Eq. 6): theta + eta X^T (diag(p) - p p^T) e_a / sqrt(pi* (1 - pi*)).

    Args:
        X: (K, d) features. a: correct index. theta: (d,) parameters.
        method: "reinforce" or "grpo".
        eta: step size; None uses the paper's (`paper_step_size`) with X_max = ||X||_2.

    Returns:
        The new (d,) theta (the input is not modified).
    """
    X, a, theta = _validated(X, a, theta)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if eta is None:
        eta = paper_step_size(X, method)
    if isinstance(eta, bool) or not np.isscalar(eta) or not np.isfinite(eta):
        raise ValueError(f"eta must be a finite real number, got {eta!r}")
    p, q = softmax_with_complement(X @ theta)
    return theta + float(eta) * (X.T @ logit_direction(p, q, a, method))
