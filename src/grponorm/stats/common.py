"""Shared pieces of the comparisons: verdict rules, formatting, seeds needed (t half-width)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

#: The three verdicts, in the order reproduced, contradicted, inconclusive.
VERDICTS = ("reproduced", "contradicted", "inconclusive")

_METHODS = ("t", "bootstrap", "bootstrap-bca", "bootstrap-percentile")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    return c


def _sign(expected_sign: float) -> int:
    """+1 or -1 from a non-zero real (typically +1/-1, or the paper's signed effect)."""
    if isinstance(expected_sign, bool) or not isinstance(
        expected_sign, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"expected_sign must be a real number; got {type(expected_sign).__name__}")
    if not math.isfinite(expected_sign) or expected_sign == 0:
        raise ValueError(f"expected_sign must be non-zero and finite; got {expected_sign!r}")
    return 1 if expected_sign > 0 else -1


def _verdict(low: float, high: float, n_ok: bool, expected_sign: float) -> str:
    """Verdict of an interval [low, high] for an effect expected to have ``expected_sign``."""
    sign = _sign(expected_sign)
    if not n_ok or math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > 0:
        side = 1
    elif high < 0:
        side = -1
    else:
        return "inconclusive"
    return "reproduced" if side == sign else "contradicted"


def _direction(low: float, high: float, n_ok: bool) -> str:
    """Neutral label when no direction is expected: positive / negative / inconclusive."""
    if not n_ok or math.isnan(low) or math.isnan(high):
        return "inconclusive"
    return "positive" if low > 0 else "negative" if high < 0 else "inconclusive"


def _fmt(x: float, signed: bool = True) -> str:
    """A number for a one-line report, with a typographic minus."""
    if math.isnan(x):
        return "nan"
    spec = "+" if signed else ""
    s = f"{x:{spec}.3f}" if x == 0 or 1e-3 <= abs(x) < 1e5 else f"{x:{spec}.3g}"
    return s.replace("-", "\N{MINUS SIGN}")


def _as_seeds(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """Validates one arm's per-seed results: a non-empty 1-D finite float64 array."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one result per seed); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one seed")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] is {float(arr[i])!r}; every per-seed result must be finite")
    return arr


def _bootstrap_kwargs(seed: int) -> dict:
    # scipy >= 1.15 names the generator ``rng``; older versions ``random_state``.
    params = inspect.signature(sps.bootstrap).parameters
    key = "rng" if "rng" in params else "random_state"
    return {key: np.random.default_rng(seed)}


# --------------------------------------------------------------------------------------------
# Seeds needed
# --------------------------------------------------------------------------------------------


def _half_width(n: int, sd: float, alpha: float, paired: bool) -> float:
    """Half-width of the t-interval with n seeds (per arm when unpaired, pooled sd)."""
    if paired:
        return float(sps.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return float(sps.t.ppf(1 - alpha / 2, 2 * n - 2)) * sd * math.sqrt(2.0 / n)


def seeds_needed(
    effect: float,
    sd: float,
    *,
    confidence: float = 0.95,
    paired: bool = True,
    max_n: int = 10_000_000,
) -> int | None:
    """Smallest number of seeds whose t-interval would exclude 0 for a true ``effect``.

    Paired (the default): the smallest ``n >= 2`` with ``t_{n-1, 1-alpha/2} sd / sqrt(n) <
    |effect|``, ``sd`` the spread of the paired differences. Unpaired: ``n`` seeds per arm,
    ``t_{2n-2, 1-alpha/2} sd sqrt(2/n) < |effect|`` with ``sd`` the pooled per-arm spread. This is
    the n at which an observed difference equal to ``effect`` (at this spread) would resolve;
    it is not a power calculation (a true effect of that size is resolved about half the time).

    Args:
        effect: The effect to resolve (e.g. the paper's difference); its sign is ignored.
        sd: The spread (e.g. :attr:`Comparison.sd`).
        confidence: Confidence level of the interval.
        paired: Paired differences (True) or two independent arms of equal size.
        max_n: Search limit.

    Returns:
        The number of seeds (2 when ``sd == 0``), or None if ``effect == 0``, ``sd`` is NaN
        (unknown, e.g. from one seed), or more than ``max_n`` seeds would be needed.
    """
    alpha = 1 - _check_confidence(confidence)
    effect, sd = abs(float(effect)), float(sd)
    if math.isinf(effect) or sd < 0 or math.isinf(sd):
        raise ValueError(f"effect and sd must be finite and sd >= 0; got {effect=}, {sd=}")
    if effect == 0 or math.isnan(effect) or math.isnan(sd):
        return None
    if sd == 0:
        return 2

    def resolves(n: int) -> bool:
        return _half_width(n, sd, alpha, paired) < effect

    # The half-width decreases in n: double until it resolves, then bisect.
    hi = 2
    while not resolves(hi):
        if hi >= max_n:
            return None
        hi = min(2 * hi, max_n)
    lo = hi // 2  # does not resolve (or is below 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and resolves(mid):
            hi = mid
        else:
            lo = mid
    return max(hi, 2)


# --------------------------------------------------------------------------------------------
# Differences over seeds
