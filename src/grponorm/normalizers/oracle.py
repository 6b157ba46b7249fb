"""Oracle normalizers: GRPO's centring with a scale read from the question's true curvature, for
the bandit, where the curvature is known (docs/theory.md §3, Lemma 2). They ask how much of Std's
effect is the curvature it estimates, and which power of the curvature is best:

- ``oracle_std``: the true Bernoulli std ``sqrt(pi*(1 - pi*))`` -- Std without sampling noise;
- ``oracle_curvature``: ``pi*(1 - pi*)``, Lemma 2's local curvature scale (a Newton-like step);
- ``oracle_hessian``: the spectral norm of the question's exact logit-space Hessian
  ``d^2 pi* / dz^2`` (``bandit.exact.logit_hessians``).

Their context (``pi_star``, ``hessian_norm``: one value per group) exists only in the bandit;
the language-model trainers, TRL and verl have no source for it and refuse them by name
(:meth:`NormalizerContext.build`). Each divides the centred rewards ``r - mean_g r`` by its scale
floored at ``floor`` (default 1e-6, an explicit guard: a question at pi* = 0 or 1 has scale 0),
so all-equal groups keep exactly zero advantage.
"""

from __future__ import annotations

import numpy as np

from .ops import Array, as_like, as_numpy, center, check_positive
from .registry import register_normalizer

__all__ = ["oracle_curvature", "oracle_hessian", "oracle_std"]

FLOOR = 1e-6  # the smallest scale divided by (a question at pi* = 0 or 1 has scale 0)


def _scaled(rewards: Array, scale: np.ndarray, floor: float) -> Array:
    """``(r - mean_g r) / max(scale, floor)``, one scale per group. # (n_groups, G)"""
    check_positive("floor", floor)
    x = as_numpy(rewards).astype(np.float64)  # (n_groups, G)
    s = np.asarray(scale, dtype=np.float64).reshape(-1)  # (n_groups,)
    if s.shape != (x.shape[0],) or not np.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"oracle scale must be (n_groups,) = ({x.shape[0]},), finite and "
                         f">= 0; got shape {s.shape}")
    adv = np.asarray(center(x, axis=1)) / np.maximum(s, floor)[:, None]  # (n_groups, G)
    return as_like(adv, rewards)


def _pi_star(pi_star) -> np.ndarray:
    p = np.asarray(pi_star, dtype=np.float64).reshape(-1)  # (n_groups,)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("context pi_star must lie in [0, 1]")
    return p


@register_normalizer("oracle_std", context=("pi_star",))
def oracle_std(rewards: Array, *, pi_star, floor: float = FLOOR) -> Array:
    """Std with the true Bernoulli std: ``(r - mean_g r) / max(sqrt(pi*(1 - pi*)), floor)``,
    the population std that group_std estimates from G samples (Eq. (6) without its noise)."""
    p = _pi_star(pi_star)
    return _scaled(rewards, np.sqrt(p * (1.0 - p)), floor)


@register_normalizer("oracle_curvature", context=("pi_star",))
def oracle_curvature(rewards: Array, *, pi_star, floor: float = FLOOR) -> Array:
    """Lemma 2's curvature scale: ``(r - mean_g r) / max(pi*(1 - pi*), floor)``, the std
    squared (the power of a Newton step on one question)."""
    p = _pi_star(pi_star)
    return _scaled(rewards, p * (1.0 - p), floor)


@register_normalizer("oracle_hessian", context=("hessian_norm",))
def oracle_hessian(rewards: Array, *, hessian_norm, floor: float = FLOOR) -> Array:
    """The exact curvature: ``(r - mean_g r) / max(||d^2 pi*/dz^2||_2, floor)``, the spectral
    norm of the question's logit-space Hessian (``bandit.exact.logit_hessians``)."""
    return _scaled(rewards, hessian_norm, floor)
