"""``ratio_compare``: speed-ups over seeds on the log scale (a geometric-mean ratio)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from .common import (
    _as_seeds,
    _direction,
    _fmt,
)
from .paired import Comparison, compare

# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RatioComparison:
    """A geometric-mean ratio ``a/b`` over seeds (e.g. a speed-up), compared on the log scale.

    Attributes:
        ratio: ``exp(mean(log a - log b))``, the geometric mean of the per-seed ratios (paired).
        low, high: Its interval, ``exp`` of the log-scale interval (NaN with one seed).
        log: The :class:`Comparison` of ``log a`` with ``log b``.
    """

    ratio: float
    low: float
    high: float
    log: Comparison

    @property
    def n(self) -> int:
        return self.log.n

    @property
    def p(self) -> float:
        return self.log.p

    def verdict(self, expected_sign: float) -> str:
        """Verdict for ``ratio > 1`` (``expected_sign = +1``) or ``ratio < 1`` (-1)."""
        return self.log.verdict(expected_sign)

    def seeds_needed(self, ratio: float) -> int | None:
        """Seeds that would resolve a ratio (e.g. the paper's speed-up 2.23) at this spread."""
        if not (ratio > 0 and math.isfinite(ratio)):
            raise ValueError(f"ratio must be finite and > 0; got {ratio!r}")
        return self.log.seeds_needed(math.log(ratio))

    def describe(self, expected_sign: float | None = None, ratio: float | None = None) -> str:
        """One line, e.g. ``1.25× [1.10, 1.42], n=10 paired: reproduced``."""
        log = self.log
        kind = "paired" if log.paired else "unpaired"
        n = f"n={log.n}" if log.paired else f"n={log.sizes[0]}+{log.sizes[1]}"
        if not log.resolvable:
            return f"{_fmt(self.ratio, False)}×, {n} {kind}: inconclusive ({log.n} seed)"
        label = (
            _direction(log.low, log.high, True)
            if expected_sign is None
            else self.verdict(expected_sign)
        )
        head = (
            f"{_fmt(self.ratio, False)}× [{_fmt(self.low, False)}, {_fmt(self.high, False)}], "
            f"{n} {kind}: {label}"
        )
        if label != "inconclusive":
            return head
        target = self.ratio if ratio is None else float(ratio)
        needed = self.seeds_needed(target) if target != 1 else None
        if needed is None:
            return head
        return f"{head} (≈{needed} seeds would resolve {_fmt(target, False)}×)"

    def __str__(self) -> str:
        return self.describe()


def ratio_compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    paired: bool = True,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "t",
    n_resamples: int = 9999,
) -> RatioComparison:
    """Compares ``a/b`` over seeds on the log scale (speed-ups), as a geometric-mean ratio.

    ``log a - log b`` goes through :func:`compare` (same options and edge cases); the result is
    the geometric-mean ratio ``exp(diff)`` with the interval ``[exp(low), exp(high)]``. For E2's
    speed-up of GRPO over REINFORCE pass ``a = REINFORCE steps``, ``b = GRPO steps`` per seed and
    ``expected_sign = +1`` (ratio > 1).

    Raises:
        ValueError: As :func:`compare`, and if a value is not > 0 (the message names the index).
    """
    arms = []
    for name, arm in (("a", a), ("b", b)):
        arr = _as_seeds(arm, name)
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name}[{i}] is {float(arr[i])!r}; a ratio needs values > 0")
        arms.append(np.log(arr))
    log = compare(
        arms[0],
        arms[1],
        paired=paired,
        confidence=confidence,
        seed=seed,
        method=method,
        n_resamples=n_resamples,
    )
    return RatioComparison(math.exp(log.diff), math.exp(log.low), math.exp(log.high), log)


# --------------------------------------------------------------------------------------------
# Correlations
