"""Backend helpers for writing a normalizer once for NumPy (float64) and torch arrays, and the
input checks every normalizer shares (finite rewards, binary rewards, option ranges).

These are the public building blocks of a new normalizer (``from grponorm.normalizers import
ops``); each dispatches on the array type, so one formula serves NumPy and torch:

- reductions that keep dims (so results broadcast against ``(n_groups, G)``): :func:`mean`,
  :func:`total`, :func:`std` (``ddof`` 0 population, 1 Bessel), :func:`center` (``x - mean``
  with one correction pass, exact zero-sum);
- :func:`whiten`: ``(x - mean) / sqrt(var + eps)`` over the whole batch, optionally weighted;
- elementwise: :func:`sqrt`, :func:`log`, :func:`exp`, :func:`where`, :func:`as_float`,
  :func:`safe_div` (``num / den`` where ``den > 0``, else 0: the guard of every division);
- checks that raise ``ValueError``/``TypeError`` naming the culprit: :func:`check_nonneg`,
  :func:`check_positive`, :func:`check_binary`, :func:`check_range`, :func:`check_ddof`;
- :func:`group_size`, :func:`zero_variance_mask`, :func:`flat_mask`,
  :func:`zero_advantage_mask`, :func:`is_torch`.

The underscore names (``_center``, ``_std``, ...) are kept as aliases for existing code.
"""

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


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to check a NumPy array
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a float64 NumPy array (a tensor is detached and copied to the CPU): for
    normalizers whose arithmetic (a Kalman filter, a running moment) is written in NumPy."""
    return x.detach().double().cpu().numpy() if is_torch(x) else np.asarray(x, dtype=np.float64)


def as_like(values: np.ndarray, x: Any) -> Any:
    """``values`` in ``x``'s array type: a tensor of ``x``'s dtype and device, or as is."""
    if is_torch(x):
        import torch

        return torch.as_tensor(values, dtype=x.dtype, device=x.device)
    return values


def mean(x: Array, axis: int | None = None) -> Array:
    """Mean over ``axis`` (all entries if None), keeping dims so the result broadcasts."""
    if _is_torch(x):
        return x.mean().reshape((1,) * x.ndim) if axis is None else x.mean(dim=axis, keepdim=True)
    return x.mean(axis=axis, keepdims=True)


def total(x: Array, axis: int | None = None) -> Array:
    """Sum over ``axis`` (all entries if None), keeping dims."""
    if _is_torch(x):
        return x.sum().reshape((1,) * x.ndim) if axis is None else x.sum(dim=axis, keepdim=True)
    return x.sum(axis=axis, keepdims=True)


def sqrt(x: Array) -> Array:
    if _is_torch(x):
        return x.sqrt()
    return np.sqrt(x)


def where(cond: Array, a: Array | float, b: Array | float) -> Array:
    if _is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def all_(cond: Array, axis: int) -> Array:
    if _is_torch(cond):
        return cond.all(dim=axis)
    return cond.all(axis=axis)


def center(x: Array, axis: int | None = None) -> Array:
    """Returns ``x - mean(x)`` over ``axis`` with one correction pass.

    ``d = x - mean(x)`` inherits the rounding error of ``mean(x)``, so ``mean(d)`` can be as large
    as the spread itself when a group's rewards differ by a few ulps; subtracting ``mean(d)``
    (the corrected two-pass algorithm) makes the centered rewards sum to zero to working
    precision. The exact mean is unchanged, so this matches ``x - x.mean()`` up to rounding.
    """
    d = x - _mean(x, axis)
    return d - _mean(d, axis)


def std(x: Array, axis: int | None = None, *, ddof: int = 0) -> Array:
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


def log(x: Array) -> Array:
    if _is_torch(x):
        return x.log()
    return np.log(x)


def exp(x: Array) -> Array:
    if _is_torch(x):
        return x.exp()
    return np.exp(x)


def as_float(cond: Array, like: Array) -> Array:
    """A boolean array as 0./1. in ``like``'s floating dtype (and device)."""
    if _is_torch(cond):
        return cond.to(like.dtype)
    return cond.astype(np.float64)


def top2(x: Array) -> tuple[Array, Array, Array]:
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


def safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, and 0 where ``den == 0`` (no 0/0 warnings or NaNs)."""
    ok = den > 0
    return _where(ok, num / _where(ok, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# Option and input validation
# --------------------------------------------------------------------------------------------


def check_nonneg(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {value!r}")


def check_positive(name: str, value: float) -> None:
    _check_nonneg(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def check_range(rewards: Array, method: str, low: float, high: float | None = None) -> None:
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


def check_ddof(ddof: int, n: int) -> None:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)):
        raise TypeError(f"ddof must be an int; got {type(ddof).__name__}")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0; got {ddof}")
    if n > 1 and ddof >= n:
        raise ValueError(f"ddof={ddof} needs more than {ddof} samples; got {n}")


def group_size(rewards: Array) -> int:
    return int(rewards.shape[1])


def first_position(bad: Array) -> tuple[int, int]:
    """Row-major first (group, sample) index where the boolean matrix ``bad`` is True."""
    if _is_torch(bad):
        import torch

        i, j = torch.nonzero(bad)[0].tolist()
        return int(i), int(j)
    i, j = np.argwhere(bad)[0]
    return int(i), int(j)


def check_binary(rewards: Array, method: str) -> None:
    bad = (rewards != 0) & (rewards != 1)  # (n_groups, G)
    if bool(bad.any()):
        i, j = _first_position(bad)
        raise ValueError(
            f"{method} needs binary rewards in {{0, 1}}; got {float(rewards[i, j])!r} "
            f"at (group {i}, sample {j})"
        )


def as_rewards(rewards: Any) -> Array:
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


def flat_mask(rewards: Array, components: Array | None = None) -> Array:
    """Marks the flat groups: all ``G`` rewards exactly equal and, when per-component rewards
    are given, every component exactly equal within the group too (a group flat in the combined
    reward but not in a component still carries a signal for a normalizer that reads the
    components, e.g. ``gdpo``).

    Args:
        rewards: ``(n_groups, G)`` floating rewards (NumPy or torch).
        components: ``(n_groups, G, K)`` per-component rewards, or None.

    Returns:
        Boolean ``(n_groups,)``, NumPy or torch like ``rewards``.
    """
    flat = _zero_variance_mask(rewards)  # (n_groups,)
    if components is not None:
        same = components == components[:, :1, :]  # (n_groups, G, K)
        flat = flat & _all(_all(same, axis=2), axis=1)
    return flat


def zero_advantage_mask(adv: Array) -> Array:
    """Marks the groups whose ``G`` advantages are all exactly 0 (no gradient from them).

    Args:
        adv: ``(n_groups, G)`` advantages (NumPy or torch).

    Returns:
        Boolean ``(n_groups,)``, NumPy or torch like ``adv``.
    """
    return _all(adv == 0, axis=1)


# --------------------------------------------------------------------------------------------


def whiten(x: Array, weights: Array | None = None, *, eps: float = 1e-8) -> Array:
    """Batch whitening ``(x - m) / sqrt(v + eps)`` over every entry of ``x``.

    ``m`` is the (weighted) mean and ``v`` the Bessel-corrected (weighted) variance,
    ``v = sum w (x - m)^2 / sum w * N / (N - 1)`` with ``N = sum w`` -- verl's ``masked_whiten``
    when ``w`` counts each row's valid tokens (``weights=None``: every entry weighs 1, ``N`` is
    the number of entries). ``eps`` (added to the variance, verl's 1e-8) is the explicit floor of
    the division: the amplification is at most ``1/sqrt(eps)``. With ``N <= 1`` the variance is
    taken as 0.

    Args:
        x: Values of any shape (typically ``(n_groups, G)``).
        weights: Non-negative weights broadcastable to ``x`` (e.g. lengths), or None.
        eps: Non-negative constant added to the variance.

    Returns:
        Whitened values, same shape and array type as ``x``.
    """
    check_nonneg("eps", eps)
    w = x * 0.0 + 1.0 if weights is None else x * 0.0 + weights  # (like x)
    n = total(w)  # (1, ..., 1)
    m = safe_div(total(w * x), n)  # (1, ..., 1)
    d = x - m
    m2 = total(w * d * d)  # (1, ..., 1)
    var = safe_div(m2, n) * safe_div(n, n - 1.0)  # Bessel: N / (N - 1); 0 for N <= 1
    var = where(n > 1.0, var, 0.0)
    return d / sqrt(var + eps)


# Private aliases (existing code and the first normalizer modules use these names).
_is_torch = is_torch
_mean = mean
_sum = total
_sqrt = sqrt
_where = where
_all = all_
_center = center
_std = std
_log = log
_exp = exp
_as_float = as_float
_top2 = top2
_safe_div = safe_div
_check_nonneg = check_nonneg
_check_positive = check_positive
_check_range = check_range
_check_ddof = check_ddof
_group_size = group_size
_first_position = first_position
_check_binary = check_binary
_as_rewards = as_rewards
