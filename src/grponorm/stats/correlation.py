"""Fisher-z intervals and verdicts for Pearson correlations."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from .common import (
    _as_seeds,
    _check_confidence,
    _direction,
    _fmt,
    _verdict,
)

# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CorrelationResult:
    """A Pearson correlation with its Fisher-z confidence interval.

    Attributes:
        r: The correlation.
        n: Number of (x, y) pairs it was computed from.
        low, high: ``tanh(atanh(r) -+ z_{1-alpha/2} / sqrt(n - 3))``; NaN when ``n <= 3``.
        p: Two-sided p-value of ``r == 0`` from ``t = r sqrt((n-2)/(1-r^2))`` with ``n - 2``
            degrees of freedom (as ``scipy.stats.pearsonr``); NaN when ``n <= 2``.
        confidence: Confidence level of the interval.
    """

    r: float
    n: int
    low: float
    high: float
    p: float
    confidence: float

    @property
    def resolvable(self) -> bool:
        return self.n > 3 and not math.isnan(self.low)

    def verdict(self, expected_sign: float) -> str:
        """As :meth:`Comparison.verdict`; ``n <= 3`` is always inconclusive."""
        return _verdict(self.low, self.high, self.resolvable, expected_sign)

    def describe(self, expected_sign: float | None = None) -> str:
        """One line, e.g. ``r=+0.398 [−0.21, +0.78], n=12: inconclusive``."""
        head = f"r={_fmt(self.r)}"
        if not self.resolvable:
            return f"{head}, n={self.n}: inconclusive (n <= 3)"
        label = (
            _direction(self.low, self.high, True)
            if expected_sign is None
            else self.verdict(expected_sign)
        )
        return f"{head} [{_fmt(self.low)}, {_fmt(self.high)}], n={self.n}: {label}"

    def __str__(self) -> str:
        return self.describe()


def check_correlation(r, n) -> tuple[float, int]:
    """``(r, n)`` as a float in [-1, 1] and a positive int.

    Raises:
        ValueError: If ``r`` is not in [-1, 1] (NaN included) or ``n`` not a positive integer.
    """
    r = float(r)
    if not -1.0 <= r <= 1.0:  # also rejects NaN
        raise ValueError(f"r must be in [-1, 1]; got {r!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    return r, int(n)


def correlation_interval(r: float, n: int, confidence: float = 0.95) -> CorrelationResult:
    """Fisher-z interval for a Pearson correlation ``r`` computed from ``n`` pairs.

    ``z = atanh(r)`` is approximately normal with standard error ``1/sqrt(n - 3)``, so the
    interval is ``tanh(z -+ z_{1-alpha/2}/sqrt(n - 3))`` (the interval ``scipy.stats.pearsonr``
    reports). ``n <= 3`` has no interval (NaN; verdict inconclusive). ``|r| = 1`` gives the point
    interval ``[r, r]`` and ``p = 0``.

    Raises:
        ValueError: If ``r`` is not in [-1, 1] or ``n`` is not a positive integer.
    """
    _check_confidence(confidence)
    r, n = check_correlation(r, n)
    if n <= 2:
        p = math.nan
    elif abs(r) == 1.0:
        p = 0.0
    else:
        t = r * math.sqrt((n - 2) / (1.0 - r * r))
        p = float(2 * sps.t.sf(abs(t), n - 2))
    if n <= 3:
        return CorrelationResult(r, n, math.nan, math.nan, p, float(confidence))
    if abs(r) == 1.0:
        return CorrelationResult(r, n, r, r, p, float(confidence))
    z, se = math.atanh(r), 1.0 / math.sqrt(n - 3)
    crit = float(sps.norm.ppf(1 - (1 - confidence) / 2))
    return CorrelationResult(
        r, n, math.tanh(z - crit * se), math.tanh(z + crit * se), p, float(confidence)
    )


def correlation(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> CorrelationResult:
    """Pearson correlation of paired samples with its Fisher-z interval.

    Raises:
        ValueError: If the lengths differ, a value is NaN/inf (named by index), or either
            sample is constant (the correlation is undefined).
    """
    xs, ys = _as_seeds(x, "x"), _as_seeds(y, "y")
    if xs.size != ys.size:
        raise ValueError(f"x and y must have the same length; got {xs.size} and {ys.size}")
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0 or syy == 0:
        raise ValueError("correlation is undefined for a constant sample")
    r = float(np.clip((dx @ dy) / math.sqrt(sxx * syy), -1.0, 1.0))
    return correlation_interval(r, int(xs.size), confidence)
