"""Backend helpers for writing a normalizer once for NumPy (float64) and torch arrays, and the
input checks every normalizer shares (finite rewards, binary rewards, option ranges)."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor
else:
    Array = Any


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


def _log(x: Array) -> Array:
    if _is_torch(x):
        return x.log()
    return np.log(x)


def _exp(x: Array) -> Array:
    if _is_torch(x):
        return x.exp()
    return np.exp(x)


def _as_float(cond: Array, like: Array) -> Array:
    """A boolean array as 0./1. in ``like``'s floating dtype (and device)."""
    if _is_torch(cond):
        return cond.to(like.dtype)
    return cond.astype(np.float64)


def _top2(x: Array) -> tuple[Array, Array, Array]:
    """Largest and second-largest value of each row, and a one-hot mask of the first argmax.

    Args:
        x: ``(n_groups, G)`` with ``G >= 2``.

    Returns:
        ``(first, second, is_first)``: ``(n_groups, 1)``, ``(n_groups, 1)`` and a boolean
        ``(n_groups, G)`` that is True at the first (lowest-index) maximum of each row.
    """
    if _is_torch(x):
        import torch

        top = torch.topk(x, 2, dim=1).values  # (n_groups, 2), descending
        first_idx = x.argmax(dim=1, keepdim=True)  # (n_groups, 1); first maximum
        cols = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, G)
        return top[:, :1], top[:, 1:2], cols == first_idx
    top = np.sort(x, axis=1)[:, ::-1][:, :2]  # (n_groups, 2), descending
    first_idx = np.argmax(x, axis=1)[:, None]  # (n_groups, 1); first maximum
    return top[:, :1], top[:, 1:2], np.arange(x.shape[1])[None, :] == first_idx


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


def _check_positive(name: str, value: float) -> None:
    _check_nonneg(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def _check_range(rewards: Array, method: str, low: float, high: float | None = None) -> None:
    """Raises ValueError naming the first (group, sample) outside ``[low, high]``."""
    bad = rewards < low  # (n_groups, G)
    if high is not None:
        bad = bad | (rewards > high)
    if bool(bad.any()):
        i, j = _first_position(bad)
        span = f"[{low!r}, {high!r}]" if high is not None else f">= {low!r}"
        raise ValueError(
            f"{method} needs rewards {span}; got {float(rewards[i, j])!r} "
            f"at (group {i}, sample {j})"
        )


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
