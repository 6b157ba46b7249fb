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

Adding a normalizer is one decorated function::

    @register_normalizer("my_norm")
    def my_norm(rewards, *, scale=1.0):
        return scale * _center(rewards, axis=1)  # (n_groups, G)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor
else:
    Array = Any

__all__ = [
    "NORMALIZERS",
    "AdvantageStats",
    "UnknownNormalizerError",
    "available_normalizers",
    "get_normalizer",
    "normalize",
    "normalize_with_stats",
    "register_normalizer",
    "zero_variance_mask",
]

Normalizer = Callable[..., Array]

#: The registry: normalizer name -> pure function ``f(rewards, **options) -> advantages``.
NORMALIZERS: dict[str, Normalizer] = {}


class UnknownNormalizerError(KeyError, ValueError):
    """Raised for a normalizer name that is not registered (both a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all.
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Decorator that registers ``fn`` in :data:`NORMALIZERS` under ``name``.

    The function receives a validated floating reward matrix of shape ``(n_groups, G)`` (NumPy
    float64 or a floating torch tensor) and keyword-only options, and returns advantages of the
    same shape and array type. It need not special-case all-equal groups: :func:`normalize`
    zeroes them afterwards.

    Args:
        name: Registry key, used as ``normalize(rewards, method=name)``.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"normalizer name must be a non-empty string; got {name!r}")

    def decorator(fn: Normalizer) -> Normalizer:
        if name in NORMALIZERS:
            raise ValueError(
                f"normalizer {name!r} is already registered (by {NORMALIZERS[name].__qualname__})"
            )
        if not callable(fn):
            raise TypeError(f"normalizer {name!r} must be callable; got {type(fn).__name__}")
        NORMALIZERS[name] = fn
        return fn

    return decorator


def available_normalizers() -> list[str]:
    """Returns the registered normalizer names, sorted."""
    return sorted(NORMALIZERS)


def get_normalizer(name: str) -> Normalizer:
    """Returns the registered normalizer function called ``name``.

    Raises:
        UnknownNormalizerError: (a KeyError and a ValueError) if ``name`` is not registered; the
            message lists the available names.
    """
    try:
        return NORMALIZERS[name]
    except (KeyError, TypeError):
        raise UnknownNormalizerError(
            f"unknown normalizer {name!r}; available: {', '.join(available_normalizers())}"
        ) from None


# --------------------------------------------------------------------------------------------
# Backend helpers: the only place that knows NumPy from torch.
# --------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to check a NumPy array
    return torch is not None and isinstance(x, torch.Tensor)


def _mean(x: Array, axis: int | None = None) -> Array:
    """Mean over ``axis`` (all entries if None), keeping dims so the result broadcasts."""
    if _is_torch(x):
        return x.mean().reshape((1,) * x.ndim) if axis is None else x.mean(dim=axis, keepdim=True)
    return x.mean(axis=axis, keepdims=True)


def _sum(x: Array, axis: int | None = None) -> Array:
    """Sum over ``axis`` (all entries if None), keeping dims."""
    if _is_torch(x):
        return x.sum().reshape((1,) * x.ndim) if axis is None else x.sum(dim=axis, keepdim=True)
    return x.sum(axis=axis, keepdims=True)


def _sqrt(x: Array) -> Array:
    if _is_torch(x):
        return x.sqrt()
    return np.sqrt(x)


def _where(cond: Array, a: Array | float, b: Array | float) -> Array:
    if _is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def _all(cond: Array, axis: int) -> Array:
    if _is_torch(cond):
        return cond.all(dim=axis)
    return cond.all(axis=axis)


def _center(x: Array, axis: int | None = None) -> Array:
    """Returns ``x - mean(x)`` over ``axis`` with one correction pass.

    ``d = x - mean(x)`` inherits the rounding error of ``mean(x)``, so ``mean(d)`` can be as large
    as the spread itself when a group's rewards differ by a few ulps; subtracting ``mean(d)``
    (the corrected two-pass algorithm) makes the centered rewards sum to zero to working
    precision. The exact mean is unchanged, so this matches ``x - x.mean()`` up to rounding.
    """
    d = x - _mean(x, axis)
    return d - _mean(d, axis)


def _std(x: Array, axis: int | None = None, *, ddof: int = 0) -> Array:
    """Standard deviation ``sqrt(sum((x - mean)^2) / (n - ddof))`` over ``axis``, keeping dims.

    ``ddof=0`` is the population std (``np.std``), ``ddof=1`` the Bessel-corrected one
    (``torch.std``'s default). With a single sample (``n == 1``) the deviation is identically zero
    and the std is returned as 0 for any ``ddof``; otherwise ``0 <= ddof < n`` is required.
    """
    n = math.prod(x.shape) if axis is None else x.shape[axis]
    _check_ddof(ddof, n)
    d = _center(x, axis)
    if n == 1:
        return _sum(d * d, axis)  # exactly zero, right shape and type
    return _sqrt(_sum(d * d, axis) / (n - ddof))


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, and 0 where ``den == 0`` (no 0/0 warnings or NaNs)."""
    ok = den > 0
    return _where(ok, num / _where(ok, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# Option and input validation
# --------------------------------------------------------------------------------------------


def _check_nonneg(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {value!r}")


def _check_ddof(ddof: int, n: int) -> None:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)):
        raise TypeError(f"ddof must be an int; got {type(ddof).__name__}")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0; got {ddof}")
    if n > 1 and ddof >= n:
        raise ValueError(f"ddof={ddof} needs more than {ddof} samples; got {n}")


def _group_size(rewards: Array) -> int:
    return int(rewards.shape[1])


def _first_position(bad: Array) -> tuple[int, int]:
    """Row-major first (group, sample) index where the boolean matrix ``bad`` is True."""
    if _is_torch(bad):
        import torch

        i, j = torch.nonzero(bad)[0].tolist()
        return int(i), int(j)
    i, j = np.argwhere(bad)[0]
    return int(i), int(j)


def _check_binary(rewards: Array, method: str) -> None:
    bad = (rewards != 0) & (rewards != 1)  # (n_groups, G)
    if bool(bad.any()):
        i, j = _first_position(bad)
        raise ValueError(
            f"{method} needs binary rewards in {{0, 1}}; got {float(rewards[i, j])!r} "
            f"at (group {i}, sample {j})"
        )


def _as_rewards(rewards: Any) -> Array:
    """Validates ``rewards`` and returns it as a floating 2-D array of the same backend.

    NumPy input (or anything ``np.asarray`` accepts) becomes float64; a torch tensor keeps its
    floating dtype and device, and an integer or bool tensor is promoted to float32.
    """
    if _is_torch(rewards):
        import torch

        x = rewards
        if x.is_complex():
            raise TypeError(f"rewards must be real; got dtype {x.dtype}")
        if not x.is_floating_point():
            x = x.to(torch.float32)
        finite = torch.isfinite
    else:
        if np.iscomplexobj(rewards):
            raise TypeError("rewards must be real; got a complex array")
        x = np.asarray(rewards, dtype=np.float64)
        finite = np.isfinite
    if x.ndim != 2:
        raise ValueError(
            f"rewards must have shape (n_groups, G); got a {x.ndim}-D array of shape "
            f"{tuple(x.shape)}"
        )
    n_groups, group_size = x.shape
    if n_groups < 1 or group_size < 1:
        raise ValueError(
            f"rewards must have shape (n_groups, G) with n_groups >= 1 and G >= 1; got shape "
            f"{tuple(x.shape)}"
        )
    bad = ~finite(x)  # (n_groups, G)
    if bool(bad.any()):
        i, j = _first_position(bad)
        raise ValueError(
            f"rewards must be finite; got {float(x[i, j])!r} at (group {i}, sample {j})"
        )
    return x


def _zero_variance_mask(x: Array) -> Array:
    return _all(x == x[:, :1], axis=1)  # (n_groups,)


def zero_variance_mask(rewards: Any) -> Array:
    """Marks the groups whose ``G`` rewards are all exactly equal.

    Equality is exact: rewards that differ only by rounding (``0.1 + 0.2`` vs ``0.3``) do not
    form a zero-variance group. Quantize rewards first if that matters.

    Args:
        rewards: Reward matrix of shape ``(n_groups, G)``, NumPy or torch.

    Returns:
        Boolean array of shape ``(n_groups,)`` (NumPy or torch, on the input's device), True
        where the group has zero variance.
    """
    return _zero_variance_mask(_as_rewards(rewards))


# --------------------------------------------------------------------------------------------
# Normalizers
# --------------------------------------------------------------------------------------------


@register_normalizer("group_std")
def group_std(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """GRPO advantage: the group-standardized reward.

    ``A_g = (r_g - mean(r)) / (std(r) + eps)`` with mean and std over the group's G rewards and
    ``std = sqrt(sum_h (r_h - mean)^2 / (G - ddof))``.

    The defaults (``ddof=1``, i.e. Bessel's unbiased std as ``torch.std`` computes it, and
    ``eps=1e-6``) reproduce verl's GRPO estimator with ``norm_adv_by_std_in_grpo=True``.
    ``eps=1e-4`` (``ddof=1``) reproduces TRL GRPOTrainer's ``scale_rewards="group"`` and
    ``eps=1e-9`` OpenRLHF's ``group_norm``; ``ddof=0`` gives the population std (with ``eps=0``
    on binary rewards this is :func:`bernoulli_std`).

    ``eps`` is the explicit floor that guards the division: it bounds the amplification by
    ``1/eps`` for groups with tiny but nonzero spread. It must be ``>= 0``; with ``eps=0`` the
    only guard is the exact-zero rule for all-equal groups.

    Differences from the peers, by design: all-equal groups get exactly 0 (TRL and verl give
    ``(r - mean)/eps``, a rounding residue such as 1e-17/1e-6 when the mean is inexact), and
    ``G == 1`` gives 0 (verl passes a singleton group's raw reward through).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    _check_nonneg("eps", eps)
    centered = _center(rewards, axis=1)  # (n_groups, G)
    std = _std(rewards, axis=1, ddof=ddof)  # (n_groups, 1)
    return _safe_div(centered, std + eps)  # (n_groups, G)


@register_normalizer("none")
def no_std(rewards: Array) -> Array:
    """No-Std (Dr. GRPO; OpenRLHF ``dr_grpo``, TRL ``scale_rewards="none"``): mean baseline only.

    ``A_g = r_g - mean(r)``, the mean over the group's G rewards.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    return _center(rewards, axis=1)  # (n_groups, G)


@register_normalizer("batch_std")
def batch_std(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """Group-mean baseline, batch-wide scale (TRL GRPOTrainer ``scale_rewards="batch"``).

    ``A_{i,g} = (r_{i,g} - mean_g r_{i,.}) / (std(all n_groups * G rewards) + eps)``: the mean is
    per group, the std is one number over the whole batch (around the batch mean), so the
    relative weight of prompts is preserved. ``eps=1e-4`` (``ddof=1``) matches TRL.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the batch std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std (the floor guarding the division).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    _check_nonneg("eps", eps)
    centered = _center(rewards, axis=1)  # (n_groups, G)
    std = _std(rewards, axis=None, ddof=ddof)  # (1, 1)
    return _safe_div(centered, std + eps)  # (n_groups, G)


@register_normalizer("rloo")
def rloo(rewards: Array) -> Array:
    """REINFORCE leave-one-out (RLOO): each sample's baseline is the mean of the other G - 1.

    ``A_g = r_g - (1/(G-1)) sum_{h != g} r_h = G/(G-1) * (r_g - mean(r))``; identical to
    OpenRLHF's ``rloo`` (``r - (sum - r)/(G - 1)``).

    Args:
        rewards: ``(n_groups, G)`` floating rewards, ``G >= 2``.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If ``G < 2`` (no other samples to form the baseline).
    """
    group_size = _group_size(rewards)
    if group_size < 2:
        raise ValueError(
            f"rloo needs G >= 2 samples per group (the baseline is the mean of the other G - 1); "
            f"got G={group_size}"
        )
    return _center(rewards, axis=1) * (group_size / (group_size - 1))  # (n_groups, G)


@register_normalizer("bernoulli_std")
def bernoulli_std(rewards: Array) -> Array:
    """Exact-theory GRPO for binary rewards: standardize by the Bernoulli std of the group.

    ``A_g = (r_g - p) / sqrt(p (1 - p))`` with ``p = k/G`` the group's success rate (k successes).
    This equals :func:`group_std` with ``ddof=0, eps=0`` on binary rewards. ``1 - p`` is computed
    as ``mean(1 - r)`` (exact for binary rewards) rather than ``1 - mean(r)``.

    No eps is needed: a non-degenerate group has ``1 <= k <= G - 1``, so
    ``p (1 - p) = k (G - k) / G^2 >= (G - 1) / G^2`` and ``|A_g| <= sqrt(G - 1)``. Degenerate
    groups (``p`` in {0, 1}) are still guarded -- 0/0 gives 0 -- and then zeroed by
    :func:`normalize`.

    Args:
        rewards: ``(n_groups, G)`` rewards in {0, 1}.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If a reward is not 0 or 1 (the message names its group and sample).
    """
    _check_binary(rewards, "bernoulli_std")
    p = _mean(rewards, axis=1)  # (n_groups, 1)
    q = _mean(1.0 - rewards, axis=1)  # (n_groups, 1), = 1 - p
    return _safe_div(_center(rewards, axis=1), _sqrt(p * q))  # (n_groups, G)


@register_normalizer("bernoulli_smoothed")
def bernoulli_smoothed(rewards: Array, *, alpha: float = 1.0) -> Array:
    """Bernoulli standardization with a smoothed success rate in the scale (research extension).

    ``A_g = (r_g - p) / sqrt(p~ (1 - p~))`` with ``p = k/G`` and ``p~ = (k + alpha)/(G + 2 alpha)``
    (``alpha = 1``: Laplace's rule of succession). The numerator keeps the unbiased baseline
    ``p`` so each group's advantages still sum to zero; only the scale is smoothed, which caps the
    ``1/std`` amplification of nearly solved or nearly failed prompts: ``p~ (1 - p~)`` is bounded
    away from 0 for every ``k``, so no eps is needed. ``alpha = 0`` recovers :func:`bernoulli_std`.

    Args:
        rewards: ``(n_groups, G)`` rewards in {0, 1}.
        alpha: Non-negative pseudo-count added to both successes and failures.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If a reward is not 0 or 1, or ``alpha`` is negative or not finite.
    """
    _check_nonneg("alpha", alpha)
    _check_binary(rewards, "bernoulli_smoothed")
    group_size = _group_size(rewards)
    k = _sum(rewards, axis=1)  # (n_groups, 1), successes
    p_smooth = (k + alpha) / (group_size + 2 * alpha)  # (n_groups, 1)
    q_smooth = (group_size - k + alpha) / (group_size + 2 * alpha)  # (n_groups, 1), = 1 - p~
    return _safe_div(_center(rewards, axis=1), _sqrt(p_smooth * q_smooth))  # (n_groups, G)


# --------------------------------------------------------------------------------------------
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
    a = adv.detach() if _is_torch(adv) else adv
    if _is_torch(a) and a.dtype.itemsize < 4:
        a = a.float()  # half-precision reductions are too coarse for logging
    n_groups = int(mask.shape[0])
    n_zero = int(mask.sum())
    stats = AdvantageStats(
        n_groups=n_groups,
        n_zero_variance=n_zero,
        frac_zero_variance=n_zero / n_groups,
        adv_mean=float(a.mean()),
        adv_std=float(_std(a, axis=None, ddof=0).reshape(())),
        adv_abs_max=float(abs(a).max()),
    )
    return adv, stats
