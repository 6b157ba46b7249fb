"""``compare``: the difference of two arms over seeds, its interval, p-value and verdict.

The paired t and Welch intervals and p-values are cross-checked against statsmodels'
``DescrStatsW.tconfint_mean`` / ``ttest_mean`` and ``CompareMeans.tconfint_diff`` /
``ttest_ind(usevar="unequal")`` (tests/test_stats_crosscheck.py; statsmodels comes with the
``test`` extra, not at run time: SciPy's t distribution does the whole job here).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from .common import (
    _METHODS,
    _as_seeds,
    _bootstrap_kwargs,
    _check_confidence,
    _direction,
    _fmt,
    _verdict,
    seeds_needed,
)

# --------------------------------------------------------------------------------------------


class Verdict(str, enum.Enum):
    """What a report row concludes. A ``str``: each member equals (and prints, formats and
    JSON-encodes as) its label, so summaries written with the bare labels stay byte-identical.

    The first three are :meth:`Comparison.verdict`'s (:data:`VERDICTS`). The others label the
    rest of a report's verdict column: the neutral directions when no side is expected
    (``positive`` / ``negative`` / ``no clear difference``), an effect the interval shows to be
    smaller than the paper's (``smaller than the paper's``: ``stats.effect_reading``), a
    measured quantity the paper
    states no claim for (``measured``), a value off the paper's (``differs``), a bound that
    fails (``VIOLATED``), an experiment that did not run (``not run``) and a summary the report
    could not turn into rows (``could not summarize``).
    """

    REPRODUCED = "reproduced"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    POSITIVE = "positive"
    NEGATIVE = "negative"
    NO_CLEAR_DIFFERENCE = "no clear difference"
    MEASURED = "measured"
    SMALLER = "smaller than the paper's"
    DIFFERS = "differs"
    VIOLATED = "VIOLATED"
    NOT_RUN = "not run"
    NOT_SUMMARIZED = "could not summarize"

    __str__ = str.__str__  # "reproduced", not "Verdict.REPRODUCED"
    __format__ = str.__format__

    @classmethod
    def of_cell(cls, text: str) -> Verdict:
        """The verdict a report cell starts with: its label alone or followed by `` (``, ``: ``
        or `` ``, e.g. ``inconclusive (≈14 seeds would resolve 0.05)`` -> INCONCLUSIVE.

        Raises:
            ValueError: If ``text`` starts with no verdict's label (the message lists them).
        """
        if isinstance(text, cls):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a verdict cell is a string; got {type(text).__name__}")
        for v in sorted(cls, key=lambda m: -len(m.value)):  # longest label first
            rest = text[len(v.value):]
            if text.startswith(v.value) and (not rest or rest[0] in " :"):
                return v
        labels = ", ".join(repr(v.value) for v in cls)
        raise ValueError(f"verdict cell {text!r} starts with none of the verdicts {labels}")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A difference between two arms over seeds, with its confidence interval.

    Attributes:
        diff: ``mean(a) - mean(b)`` (= ``mean(a - b)`` when paired).
        low, high: The confidence interval of ``diff``; NaN when there is none (one seed).
            Zero spread with ``n >= 2`` gives the point interval ``[diff, diff]`` (every seed
            agreed exactly): a non-zero ``diff`` then excludes 0 and the verdict follows its sign.
        p: Two-sided p-value of ``diff == 0`` from the t-test (paired t or Welch), whatever the
            interval method; 0 for a non-zero diff at zero spread, 1 for zero diff; NaN for n=1.
        n: Seeds: pairs when paired, the smaller arm when unpaired (see ``sizes``).
        sd: Spread: sd (Bessel) of the paired differences, or the pooled per-arm sd when
            unpaired; NaN with one seed.
        method: ``"t"`` (paired t), ``"welch"``, ``"bootstrap-bca"`` or ``"bootstrap-percentile"``.
        confidence: Confidence level of the interval.
        paired: Whether the arms were paired by seed.
        sizes: Seeds in arm a and arm b.
    """

    diff: float
    low: float
    high: float
    p: float
    n: int
    sd: float
    method: str
    confidence: float
    paired: bool = True
    sizes: tuple[int, int] = (0, 0)

    @property
    def resolvable(self) -> bool:
        """True when an interval exists (at least two seeds in each arm)."""
        return self.n >= 2 and not math.isnan(self.low)

    def verdict(self, expected_sign: float) -> Verdict:
        """REPRODUCED, CONTRADICTED or INCONCLUSIVE (equal to ``"reproduced"``, ... of
        :data:`VERDICTS`).

        Args:
            expected_sign: The direction the paper claims for ``a - b``: +1 or -1 (any non-zero
                real; only its sign is used).
        """
        return Verdict(_verdict(self.low, self.high, self.resolvable, expected_sign))

    def seeds_needed(self, effect: float) -> int | None:
        """Seeds that would resolve ``effect`` at the observed spread; see :func:`seeds_needed`."""
        return seeds_needed(effect, self.sd, confidence=self.confidence, paired=self.paired)

    def describe(self, expected_sign: float | None = None, effect: float | None = None) -> str:
        """One line, e.g. ``+0.031 [−0.012, +0.074], n=8 paired: inconclusive (≈14 seeds would
        resolve 0.05)``; ``… n=1 …: inconclusive (1 seed)`` for a single seed.

        Args:
            expected_sign: Direction for the verdict; None gives a neutral label (``positive`` /
                ``negative`` / ``inconclusive``).
            effect: Effect size for the seeds-needed note when inconclusive (e.g. the paper's);
                defaults to the observed ``|diff|``.
        """
        kind = "paired" if self.paired else "unpaired"
        n = f"n={self.n}" if self.paired else f"n={self.sizes[0]}+{self.sizes[1]}"
        if not self.resolvable:
            return f"{_fmt(self.diff)}, {n} {kind}: inconclusive ({self.n} seed)"
        label = (
            _direction(self.low, self.high, True)
            if expected_sign is None
            else self.verdict(expected_sign)
        )
        head = f"{_fmt(self.diff)} [{_fmt(self.low)}, {_fmt(self.high)}], {n} {kind}: {label}"
        if label != "inconclusive":
            return head
        target = abs(self.diff) if effect is None else abs(float(effect))
        needed = self.seeds_needed(target) if target > 0 else None
        if needed is None:
            return head
        per_arm = "" if self.paired else " per arm"
        return f"{head} (≈{needed} seeds{per_arm} would resolve {_fmt(target, signed=False)})"

    def __str__(self) -> str:
        return self.describe()


def _point_or_t(diff: float, se: float, df: float, alpha: float) -> tuple[float, float, float]:
    """(low, high, p) of the t-interval; the point interval when se == 0."""
    if se == 0:
        return diff, diff, (0.0 if diff != 0 else 1.0)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return diff - crit * se, diff + crit * se, p


def _bootstrap_interval(
    data: tuple[np.ndarray, ...], kind: str, confidence: float, seed: int, n_resamples: int
) -> tuple[float, float, str]:
    if len(data) == 1:

        def statistic(d, axis=-1):
            return np.mean(d, axis=axis)
    else:

        def statistic(x, y, axis=-1):
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        confidence_level=confidence,
        method=kind,
        **_bootstrap_kwargs(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high, "bootstrap-" + kind.lower()


def compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    paired: bool = True,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "t",
    n_resamples: int = 9999,
) -> Comparison:
    """Compares arm ``a`` with arm ``b`` over seeds: ``diff = mean(a - b)`` and its interval.

    Paired (default; ``a[i]`` and ``b[i]`` share seed ``i``): the t-interval on ``d = a - b``,
    ``mean(d) +- t_{n-1, 1-alpha/2} sd(d)/sqrt(n)`` (sd with Bessel's correction), and the paired
    t-test p-value. Unpaired: Welch's interval ``mean(a) - mean(b) +- t_{nu} sqrt(s_a^2/n_a +
    s_b^2/n_b)`` with Welch-Satterthwaite ``nu``. ``method="bootstrap"`` (BCa) or
    ``"bootstrap-percentile"`` resamples seeds instead (pairs when paired, each arm on its own
    when not), seeded by ``seed``; the p-value stays the t-test's. The t-interval is the default
    because the percentile bootstrap under-covers at 4-10 seeds (module docstring).

    Edge cases: one seed (or one in an arm when unpaired) has no interval -- ``low``/``high``/
    ``sd``/``p`` are NaN and the verdict is inconclusive. Zero spread with ``n >= 2`` gives the
    point interval ``[diff, diff]``: a non-zero ``diff`` is then resolved by its sign (every seed
    agreed exactly, as in deterministic runs), a zero one is inconclusive.

    Args:
        a, b: Per-seed results of the two arms (1-D).
        paired: Whether ``a[i]`` and ``b[i]`` come from the same seed.
        confidence: Confidence level of the interval, in (0, 1).
        seed: Seed of the bootstrap resampling (unused by the t-interval).
        method: ``"t"`` (Welch when unpaired), ``"bootstrap"`` (= ``"bootstrap-bca"``) or
            ``"bootstrap-percentile"``.
        n_resamples: Bootstrap resamples.

    Returns:
        A :class:`Comparison`.

    Raises:
        ValueError: If an arm is empty, not 1-D or has a NaN/inf (the message names the index),
            if paired arms differ in length, or an option is invalid.
    """
    alpha = 1 - _check_confidence(confidence)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
    x, y = _as_seeds(a, "a"), _as_seeds(b, "b")
    if paired and x.size != y.size:
        raise ValueError(
            f"paired comparison needs one b per a (same seeds); got {x.size} and {y.size} seeds"
        )
    use_bootstrap = method != "t"
    kind = "percentile" if method == "bootstrap-percentile" else "BCa"
    common = {"confidence": float(confidence), "paired": paired, "sizes": (x.size, y.size)}

    if paired:
        d = x - y  # (n,)
        n = int(d.size)
        diff = float(d.mean())
        name = "t"
        if n < 2:
            nan = math.nan
            return Comparison(diff, nan, nan, nan, n, nan, name, **common)
        sd = float(d.std(ddof=1))
        low, high, p = _point_or_t(diff, sd / math.sqrt(n), n - 1, alpha)
        if use_bootstrap and sd > 0:
            low, high, name = _bootstrap_interval((d,), kind, confidence, seed, n_resamples)
        return Comparison(diff, low, high, p, n, sd, name, **common)

    n_a, n_b = int(x.size), int(y.size)
    n = min(n_a, n_b)
    diff = float(x.mean() - y.mean())
    name = "welch"
    if n < 2:
        nan = math.nan
        return Comparison(diff, nan, nan, nan, n, nan, name, **common)
    va, vb = float(x.var(ddof=1)), float(y.var(ddof=1))
    sd = math.sqrt(((n_a - 1) * va + (n_b - 1) * vb) / (n_a + n_b - 2))
    se2 = va / n_a + vb / n_b
    df = se2**2 / ((va / n_a) ** 2 / (n_a - 1) + (vb / n_b) ** 2 / (n_b - 1)) if se2 > 0 else 1.0
    low, high, p = _point_or_t(diff, math.sqrt(se2), df, alpha)
    if use_bootstrap and se2 > 0:
        low, high, name = _bootstrap_interval((x, y), kind, confidence, seed, n_resamples)
    return Comparison(diff, low, high, p, n, sd, name, **common)


# --------------------------------------------------------------------------------------------
# Ratios (speed-ups)
