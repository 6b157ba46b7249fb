"""The sampled-group bandit simulator (docs/theory.md §1): each step updates every question
with G sampled outputs, binary rewards and advantages from any registered normalizer (the
synthetic tasks of E3). Shares its checks, paths and features with ``simulate`` (the exact
schedule).

Optimizers: SGD ascent theta += eta g (the theory's one global step) or Adam on theta. Adam is
per coordinate of theta, so logit space reproduces it only for axis-aligned rows
(`axis_scales`, e.g. `orthogonal_features(rank=None)`); else it runs dense.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..normalizers import NormalizerContext, get_spec, make_state, normalize
from .exact import logit_hessians, softmax_with_complement
from .features import Features
from .simulate import (
    BANDIT_CONTEXT,
    _check_common,
    _check_z0,
    _gram_apply,
    _logits,
    _pick_path,
    _pullback,
    _record_points,
)


@dataclass
class SampledRun:
    """Result of `simulate_sampled` (S seeds, R recorded points).

    Attributes:
        t: (R,) recorded steps.
        mean_pi: (S, R) mean over questions of the exact pi* (expected accuracy).
        sample_acc: (S, R) mean sampled reward at the recorded steps (NaN at step T).
        zero_var_frac: (S, R) fraction of groups whose G rewards were all equal.
        final_pi: (S, n) pi* after T steps.
        collapsed: (S,) questions whose probability mass sits >= collapse_level on one
            wrong answer at the end.
    """

    t: np.ndarray
    mean_pi: np.ndarray
    sample_acc: np.ndarray
    zero_var_frac: np.ndarray
    final_pi: np.ndarray
    collapsed: np.ndarray
    path: str = ""
    options: dict = field(default_factory=dict)


def hessian_norms(p: np.ndarray, q: np.ndarray, a, z: np.ndarray | None = None) -> np.ndarray:
    """Spectral norms of the questions' exact logit-space Hessians of pi* (the oracle context of
    ``oracle_hessian``): ``p, q, z`` (n, K), ``a`` (n,) -> (n,)."""
    H = logit_hessians(p, q, a, z)  # (n, K, K), symmetric
    return np.abs(np.linalg.eigvalsh(H)).max(axis=-1)


def sample_outputs(rng: np.random.Generator, p: np.ndarray, G: int) -> np.ndarray:
    """Draw G outputs per row of p (n, K) by inverse CDF; returns (n, G) indices."""
    cdf = np.cumsum(p, axis=-1)  # (n, K)
    u = rng.random((p.shape[0], G)) * cdf[:, -1:]  # scale by the row sum: no index K
    return (u[:, :, None] >= cdf[:, None, :]).sum(axis=-1)  # (n, G)


def adam_update(m: np.ndarray, v: np.ndarray, grad: np.ndarray, k: int, lr: float,
                betas=(0.9, 0.999), eps: float = 1e-8):
    """One Adam step (Kingma & Ba, Alg. 1) for ascent; returns (m_k, v_k, step), shaped like
    grad, and the caller adds the step: m_k = b1 m + (1 - b1) g, v_k = b2 v + (1 - b2) g^2,
    step = lr m_hat / (sqrt(v_hat) + eps), m_hat = m_k / (1 - b1^k), v_hat = v_k / (1 - b2^k),
    k the 1-based step count."""
    b1, b2 = betas
    m = b1 * m + (1.0 - b1) * grad
    v = b2 * v + (1.0 - b2) * grad * grad
    m_hat = m / (1.0 - b1**k)
    v_hat = v / (1.0 - b2**k)
    return m, v, lr * m_hat / (np.sqrt(v_hat) + eps)


def axis_scales(features: Features) -> np.ndarray | None:
    """(n, K) scales c with X_i[k] = c_ik e_j(i,k), all j(i,k) distinct, else None: then
    z_ik = c_ik theta_j(i,k) and d/dtheta_j(i,k) = c_ik g_ik, so Adam runs in logit space."""
    X = features.X
    if X is None or not features.orthogonal:
        return None
    nz = X != 0.0  # (n, K, d)
    if not np.all(nz.sum(axis=-1) == 1):
        return None
    cols = nz.argmax(axis=-1)  # (n, K)
    if np.unique(cols).size != cols.size:
        return None
    return np.take_along_axis(X, cols[..., None], axis=-1)[..., 0]


def _check_adam(features: Features, path: str, optimizer: str, betas, eps) -> str:
    """Validates the optimizer; Adam goes to the dense path unless features are axis-aligned."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if optimizer == "sgd":
        return path
    if not (all(0.0 <= float(b) < 1.0 for b in betas) and len(betas) == 2 and eps > 0):
        raise ValueError(f"need adam_betas in [0, 1) and adam_eps > 0; got {betas}, {eps}")
    aligned = axis_scales(features) is not None
    if path == "fast" and not aligned:
        raise ValueError("Adam in logit space needs axis-aligned orthogonal features; "
                         "use path='dense'")
    return ("fast" if aligned else "dense") if path == "auto" else path


def sampled_direction(p: np.ndarray, outputs: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """Logit-space policy-gradient estimate (1/G) sum_g A_g (e_{o_g} - p)  (one row per group).

    Args:
        p: (n, K) probabilities. outputs: (n, G) sampled indices. adv: (n, G) advantages.

    Returns:
        (n, K) estimate; its sum over K is zero.
    """
    n, K = p.shape
    G = outputs.shape[1]
    flat = (np.arange(n)[:, None] * K + outputs).ravel()
    hits = np.bincount(flat, weights=adv.ravel(), minlength=n * K).reshape(n, K)
    return (hits - adv.sum(axis=1, keepdims=True) * p) / G


def simulate_sampled(
    features: Features, a, z0, *, normalizer: str, eta: float, T: int, G: int = 8,
    seeds=(0,), path: str = "auto", record_every: int = 1, collapse_level: float = 0.99,
    normalizer_options: dict | None = None, theta0: np.ndarray | None = None,
    on_step: Callable | None = None, optimizer: str = "sgd", adam_betas=(0.9, 0.999),
    adam_eps: float = 1e-8,
) -> SampledRun:
    """Sampled-group dynamics: every step, every question draws G outputs from the policy.

    Rewards are 1 for the correct output and 0 otherwise; advantages come from
    `grponorm.normalizers.normalize(rewards (n, G), normalizer)` per seed (so `batch_std`
    sees the n groups of one step as its batch); the update adds eta X_i^T g_i for every
    question, i.e. eta is a per-question step size.

    Args:
        features, a, z0: as in `simulate_exact`.
        normalizer: a registered normalizer name. normalizer_options: its keyword options.
        eta: step size. T: steps. G: samples per question per step (>= 2).
        seeds: one run per seed; seed s draws outputs from default_rng([s, 1]).
        path, record_every, theta0: as in `simulate_exact`.
        collapse_level: a question has collapsed when one wrong answer holds this much mass.
        on_step: optional observer called before each update as
            on_step(t, p (S, n, K), outputs (S, n, G), rewards (S, n, G), logits (S, n, K)) -
            e.g. for curvature diagnostics on the very samples the update uses.
        optimizer: "sgd" (theta += eta sum_i X_i^T g_i) or "adam" (`adam_update` of that
            direction on theta, learning rate eta, `adam_betas`, `adam_eps`). With "auto",
            Adam runs in logit space only for axis-aligned features (`axis_scales`).
    """
    a, seeds = _check_common(features, a, eta, T, seeds)
    if int(G) < 2:
        raise ValueError(f"G (samples per question) must be >= 2, got {G}")
    opts = dict(normalizer_options or {})
    n, K, S = features.n, features.K, len(seeds)
    needs = set(get_spec(normalizer).needs(opts))
    if needs - BANDIT_CONTEXT:
        raise ValueError(f"normalizer {normalizer!r} needs {sorted(needs - BANDIT_CONTEXT)}, "
                         "which the bandit has not (its outputs have no length)")
    states = [make_state(normalizer, **opts) for _ in seeds]  # one per run; None if stateless
    z0 = _check_z0(z0, S, n, K)
    path = _pick_path(features, _check_adam(features, path, optimizer, adam_betas, adam_eps))
    rngs = [np.random.default_rng([s, 1]) for s in seeds]
    rec = _record_points(T, record_every)
    rec_set = {int(t): j for j, t in enumerate(rec)}
    mean_pi = np.empty((S, len(rec)))
    acc = np.full((S, len(rec)), np.nan)
    zvf = np.full((S, len(rec)), np.nan)
    a_b = np.broadcast_to(a, (S, n))
    if path == "fast":
        z = np.broadcast_to(z0, (S, n, K)).copy()
    else:
        from .features import theta_for_logits

        X = features.X
        if theta0 is None:  # one least-squares solve per distinct z0
            theta0 = np.stack([theta_for_logits(features, z) for z in z0])  # (1 or S, d)
        theta = np.broadcast_to(np.asarray(theta0, float), (S, X.shape[2])).copy()
        z = _logits(X, theta)
    if optimizer == "adam":  # moments of the theta-gradient: (S, d), or (S, n, K) in logit space
        scale = axis_scales(features) if path == "fast" else None
        m = np.zeros((S, n, K) if path == "fast" else theta.shape)
        v = np.zeros_like(m)
    for t in range(T + 1):
        p, q = softmax_with_complement(z)
        pa = np.take_along_axis(p, a_b[..., None], -1)[..., 0]  # (S, n)
        j = rec_set.get(t)
        if j is not None:
            mean_pi[:, j] = pa.mean(axis=1)
        if t == T:
            break
        g = np.empty((S, n, K))
        outs = np.empty((S, n, G), dtype=np.int64)
        rews = np.empty((S, n, G))
        for s in range(S):
            out = sample_outputs(rngs[s], p[s], G)  # (n, G)
            rewards = (out == a[:, None]).astype(np.float64)  # (n, G)
            ctx = NormalizerContext.build(
                normalizer, opts, caller="the bandit",
                prompt_ids=lambda: list(range(n)),  # (n,) the question index
                components=lambda r=rewards: r[..., None],  # (n, G, 1)
                pi_star=lambda ps=pa[s]: ps,  # (n,) the oracle: each question's true pi*
                hessian_norm=lambda ps=p[s], qs=q[s], zs=z[s]: hessian_norms(ps, qs, a, zs))
            adv = normalize(rewards, normalizer, context=ctx, state=states[s], **opts)
            g[s] = sampled_direction(p[s], out, adv)
            outs[s], rews[s] = out, rewards
            if j is not None:
                acc[s, j] = rewards.mean()
                zvf[s, j] = np.mean(np.all(rewards == rewards[:, :1], axis=1))
        if on_step is not None:
            on_step(t, p, outs, rews, z)
        if optimizer == "adam" and path == "fast":  # theta_j(i,k) moves by step; z_ik by c step
            m, v, step = adam_update(m, v, scale * g, t + 1, eta, adam_betas, adam_eps)
            z += scale * step
        elif optimizer == "adam":
            m, v, step = adam_update(m, v, _pullback(X, g), t + 1, eta, adam_betas, adam_eps)
            theta += step
            z = _logits(X, theta)
        elif path == "fast":
            z += eta * _gram_apply(features, g)
        else:
            theta += eta * _pullback(X, g)
            z = _logits(X, theta)
    wrong = p.copy()
    np.put_along_axis(wrong, a_b[..., None], 0.0, axis=-1)
    collapsed = (wrong.max(axis=-1) >= collapse_level).sum(axis=1)
    return SampledRun(t=rec, mean_pi=mean_pi, sample_acc=acc, zero_var_frac=zvf,
                      final_pi=pa, collapsed=collapsed, path=path,
                      options={"normalizer": normalizer, "eta": eta, "G": G,
                               "optimizer": optimizer, **opts})
