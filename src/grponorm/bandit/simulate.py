"""Many-question, many-seed bandit simulator: exact (Eq. 5/6) and sampled-group dynamics.

Two schedules, as in docs/theory.md §1:
    exact   (`simulate_exact`): each step draws one question uniformly and applies the exact
            REINFORCE or GRPO update (the setting of Theorems 3-4).
    sampled (`sampled.simulate_sampled`): each step updates every question with G sampled outputs,
            binary rewards and advantages from any registered normalizer (the synthetic tasks).

Two paths compute each schedule:
    fast  (orthogonal features only): logit space. Under Assumption 2 (X_j X_i^T = 0, j != i)
          a step on question i moves only z_i, by eta G_i g (G_i = X_i X_i^T). In the exact
          schedule question i's logits after k of its own updates do not depend on when they
          happened, so every question advances in "local time" at once (vectorized), mapped
          to global time by the per-seed selection counts: the same process, step for step.
    dense (any features): parameter space, theta (S, d), one global step at a time.
The exact schedule's fast path has two engines: NumPy (`_local_tables`, path "fast", the
reference) and a compiled twin of it (path "numba", grponorm.bandit.kernels: every chain only as
long as a seed needs it; per-seed logits go through `kernels.seed_records` in one pass, a shared
z0 through `kernels.chain_tables`). "auto" takes "numba" when numba imports and says in
`ExactRun.path_note` (and a logged warning) when it could not.

Both paths draw the same random numbers from the same seeds, so on orthogonal instances
they agree to rounding. Everything is float64.

The sampled schedule lives in ``bandit.sampled`` (its optimizers there); this module holds the
exact schedule and what both share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..normalizers import (
    available_normalizers,
    get_spec,
)
from . import kernels
from .exact import METHODS, logit_direction, softmax_with_complement
from .features import Features

_log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ shared utilities


#: What the bandit can give a normalizer besides the rewards: each question's index (stable
#: across steps: a stateful normalizer keeps its per-prompt state by it) and its one reward as
#: the only component. It has no completion lengths.
BANDIT_CONTEXT = {"prompt_ids", "components", "pi_star", "hessian_norm"}


def bandit_normalizers() -> list[str]:
    """The registered normalizers the bandit can run (their context within ``BANDIT_CONTEXT``
    at default options), sorted."""
    return [m for m in available_normalizers() if set(get_spec(m).needs({})) <= BANDIT_CONTEXT]


def _check_common(features: Features, a, eta, T: int, seeds) -> tuple[np.ndarray, list[int]]:
    a = np.asarray(a)
    if a.shape != (features.n,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"a must be an integer array of shape ({features.n},), got {a.shape}")
    if np.any((a < 0) | (a >= features.K)):
        raise ValueError(f"a must hold indices in [0, K) = [0, {features.K})")
    if isinstance(eta, bool) or not np.isscalar(eta) or not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta must be a finite positive number, got {eta!r}")
    if int(T) < 1:
        raise ValueError(f"T (steps) must be >= 1, got {T}")
    seeds = [int(s) for s in np.atleast_1d(seeds)]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    return a, seeds


def _check_z0(z0, S: int, n: int, K: int) -> np.ndarray:
    z0 = np.asarray(z0, dtype=np.float64)
    if z0.shape == (n, K):
        z0 = z0[None]
    if z0.shape not in ((1, n, K), (S, n, K)):
        raise ValueError(f"z0 must have shape (n, K)=({n}, {K}) or (S, n, K), got {z0.shape}")
    if not np.all(np.isfinite(z0)):
        raise ValueError("z0 contains NaN or inf")
    return z0


def _pick_path(features: Features, path: str) -> str:
    if path == "auto":
        return "fast" if features.orthogonal else "dense"
    if path == "fast" and not features.orthogonal:
        raise ValueError("the fast path needs orthogonal features (Assumption 2); use 'dense'")
    if path == "dense" and features.X is None:
        raise ValueError("the dense path needs materialized features (features.X is None)")
    if path not in ("fast", "dense"):
        raise ValueError(f"path must be 'auto', 'fast' or 'dense', got {path!r}")
    return path


def _pick_exact_path(features: Features, path: str) -> tuple[str, str]:
    """`_pick_path` plus the exact schedule's compiled engine: returns (path, note).

    "numba" needs orthogonal features and numba (else ImportError with the install hint);
    "auto" on orthogonal features takes "numba" when numba imports, else "fast" with a note
    saying why (also logged as a warning)."""
    if path not in ("auto", "fast", "numba", "dense"):
        raise ValueError(f"path must be 'auto', 'fast', 'numba' or 'dense', got {path!r}")
    if path == "numba":
        if not features.orthogonal:
            raise ValueError("the numba path needs orthogonal features (Assumption 2); "
                             "use 'dense'")
        kernels.require_numba()
        return "numba", ""
    path = _pick_path(features, path) if path != "auto" else (
        "numba" if features.orthogonal else "dense")
    if path == "numba" and not kernels.numba_available():
        note = (f"numba is not importable ({kernels.numba_missing_reason()}), so the NumPy "
                f"fast path ran; {kernels.INSTALL_HINT} for the compiled one")
        _log.warning("simulate_exact: %s", note)
        return "fast", note
    return path, ""


def _gram_apply(features: Features, g: np.ndarray) -> np.ndarray:
    """G_i g_i for g of shape (S, n, K): diagonal Gram elementwise, else batched matvec."""
    gd = features.gram_diag
    if gd is not None:
        return gd * g
    return np.einsum("nkj,snj->snk", features.gram, g)


def _logits(X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """z = X theta for X (n, K, d), theta (S, d) -> (S, n, K), as one BLAS matmul."""
    n, K, d = X.shape
    return (theta @ X.reshape(n * K, d).T).reshape(theta.shape[0], n, K)


def _pullback(X: np.ndarray, g: np.ndarray) -> np.ndarray:
    """sum_i X_i^T g_i for g (S, n, K) -> (S, d), as one BLAS matmul."""
    n, K, d = X.shape
    return g.reshape(g.shape[0], n * K) @ X.reshape(n * K, d)


def selection_sequence(seed: int, n: int, T: int) -> np.ndarray:
    """The questions drawn uniformly at steps 0..T-1 by seed `seed` (both paths use it)."""
    return np.random.default_rng([seed, 0]).integers(0, n, size=T)


def local_times(seq: np.ndarray, n: int) -> np.ndarray:
    """k_t = how many times question seq[t] was drawn before step t."""
    keys = seq.astype(np.int16) if n <= np.iinfo(np.int16).max else seq  # radix sort: O(T)
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(seq, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.empty(len(seq), dtype=np.int64)
    k[order] = np.arange(len(seq)) - starts[seq[order]]
    return k


def first_crossing(curve: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the first entry >= threshold along the last axis; -1 where never reached."""
    hit = curve >= threshold
    idx = np.argmax(hit, axis=-1)
    return np.where(hit.any(axis=-1), idx, -1)


# ---------------------------------------------------------------------------- exact schedule


@dataclass
class ExactRun:
    """Result of `simulate_exact` (S seeds, T steps, R recorded points).

    Attributes:
        t: (R,) recorded global steps (0 = before any update, T = after the last).
        mean_pi: (S, R) mean over questions of pi* at the recorded steps.
        steps_to: threshold -> (S,) first step with mean pi* >= threshold, -1 if never.
        C: (S,) Appendix E quantity C(n, T) = 8/(3 n T) sum_i sum_{t<T} sqrt(v_i(t)).
        final_pi: (S, n) pi* of every question after T steps.
        sel_pi: (S, T) pi* of the question drawn at each step, before its update.
        sel_sqrtv: (S, T) its sqrt(pi* (1 - pi*)) (the complement taken without cancellation).
        sel_grad2: (S, T) ||grad J_{i_t}(theta_t)||^2 (only when track_grad).
        path: the engine that ran: "numba", "fast" (NumPy logit space) or "dense".
        path_note: why "auto" did not take "numba" (numba not importable), else "".
    """

    t: np.ndarray
    mean_pi: np.ndarray
    steps_to: dict[float, np.ndarray]
    C: np.ndarray
    final_pi: np.ndarray
    sel_pi: np.ndarray
    sel_sqrtv: np.ndarray
    sel_grad2: np.ndarray | None = None
    path: str = ""
    path_note: str = ""


def _record_points(T: int, record_every: int) -> np.ndarray:
    pts = np.arange(0, T + 1, max(1, int(record_every)))
    return pts if pts[-1] == T else np.append(pts, T)


def _correct_first(features: Features, a: np.ndarray, z0: np.ndarray):
    """Reorder each question's candidates so the correct one is index 0 (the dynamics are
    equivariant under relabeling). Returns z0 (S', n, K) and the reordered Gram (diagonal
    (n, K) or full (n, K, K))."""
    n, K = features.n, features.K
    perm = np.argsort(np.arange(K)[None, :] != a[:, None], axis=1, kind="stable")  # (n, K)
    z = np.take_along_axis(z0, np.broadcast_to(perm, z0.shape), axis=-1)
    gd = features.gram_diag
    if gd is not None:
        return z, np.take_along_axis(gd, perm, axis=1), True
    gram = features.gram[np.arange(n)[:, None, None], perm[:, :, None], perm[:, None, :]]
    return z, gram, False


def _local_tables(features, a, z0, method, eta, kmax, track_grad):
    """Advance every question kmax local steps at once; return per-(seed, question, k) tables.

    The kernel works with the correct answer at index 0, so 1 - pi* is the plain sum of the
    other probabilities and no gather/scatter is needed: about ten array passes per step.

    Returns:
        pi (S', n, kmax+1), sqrtv (S', n, kmax+1), grad2 (S', n, kmax+1) or None.
    """
    z, gram, diag = _correct_first(features, a, z0)
    Sp, n, K = z.shape
    pi = np.empty((Sp, n, kmax + 1))
    sqv = np.empty((Sp, n, kmax + 1))
    g2 = np.empty((Sp, n, kmax + 1)) if track_grad else None
    e = np.empty_like(z)
    for k in range(kmax + 1):
        np.subtract(z, z.max(axis=-1, keepdims=True), out=e)
        np.exp(e, out=e)
        rest = e[..., 1:].sum(axis=-1)  # (S', n): sum of the wrong answers' weights
        s = e[..., 0] + rest
        pa = e[..., 0] / s
        qa = rest / s  # 1 - pi*, no cancellation
        pi[..., k] = pa
        sqv[..., k] = np.sqrt(pa * qa)
        u = np.divide(e, -s[..., None], out=e)  # u = e_a - p, built in place
        u[..., 0] = qa
        if track_grad:  # ||X^T grad||^2 = pa^2 u^T G u
            Gu = gram * u if diag else np.einsum("nkj,snj->snk", gram, u)
            g2[..., k] = pa**2 * np.einsum("snk,snk->sn", u, Gu)
        if k == kmax:
            break
        if method == "reinforce":
            coef = pa
        else:  # sqrt(pa / qa); zero where 1 - pi* underflowed (then u = 0 too)
            coef = np.sqrt(np.divide(pa, qa, out=np.zeros_like(pa), where=qa > 0))
        step = (eta * coef)[..., None] * u
        z += gram * step if diag else np.einsum("nkj,snj->snk", gram, step)
    return pi, sqv, g2


def simulate_exact(
    features: Features, a, z0, *, method: str, eta: float, T: int, seeds=(0,),
    path: str = "auto", record_every: int = 1, thresholds=(0.9, 0.99), track_grad: bool = False,
    theta0: np.ndarray | None = None,
) -> ExactRun:
    """Exact on-policy dynamics, one uniformly drawn question per step (Eq. 5 or 6).

    Args:
        features: question features. a: (n,) correct indices.
        z0: initial logits (n, K), or (S, n, K) per seed. Must equal X theta0 on the dense path.
        method: "reinforce" or "grpo". eta: step size (paper: 1/X_max^2 or 1/(2 X_max^2)).
        T: steps. seeds: one seed per run (the question sequence of seed s is
            `selection_sequence(s, n, T)` on both paths).
        path: "fast" (NumPy logit space, the reference), "numba" (its compiled twin; needs
            numba), "dense" or "auto" (numba, else fast, when the features are orthogonal).
        record_every: stride of the recorded mean-pi* curve.
        thresholds: mean-pi* levels for `steps_to`.
        track_grad: also record ||grad J_{i_t}||^2 at every step (for Theorems 3-4).
        theta0: dense path only: initial parameters (default: least squares for z0).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    a, seeds = _check_common(features, a, eta, T, seeds)
    n, K, S = features.n, features.K, len(seeds)
    z0 = _check_z0(z0, S, n, K)
    path, note = _pick_exact_path(features, path)
    seqs = np.stack([selection_sequence(s, n, T) for s in seeds])  # (S, T)
    rec = _record_points(T, record_every)
    if path in ("fast", "numba"):
        out = _exact_fast(features, a, z0, method, eta, seqs, track_grad, path == "numba")
    else:
        out = _exact_dense(features, a, z0, method, eta, seqs, track_grad, theta0)
    mean_curve, C, final_pi, sel_pi, sel_sqv, sel_g2 = out  # mean_curve (S, T+1)
    steps_to = {float(h): first_crossing(mean_curve, h) for h in thresholds}
    return ExactRun(t=rec, mean_pi=mean_curve[:, rec], steps_to=steps_to, C=C,
                    final_pi=final_pi, sel_pi=sel_pi, sel_sqrtv=sel_sqv, sel_grad2=sel_g2,
                    path=path, path_note=note)


def _exact_fast(features, a, z0, method, eta, seqs, track_grad, compiled=False):
    S, T = seqs.shape
    n = features.n
    if compiled and z0.shape[0] == S:  # per-seed logits: one compiled pass, no tables
        return _exact_records(features, a, z0, method, eta, seqs, track_grad)
    ks = np.stack([local_times(seq, n) for seq in seqs])  # (S, T)
    if compiled:  # each chain only as far as a seed reads it (the shared z0: the longest)
        counts = np.stack([np.bincount(seq, minlength=n) for seq in seqs])  # (S, n)
        pi, sqv, g2 = kernels.chain_tables(*_correct_first(features, a, z0), method, eta,
                                           counts.max(axis=0, keepdims=True), track_grad)
    else:
        kmax = int(ks.max()) + 1
        pi, sqv, g2 = _local_tables(features, a, z0, method, eta, kmax, track_grad)
    mean_curve = np.empty((S, T + 1))
    C = np.empty(S)
    final_pi = np.empty((S, n))
    sel_pi = np.empty((S, T))
    sel_sqv = np.empty((S, T))
    sel_g2 = np.empty((S, T)) if track_grad else None
    width = pi.shape[2]
    for s in range(S):
        src = 0 if pi.shape[0] == 1 else s
        i, k = seqs[s], ks[s]
        flat = i * width + k  # (T,) entry (i, k) of seed src's tables, one 1-D take each
        pi_s, sqv_s = pi[src].reshape(-1), sqv[src].reshape(-1)
        sel_pi[s] = pi_s.take(flat)
        sel_sqv[s] = sqv_s.take(flat)
        flat += 1  # (i, k + 1): after the update
        jump = pi_s.take(flat) - sel_pi[s]  # change of sum_i pi_i at each step
        mean_curve[s, 0] = pi[src, :, 0].sum()
        mean_curve[s, 1:] = mean_curve[s, 0] + np.cumsum(jump)
        mean_curve[s] /= n
        vsum = sqv[src, :, 0].sum() + np.concatenate([[0.0], np.cumsum(sqv_s.take(flat)
                                                                          - sel_sqv[s])])
        C[s] = 8.0 / (3.0 * n * T) * vsum[:T].sum()
        counts = np.bincount(i, minlength=n)
        final_pi[s] = pi[src, np.arange(n), counts]
        if track_grad:
            sel_g2[s] = g2[src].reshape(-1).take(flat - 1)
    return mean_curve, C, final_pi, sel_pi, sel_sqv, sel_g2


def _exact_records(features, a, z0, method, eta, seqs, track_grad):
    """`_exact_fast` for per-seed logits on the compiled path (`kernels.seed_records`)."""
    S, T = seqs.shape
    n = features.n
    sel_pi, sel_sqv, sel_g2, final_pi, pisum, vtot = kernels.seed_records(
        *_correct_first(features, a, z0), method, eta, seqs, track_grad)
    pisum /= n  # the mean pi* curve
    return pisum, 8.0 / (3.0 * n * T) * vtot, final_pi, sel_pi, sel_sqv, sel_g2


def _exact_dense(features, a, z0, method, eta, seqs, track_grad, theta0):
    from .features import theta_for_logits

    S, T = seqs.shape
    X = features.X  # (n, K, d)
    n = features.n
    if theta0 is None:
        theta = np.stack([theta_for_logits(features, z0[min(s, z0.shape[0] - 1)])
                          for s in range(S)])  # (S, d)
    else:
        theta = np.broadcast_to(np.asarray(theta0, dtype=np.float64), (S, X.shape[2])).copy()
    rows = np.arange(S)
    a_b = np.broadcast_to(a, (S, n))
    mean_curve = np.empty((S, T + 1))
    vsum = np.zeros(S)
    sel_pi = np.empty((S, T))
    sel_sqv = np.empty((S, T))
    sel_g2 = np.empty((S, T)) if track_grad else None
    for t in range(T + 1):
        z = _logits(X, theta)
        p, q = softmax_with_complement(z)  # (S, n, K)
        pa = np.take_along_axis(p, a_b[..., None], -1)[..., 0]
        qa = np.take_along_axis(q, a_b[..., None], -1)[..., 0]
        mean_curve[:, t] = pa.mean(axis=1)
        if t == T:
            break
        sqv = np.sqrt(pa * qa)  # (S, n)
        vsum += sqv.sum(axis=1)
        i = seqs[:, t]
        p_i, q_i, a_i = p[rows, i], q[rows, i], a[i]  # (S, K)
        sel_pi[:, t] = pa[rows, i]
        sel_sqv[:, t] = sqv[rows, i]
        Xi = X[i]  # (S, K, d)
        if track_grad:
            gx = np.matmul(logit_direction(p_i, q_i, a_i, "reinforce")[:, None], Xi)[:, 0]
            sel_g2[:, t] = np.einsum("sd,sd->s", gx, gx)
        theta += eta * np.matmul(logit_direction(p_i, q_i, a_i, method)[:, None], Xi)[:, 0]
    C = 8.0 / (3.0 * n * T) * vsum
    return mean_curve, C, pa, sel_pi, sel_sqv, sel_g2
