"""Advantage normalizers over grouped rewards: one registry for the bandit and the LLM trainer.

Every normalizer is a pure function of a reward matrix of shape ``(n_groups, G)`` -- one row per
prompt, one column per sampled response -- that returns advantages of the same shape. The same
function serves the NumPy (float64) softmax bandit and the torch LLM trainer: the math is written
once against a handful of backend helpers (``_mean``, ``_sum``, ``_std``, ``_sqrt``, ``_where``)
that dispatch on the array type.

Use :func:`normalize` (or :func:`normalize_with_stats`) rather than calling a registered function
directly: it validates the input and enforces, for every normalizer, that a group whose ``G``
rewards are all equal gets an advantage of exactly zero.

Registered normalizers (``r`` is one group's rewards, ``mean``/``std`` are over that group)::

    group_std           (r - mean) / (std + eps)               GRPO; verl, TRL "group", OpenRLHF
    none                r - mean                               Dr. GRPO / No-Std
    batch_std           (r - mean) / (std over batch + eps)    TRL scale_rewards="batch"
    rloo                r_g - mean_{h != g} r_h                RLOO leave-one-out baseline
    bernoulli_std       (r - p) / sqrt(p (1 - p))              exact-theory form, binary rewards
    bernoulli_smoothed  (r - p) / sqrt(p~ (1 - p~))            Laplace-smoothed p~, binary rewards
    bnpo                (r - p) / Beta(alpha, beta) density at p   BNPO; alpha, beta fit per batch
    mapo                lam z-score + (1 - lam) (r - mean)/mean    MAPO; lam = 4 p (1 - p)
    gpg                 B/M * (r - mean)                       GPG (verl); M = non-zero rewards
    grpo_passk          (r_max - r_2nd)/(std + eps) at argmax  verl pass@k GRPO; 0 elsewhere

Adding a normalizer is one decorated function::

    @register_normalizer("my_norm")
    def my_norm(rewards, *, scale=1.0):
        return scale * _center(rewards, axis=1)  # (n_groups, G)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import classic, peers  # noqa: F401  (registers the built-in normalizers)
from .ops import (
    Array,
    _as_rewards,
    _first_position,
    _is_torch,
    _std,
    _where,
    _zero_variance_mask,
    zero_variance_mask,
)
from .registry import (
    NORMALIZERS,
    UnknownNormalizerError,
    available_normalizers,
    get_normalizer,
    register_normalizer,
)

__all__ = [
    "NORMALIZERS",
    "AdvantageStats",
    "UnknownNormalizerError",
    "advantage_stats",
    "available_normalizers",
    "get_normalizer",
    "normalize",
    "normalize_with_stats",
    "register_normalizer",
    "zero_variance_mask",
]

# Entry points
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdvantageStats:
    """Summary of one batch of advantages (for logging).

    Attributes:
        n_groups: Number of groups (prompts) in the batch.
        n_zero_variance: Groups whose rewards were all equal (advantage exactly 0).
        frac_zero_variance: ``n_zero_variance / n_groups``.
        adv_mean: Mean advantage over all ``n_groups * G`` entries.
        adv_std: Population std (ddof=0) of the advantages over all entries.
        adv_abs_max: Largest absolute advantage.
    """

    n_groups: int
    n_zero_variance: int
    frac_zero_variance: float
    adv_mean: float
    adv_std: float
    adv_abs_max: float

    def as_dict(self) -> dict[str, float | int]:
        """Returns the fields as a plain dict (e.g. for a JSONL metrics line)."""
        return dataclasses.asdict(self)


def _apply(rewards: Any, method: str, options: dict[str, Any]) -> tuple[Array, Array]:
    fn = get_normalizer(method)
    x = _as_rewards(rewards)  # (n_groups, G), floating
    adv = fn(x, **options)
    if _is_torch(x) != _is_torch(adv):
        raise TypeError(
            f"normalizer {method!r} returned {type(adv).__name__} for {type(x).__name__} input"
        )
    if tuple(adv.shape) != tuple(x.shape):
        raise ValueError(
            f"normalizer {method!r} returned shape {tuple(adv.shape)}; expected {tuple(x.shape)}"
        )
    adv = adv.to(dtype=x.dtype) if _is_torch(x) else np.asarray(adv, dtype=np.float64)
    mask = _zero_variance_mask(x)  # (n_groups,)
    adv = _where(mask[:, None], 0.0, adv)  # exact zeros, never an eps-amplified residue
    bad = ~(adv.isfinite() if _is_torch(adv) else np.isfinite(adv))
    if bool(bad.any()):
        i, j = _first_position(bad)
        raise FloatingPointError(
            f"normalizer {method!r} produced a non-finite advantage {float(adv[i, j])!r} at "
            f"(group {i}, sample {j}); the rewards are too large for this normalizer"
        )
    return adv, mask


def normalize(rewards: Any, method: str = "group_std", **options: Any) -> Array:
    """Turns grouped rewards into advantages with the registered normalizer ``method``.

    Args:
        rewards: ``(n_groups, G)`` rewards: a NumPy array (or nested list) or a torch tensor.
        method: Registered normalizer name; see :func:`available_normalizers`.
        **options: Keyword options of that normalizer (e.g. ``eps``, ``ddof``, ``alpha``); an
            option it does not take raises TypeError.

    Returns:
        ``(n_groups, G)`` advantages: NumPy float64 for NumPy input; for a tensor, a tensor of
        the same floating dtype (float32 for integer/bool input) on the same device. Groups whose
        rewards are all equal get exactly 0.

    Raises:
        ValueError: If rewards are not 2-D, have an empty dimension, or contain NaN/inf (the
            message names the first bad (group, sample)), or an option value is invalid.
        UnknownNormalizerError: If ``method`` is not registered.
        TypeError: If an option is not accepted by the normalizer.
    """
    adv, _ = _apply(rewards, method, options)
    return adv


def normalize_with_stats(
    rewards: Any, method: str = "group_std", **options: Any
) -> tuple[Array, AdvantageStats]:
    """Like :func:`normalize`, and also returns :class:`AdvantageStats` for the batch."""
    adv, mask = _apply(rewards, method, options)
    return adv, advantage_stats(adv, int(mask.shape[0]), int(mask.sum()))


def advantage_stats(adv: Any, n_groups: int, n_zero_variance: int) -> AdvantageStats:
    """:class:`AdvantageStats` of advantage values of any shape (NumPy or torch): mean,
    population std and largest magnitude over all entries (0 for no entries), with the group
    counts given. Half-precision tensors are summarized in float32 (their own reductions are too
    coarse for logging); other dtypes as they are."""
    a = adv.detach() if _is_torch(adv) else np.asarray(adv, dtype=np.float64)
    if _is_torch(a) and a.dtype.itemsize < 4:
        a = a.float()
    empty = (a.numel() if _is_torch(a) else a.size) == 0
    return AdvantageStats(
        n_groups=n_groups,
        n_zero_variance=n_zero_variance,
        frac_zero_variance=n_zero_variance / n_groups if n_groups else 0.0,
        adv_mean=0.0 if empty else float(a.mean()),
        adv_std=0.0 if empty else float(_std(a, axis=None, ddof=0).reshape(())),
        adv_abs_max=0.0 if empty else float(abs(a).max()),
    )
