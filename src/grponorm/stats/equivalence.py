"""Readings against the paper's effect size: reproduced, smaller than the paper's, inconclusive.

A sign verdict (:meth:`Comparison.verdict`) says whether our interval excludes 0; it does not say
whether our effect is as large as the paper's. The readings here also test the paper's size
``delta`` (signed: its sign is the paper's side). At level ``alpha = 1 - confidence``::

    reproduced                 the two-sided (1 - alpha) t-interval excludes 0 on the paper's
                               side (the sign verdict of ``compare``)
    smaller than the paper's   effects as large as the paper's are excluded: the one-sided
                               level-alpha test of H0: effect >= |delta| (on the paper's side)
                               against H1: effect < |delta| rejects, i.e. the bound of the
                               (1 - 2 alpha) two-sided interval on the paper's side is below
                               |delta| -- the upper of Schuirmann's (1987) two one-sided tests
                               (TOST), the only margin the paper's claim sets
    inconclusive               neither, or fewer than two replicates

"reproduced" takes precedence: an effect can be real yet smaller than the paper's (the
description then says both; :attr:`EffectReading.smaller` holds the second test). An interval
that excludes 0 on the other side reads "smaller than the paper's" and the description says the
sign is opposite. Every reading reports the largest effect still allowed: the one-sided
(1 - alpha) bound on the paper's side, ``mean + t_{df, 1-alpha} se`` (= the (1 - 2 alpha)
interval's bound), so "smaller than the paper's" holds exactly when that bound is below
``|delta|``. At ``confidence=0.95``: two-sided 95% interval for the sign, one-sided 5% test
(the 90% interval's bound) for the size.

Differences: the t-interval of the mean of paired differences (as ``compare``), standard error
``sd/sqrt(n)`` with ``n - 1`` degrees of freedom, or ``sd/sqrt(n_eff)`` with ``n_eff - 1`` for
autocorrelated values (``n_eff`` from :func:`grponorm.stats.autocorr.effective_sample_size`).
Correlations: Fisher's z = atanh(r), normal with standard error ``1/sqrt(n - 3)`` for one
coefficient from n pairs (as ``correlation_interval``), or the t-interval of the mean z over
replicates (seeds, or measurement steps, as E5's Table 1); bounds shown back on the r scale
(``tanh``). Schuirmann, D. J. (1987), "A comparison of the two one-sided tests procedure and the
power approach for assessing the equivalence of average bioavailability", J. Pharmacokinet.
Biopharm. 15(6), 657-680.

Cross-checked against ``statsmodels.stats.weightstats.ttost_paired``
(tests/test_stats_crosscheck.py; statsmodels comes with the ``test`` extra): "smaller than the
paper's" is its one-sided test on the paper's side at level alpha, ``largest`` the margin at
which that test's p-value is alpha, and the two-sided interval ``DescrStatsW.tconfint_mean``'s.
statsmodels (~160 MiB installed with pandas and patsy) returns p-values only -- no reading, no
largest effect, no fractional ``n_eff`` degrees of freedom -- so the few lines of SciPy here
stay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from .common import _as_seeds, _check_confidence, _fmt, _sign
from .correlation import check_correlation

#: The three readings, in the order reproduced, smaller than the paper's, inconclusive.
READINGS = ("reproduced", "smaller than the paper's", "inconclusive")

#: The paper's same-step Pearson correlation of Fisher proxy and reward variance (Table 1).
PAPER_R = 0.342

_Z_CLIP = 0.999999  # per-replicate r clipped before atanh, as experiments.table1


@dataclasses.dataclass(frozen=True)
class EffectReading:
    """An effect measured against the paper's: estimate, interval, largest effect allowed.

    Attributes:
        estimate: Mean difference (or the correlation ``r``; for a mean over replicates
            ``tanh(mean z)``).
        low, high: Two-sided ``confidence`` interval of ``estimate``; NaN without one.
        n: Replicates (seeds, measurements) or, for one correlation, pairs.
        paper: The paper's effect ``delta``, signed (its sign is the paper's side).
        largest: The largest effect on the paper's side not excluded: the one-sided
            ``confidence`` bound (the ``1 - 2 alpha`` interval's bound); NaN without an interval.
        reading: One of :data:`READINGS`.
        confidence: ``1 - alpha``.
        description: One line, e.g. ``+0.027 [−0.075, +0.128], n=8: inconclusive; effects up to
            +0.110 not excluded (paper +0.300)``.
        n_eff: Effective sample size used for the standard error (``n`` unless given).
    """

    estimate: float
    low: float
    high: float
    n: int
    paper: float
    largest: float
    reading: str
    confidence: float
    description: str
    n_eff: float

    @property
    def resolvable(self) -> bool:
        """True when there is an interval (enough replicates)."""
        return not math.isnan(self.low)

    @property
    def smaller(self) -> bool:
        """True when effects as large as the paper's are excluded (the one-sided TOST test)."""
        return self.resolvable and _sign(self.paper) * self.largest < abs(self.paper)

    @property
    def opposite(self) -> bool:
        """True when the interval excludes 0 on the side opposite to the paper's."""
        s = _sign(self.paper)
        return self.resolvable and (self.high < 0 if s > 0 else self.low > 0)

    def __str__(self) -> str:
        return self.description


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _check_n_eff(n_eff: float | None, n: int) -> float:
    if n_eff is None:
        return float(n)
    v = float(n_eff)
    if not (math.isfinite(v) and 0 < v <= n):
        raise ValueError(f"n_eff must be in (0, n={n}]; got {n_eff!r}")
    return v


def _bounds(
    mean: float, se: float, crit2: float, crit1: float, sign: int
) -> tuple[float, float, float]:
    """(low, high, largest): two-sided interval with ``crit2``, one-sided bound with ``crit1``."""
    if se == 0:  # every replicate agreed exactly: the point interval (as ``compare``)
        return mean, mean, mean
    return mean - crit2 * se, mean + crit2 * se, mean + sign * crit1 * se


def _classify(low: float, high: float, largest: float, paper: float) -> str:
    s = _sign(paper)
    if math.isnan(low):
        return "inconclusive"
    if (low > 0) if s > 0 else (high < 0):
        return "reproduced"
    if s * largest < abs(paper):
        return "smaller than the paper's"
    return "inconclusive"


def _describe(
    head: str, reading: str, largest: float, paper: float, low: float, high: float, what: str
) -> str:
    s = _sign(paper)
    label = reading
    if reading == "reproduced" and s * largest < abs(paper):
        label = f"reproduced, but smaller than the paper's {_fmt(paper)}"
    elif reading == "smaller than the paper's":
        label = f"smaller than the paper's {_fmt(paper)}"
        if (high < 0) if s > 0 else (low > 0):
            label += " (opposite sign: 0 excluded)"
    tail = f"{what} {'up' if s > 0 else 'down'} to {_fmt(largest)} not excluded"
    if "paper's" not in label:
        tail += f" (paper {_fmt(paper)})"
    return f"{head}: {label}; {tail}"


def _n_text(n: int, n_eff: float) -> str:
    return f"n={n}" if n_eff == n else f"n={n} (n_eff≈{n_eff:.1f})"


def _mean_reading(
    values: np.ndarray,
    paper_scale: float,
    confidence: float,
    n_eff: float | None,
) -> tuple[float, float, float, float, int, float]:
    """(mean, low, high, largest, n, n_eff) of the t-interval of ``values``' mean."""
    n = int(values.size)
    ne = _check_n_eff(n_eff, n)
    mean = float(values.mean())
    if n < 2 or ne < 2:
        return mean, math.nan, math.nan, math.nan, n, ne
    alpha = 1 - confidence
    df = ne - 1
    se = float(values.std(ddof=1)) / math.sqrt(ne)
    crit2, crit1 = float(sps.t.ppf(1 - alpha / 2, df)), float(sps.t.ppf(1 - alpha, df))
    low, high, largest = _bounds(mean, se, crit2, crit1, _sign(paper_scale))
    return mean, low, high, largest, n, ne


def _too_few(n: int, n_eff: float, unit: str) -> str:
    if n < 2:
        return f"one {unit} is never evidence"
    return f"n_eff≈{n_eff:.1f} < 2: too few effective {unit}s for an interval"


# --------------------------------------------------------------------------------------------
# Differences
# --------------------------------------------------------------------------------------------


def _reading(est: float, low: float, high: float, largest: float, n: int, ne: float,
             paper: float, confidence: float, unit: str, prefix: str, what: str) -> EffectReading:
    """The :class:`EffectReading` of a mean and its bounds (any scale already applied)."""
    reading = _classify(low, high, largest, paper)
    if math.isnan(low):
        desc = f"{prefix}{_fmt(est)}, {_n_text(n, ne)}: inconclusive ({_too_few(n, ne, unit)})"
    else:
        head = f"{prefix}{_fmt(est)} [{_fmt(low)}, {_fmt(high)}], {_n_text(n, ne)}"
        desc = _describe(head, reading, largest, paper, low, high, what)
    return EffectReading(est, low, high, n, paper, largest, reading, confidence, desc, ne)


def effect_reading(
    d: Sequence[float] | np.ndarray,
    paper_effect: float,
    *,
    confidence: float = 0.95,
    n_eff: float | None = None,
    unit: str = "seed",
) -> EffectReading:
    """Reads paired differences ``d`` (ours minus baseline, one per seed) against the paper's.

    Two-sided ``confidence`` t-interval ``mean(d) +- t_{df, 1-alpha/2} se`` for the sign and the
    one-sided bound ``mean(d) + sign t_{df, 1-alpha} se`` on the paper's side for the size
    (Schuirmann 1987 TOST, upper test only; module docstring), ``se = sd(d)/sqrt(n)`` with
    ``df = n - 1``, or ``sd(d)/sqrt(n_eff)`` with ``df = n_eff - 1``. Default ``alpha = 0.05``.
    Fewer than two values (or ``n_eff < 2``): no interval, "inconclusive" -- one seed is never
    evidence. Zero spread with ``n >= 2``: the point interval (as ``compare``).

    Args:
        d: Paired differences, 1-D, finite.
        paper_effect: The paper's effect ``delta`` in the same units; non-zero, its sign is the
            paper's side.
        confidence: ``1 - alpha``.
        n_eff: Effective sample size for autocorrelated values (None: independent, ``n``).
        unit: Name of a replicate in the description ("seed", "measurement").

    Returns:
        An :class:`EffectReading`.

    Raises:
        ValueError: ``d`` empty, not 1-D or not finite; ``paper_effect`` zero or not finite;
            ``n_eff`` outside (0, n]; ``confidence`` outside (0, 1).
    """
    confidence = _check_confidence(confidence)
    paper = float(paper_effect)
    _sign(paper)
    values = _as_seeds(d, "d")
    mean, low, high, largest, n, ne = _mean_reading(values, paper, confidence, n_eff)
    return _reading(mean, low, high, largest, n, ne, paper, confidence, unit, "", "effects")


# --------------------------------------------------------------------------------------------
# Correlations (Fisher z)
# --------------------------------------------------------------------------------------------


def _check_paper_r(paper_r: float) -> float:
    r = float(paper_r)
    _sign(r)
    if not -1.0 < r < 1.0:
        raise ValueError(f"paper_r must be in (-1, 1) and non-zero; got {paper_r!r}")
    return r


def correlation_reading(
    r: float, n: int, paper_r: float = PAPER_R, *, confidence: float = 0.95
) -> EffectReading:
    """Reads one Pearson correlation ``r`` from ``n`` pairs against the paper's ``paper_r``.

    Fisher z: ``atanh(r)`` is approximately normal with standard error ``1/sqrt(n - 3)``; the
    two-sided interval is ``tanh(z -+ z_{1-alpha/2}/sqrt(n - 3))`` (``correlation_interval``) and
    the largest correlation allowed is ``tanh(z + sign z_{1-alpha}/sqrt(n - 3))``; readings as
    :func:`effect_reading` (Schuirmann 1987, upper one-sided test at ``alpha``; default 0.05).
    ``n <= 3`` has no interval: inconclusive. ``|r| = 1`` gives the point interval.

    Raises:
        ValueError: ``r`` outside [-1, 1], ``n`` not a positive integer, ``paper_r`` zero or
            outside (-1, 1).
    """
    confidence = _check_confidence(confidence)
    paper = _check_paper_r(paper_r)
    r, n = check_correlation(r, n)
    if n <= 3:
        desc = f"r={_fmt(r)}, n={n}: inconclusive (n <= 3: no Fisher-z interval)"
        nan = math.nan
        return EffectReading(r, nan, nan, n, paper, nan, "inconclusive", confidence, desc, n)
    alpha = 1 - confidence
    if abs(r) == 1.0:
        low = high = largest = r
    else:
        z, se = math.atanh(r), 1.0 / math.sqrt(n - 3)
        crit2, crit1 = float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(1 - alpha))
        low, high, largest = (math.tanh(v) for v in _bounds(z, se, crit2, crit1, _sign(paper)))
    reading = _classify(low, high, largest, paper)
    head = f"r={_fmt(r)} [{_fmt(low)}, {_fmt(high)}], n={n}"
    desc = _describe(head, reading, largest, paper, low, high, "correlations")
    return EffectReading(r, low, high, n, paper, largest, reading, confidence, desc, float(n))


def mean_correlation_reading(
    rs: Sequence[float] | np.ndarray,
    paper_r: float = PAPER_R,
    *,
    confidence: float = 0.95,
    n_eff: float | None = None,
    unit: str = "replicate",
) -> EffectReading:
    """Reads a mean correlation over replicates (seeds or measurement steps) against the paper's.

    Each ``r`` is Fisher-z transformed (``atanh``, clipped to ±0.999999 as Table 1's
    ``correlation_entry``); the mean z gets the t-interval of :func:`effect_reading` against
    ``atanh(paper_r)`` -- two-sided for the sign, one-sided (Schuirmann 1987 TOST, upper test,
    ``alpha = 1 - confidence``) for the size -- and every bound is shown back as ``tanh``.
    Measurement steps of one run are autocorrelated: pass ``n_eff`` (e.g.
    ``effective_sample_size(atanh(rs))``) or the interval is optimistic. Fewer than two
    replicates: inconclusive.

    Raises:
        ValueError: As :func:`effect_reading`, or an ``r`` outside [-1, 1].
    """
    confidence = _check_confidence(confidence)
    paper = _check_paper_r(paper_r)
    r = _as_seeds(rs, "rs")
    if np.any(np.abs(r) > 1.0):
        i = int(np.flatnonzero(np.abs(r) > 1.0)[0])
        raise ValueError(f"rs[{i}] is {float(r[i])!r}; a correlation must be in [-1, 1]")
    z = np.arctanh(np.clip(r, -_Z_CLIP, _Z_CLIP))  # (n,)
    mean, low, high, largest, n, ne = _mean_reading(z, math.atanh(paper), confidence, n_eff)
    est = math.tanh(mean)
    low, high, largest = (math.tanh(v) if not math.isnan(v) else v for v in (low, high, largest))
    return _reading(est, low, high, largest, n, ne, paper, confidence, unit, "r=",
                    "correlations")
