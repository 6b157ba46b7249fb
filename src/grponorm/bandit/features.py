"""Feature generators for n-question bandits and the initial logits they start from.

A `Features` holds the Gram matrices G_i = X_i X_i^T (the metric of logit space: a step
theta += eta X_i^T g moves question i's logits by eta G_i g) and, when it fits in memory, the
features X (n, K, d) themselves. Every generator scales its output so that
X_max = max_i ||X_i||_2 = 1, which makes the paper's step sizes 1 (REINFORCE) and 1/2 (GRPO).

Generators:
    orthogonal_features: Assumption 2 holds: every feature of question i is orthogonal to every
        feature of question j (X_i X_j^T = 0 for i != j with X_i stored K x d; the paper's
        X_i^T X_j = 0 stores features as columns); rank K blocks with
        random row norms (diagonal Gram) or rank r < K blocks (full Gram).
    gaussian_features: i.i.d. N(0, 1/d) entries; questions interfere.
    overlap_features: each question's k-th feature shares a direction with every other
        question's k-th feature, cos = rho: a controlled violation of Assumption 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MAX_DENSE_ELEMENTS = 50_000_000  # materialize X (n, K, d) only below this size (400 MB)


@dataclass(frozen=True)
class Features:
    """Features of n questions with K candidates each.

    Attributes:
        gram: (n, K, K) Gram matrices X_i X_i^T.
        orthogonal: whether X_i X_j^T = 0 for all i != j (Assumption 2).
        X: (n, K, d) features, or None when not materialized (too large).
        name: generator name and parameters, for reports.
    """

    gram: np.ndarray
    orthogonal: bool
    X: np.ndarray | None
    name: str

    @property
    def n(self) -> int:
        return self.gram.shape[0]

    @property
    def K(self) -> int:
        return self.gram.shape[1]

    @cached_property
    def gram_diag(self) -> np.ndarray | None:
        """(n, K) diagonal of the Gram matrices when they are all diagonal, else None."""
        off = self.gram.copy()
        idx = np.arange(self.K)
        off[:, idx, idx] = 0.0
        if np.any(off != 0.0):
            return None
        return self.gram[:, idx, idx].copy()

    @cached_property
    def xmax2(self) -> float:
        """X_max^2 = max_i ||X_i||_2^2 = max_i lambda_max(G_i)."""
        return float(np.max(np.linalg.eigvalsh(self.gram)[:, -1]))


def _scale_to_unit(X: np.ndarray) -> np.ndarray:
    return X / np.max(np.linalg.norm(X, ord=2, axis=(-2, -1)))


def _check_sizes(n: int, K: int) -> None:
    if n < 1:
        raise ValueError(f"n (questions) must be >= 1, got {n}")
    if K < 2:
        raise ValueError(f"K (candidates) must be >= 2, got {K}")


def orthogonal_features(
    n: int, K: int, *, rank: int | None = None, norm_range=(0.5, 1.0), seed: int = 0,
    materialize: bool | None = None,
) -> Features:
    """Orthogonal question blocks: X_i = A_i Q_i^T with disjoint orthonormal Q_i (d = n * r).

    Args:
        n, K: questions and candidates.
        rank: r = rank of each block; None (= K) gives mutually orthogonal rows with norms
            drawn uniformly from `norm_range` (diagonal Gram); r < K gives A_i ~ N(0, 1).
        norm_range: row-norm range for the full-rank case (before scaling X_max to 1).
        seed: generator seed.
        materialize: build X (n, K, n r); default: when it fits MAX_DENSE_ELEMENTS.
    """
    _check_sizes(n, K)
    r = K if rank is None else int(rank)
    if not 1 <= r <= K:
        raise ValueError(f"rank must be in [1, K] = [1, {K}], got {rank}")
    rng = np.random.default_rng(seed)
    if rank is None:
        lo, hi = norm_range
        if not 0 < lo <= hi:
            raise ValueError(f"norm_range must satisfy 0 < low <= high, got {norm_range}")
        norms = rng.uniform(lo, hi, size=(n, K))
        norms /= norms.max()
        A = np.zeros((n, K, K))
        A[:, np.arange(K), np.arange(K)] = norms
    else:
        A = rng.standard_normal((n, K, r))
        A /= np.max(np.linalg.norm(A, ord=2, axis=(-2, -1)))
    gram = A @ np.swapaxes(A, 1, 2)  # (n, K, K)
    d = n * r
    if materialize is None:
        materialize = n * K * d <= MAX_DENSE_ELEMENTS
    X = None
    if materialize:
        X = np.zeros((n, K, d))
        for i in range(n):
            X[i, :, i * r:(i + 1) * r] = A[i]
    label = f"orthogonal(n={n}, K={K}, rank={r})"
    return Features(gram=gram, orthogonal=True, X=X, name=label)


def gaussian_features(n: int, K: int, d: int, *, seed: int = 0) -> Features:
    """Dense i.i.d. Gaussian features X_i (K, d), scaled so X_max = 1."""
    _check_sizes(n, K)
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if n * K * d > MAX_DENSE_ELEMENTS:
        raise ValueError(f"n*K*d = {n * K * d} exceeds {MAX_DENSE_ELEMENTS}; reduce n, K or d")
    X = _scale_to_unit(np.random.default_rng(seed).standard_normal((n, K, d)))
    return Features(gram=X @ np.swapaxes(X, 1, 2), orthogonal=False, X=X,
                    name=f"gaussian(n={n}, K={K}, d={d})")


def overlap_features(n: int, K: int, rho: float, *, seed: int = 0) -> Features:
    """x_{i,k} = sqrt(1 - rho) u_{i,k} + sqrt(rho) w_k with orthonormal u's and w's.

    Within a question the rows stay orthonormal (G_i = I); across questions
    X_i X_j^T = rho I, so rho = 0 is Assumption 2 and rho > 0 violates it by a known amount.
    A random rotation hides the block structure (d = (n + 1) K).
    """
    _check_sizes(n, K)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    d = (n + 1) * K
    if n * K * d > MAX_DENSE_ELEMENTS:
        raise ValueError(f"n*K*d = {n * K * d} exceeds {MAX_DENSE_ELEMENTS}; reduce n or K")
    X = np.zeros((n, K, d))
    shared = np.sqrt(rho) * np.eye(K)  # w_k = e_{nK + k}
    for i in range(n):
        X[i, :, i * K:(i + 1) * K] = np.sqrt(1.0 - rho) * np.eye(K)
        X[i, :, n * K:] = shared
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    X = X @ Q
    return Features(gram=X @ np.swapaxes(X, 1, 2), orthogonal=rho == 0.0, X=X,
                    name=f"overlap(n={n}, K={K}, rho={rho})")


def initial_logits(n: int, K: int, a: np.ndarray, pi0: float | np.ndarray | None) -> np.ndarray:
    """Logits (n, K) with pi*_i = pi0 and the wrong answers tied; None gives uniform (1/K).

    z_a = log(pi0 (K - 1) / (1 - pi0)), other entries 0, so softmax(z)_a = pi0 exactly.
    """
    z = np.zeros((n, K))
    if pi0 is None:
        return z
    pi0 = np.broadcast_to(np.asarray(pi0, dtype=np.float64), (n,))
    if np.any((pi0 <= 0) | (pi0 >= 1)):
        raise ValueError("pi0 must lie strictly between 0 and 1")
    z[np.arange(n), a] = np.log(pi0 * (K - 1)) - np.log1p(-pi0)
    return z


def theta_for_logits(features: Features, z0: np.ndarray) -> np.ndarray:
    """Least-squares theta with X_i theta ~= z0_i for all i (exact for orthogonal full rank).

    Raises if the logits are not reachable to 1e-8 (softmax shift invariance is not used).
    """
    if features.X is None:
        raise ValueError("features are not materialized; use the logit-space path")
    n, K, d = features.X.shape
    A = features.X.reshape(n * K, d)
    theta, *_ = np.linalg.lstsq(A, z0.reshape(-1), rcond=None)
    resid = np.max(np.abs(A @ theta - z0.reshape(-1)))
    if resid > 1e-8:
        raise ValueError(
            f"initial logits are not reachable by these features (residual {resid:.2e})")
    return theta
