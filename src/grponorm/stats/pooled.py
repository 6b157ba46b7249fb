"""The mean of per-step correlations over the measurements of one run, with a block bootstrap.

E5's Table 1 statistic is a correlation across prompts at one measurement, averaged over
measurements. With one run the measurements are the replicates, and they are autocorrelated
(the same probe prompts, a slowly moving policy). This module gives the estimate, its interval,
a reading against the paper's value and a multiplicity correction over lags.

Estimand. ``rho_bar = (1/T) sum_t E[r_t]``: the time average over the T measurements of the
expected across-prompt correlation ``r_t`` of x at measurement t with y at measurement t + lag,
at the run's probe size n (``r_t`` from n prompts is itself a small-sample statistic: for
bivariate normal pairs ``E[r] = rho (1 - (1 - rho^2) / (2n) + ...)``, Olkin & Pratt 1958). It is
what the paper's "mean Pearson r over steps" estimates.

Estimator. The mean of the per-step coefficients over the measurements where ``r_t`` is defined
(neither variable constant across prompts). It is also the pooled correlation of within-step
standardized values: with ``u_ti = (x_ti - mean_i x_t) / sd_i x_t`` (divisor n) and ``v_ti``
likewise, every step has ``sum_i u_ti^2 = sum_i v_ti^2 = n`` and ``sum_i u_ti v_ti = n r_t``, so
the Pearson correlation of all (step, prompt) pairs of (u, v) is ``sum_t n r_t / (T n) =
mean_t r_t`` -- each step weighted equally, the step-to-step level of x and y removed (ranks
instead of values give the mean Spearman coefficient). It is not the mean Fisher z: one
coefficient from n pairs has ``atanh(r)`` close to normal with variance ``1 / (n - 3)``, but a
mean over steps needs no such transform, and at n = 12 prompts steps where a single prompt has
any reward spread give ``|r|`` near 1, whose ``atanh`` (up to 7.25 at the 0.999999 clip) then
dominates the mean and its spread; the r-scale mean is bounded in [-1, 1].

Interval. The circular block bootstrap of the series ``r_t``
(:func:`grponorm.stats.autocorr.block_bootstrap_interval`, t form, block ``ceil(2 T^(1/3))``,
``T / block - 1`` degrees of freedom: 94% coverage at nominal 95% for the mean of an AR(1)
series with phi = 0.6 at T = 30). Resampling blocks of whole measurements keeps the prompts of a
step together and the dependence between neighbouring steps. The p-value for ``rho_bar = 0`` is
the bootstrap-t test with the same standard error and degrees of freedom.

Reading (:func:`pooled_reading`), against the paper's ``paper_r`` at ``alpha = 1 -
confidence``::

    reproduced                 the two-sided interval excludes 0 on the paper's side and the
                               one-sided test below does not exclude ``paper_r``
    smaller than the paper's   the one-sided (1 - alpha) bound on the paper's side is below
                               ``|paper_r|`` (Schuirmann's 1987 upper one-sided test, as
                               ``stats.effect_reading``), without the opposite sign being shown
    contradicted               the two-sided interval excludes 0 on the other side
    inconclusive               neither (the interval holds 0 and ``paper_r``); the
                               measurements that would resolve it at the observed spread are
                               given

An interval wholly above ``paper_r`` still reads "reproduced" (its description says "larger
than the paper's"). Unlike ``effect_reading`` a real effect smaller than the paper's reads
"smaller than the paper's" (the verdict that decides the paper's size), and an opposite sign
reads "contradicted".

Lags. Several lags tested against "no correlation" are a family: :func:`holm` adjusts their
p-values (Holm 1979 step-down; the family-wise error stays at most alpha under any dependence
between the lags, and it rejects at least what Bonferroni rejects).

Holm, S. (1979), "A simple sequentially rejective multiple test procedure", Scand. J. Statist.
6(2), 65-70. Olkin, I. & Pratt, J. W. (1958), "Unbiased estimation of certain correlation
coefficients", Ann. Math. Statist. 29(1), 201-211. Schuirmann (1987): see
:mod:`grponorm.stats.equivalence`.

NumPy and SciPy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from .autocorr import block_bootstrap_interval, block_length
from .common import _check_confidence, _fmt, _sign

__all__ = [
    "POOLED_READINGS",
    "PooledReading",
    "holm",
    "measurements_needed",
    "pooled_correlation",
    "pooled_reading",
    "projected_half_width",
    "standardize_within_steps",
    "step_correlations",
]

#: The four readings of :func:`pooled_reading`.
POOLED_READINGS = ("reproduced", "smaller than the paper's", "contradicted", "inconclusive")

_METHODS = ("pearson", "spearman")


# --------------------------------------------------------------------------------------------
# Per-step correlations
# --------------------------------------------------------------------------------------------


def _as_matrix(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (T, n) array (steps, prompts); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def standardize_within_steps(a: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Each row (one measurement) centred and scaled across prompts; NaN rows where constant.

    ``u_ti = (a_ti - mean_i a_t) / sd_i a_t`` with the divisor n, so ``sum_i u_ti^2 = n``;
    ``method="spearman"`` standardizes the within-row ranks (ties averaged,
    ``scipy.stats.rankdata``) instead. A constant row has no scale: NaN (the correlation of
    that step is undefined), never a division by zero.

    Args:
        a: (T, n) values, finite.
        method: ``"pearson"`` (values) or ``"spearman"`` (ranks).

    Returns:
        (T, n) float64.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
    arr = _as_matrix(a, "a")
    if method == "spearman":
        arr = sps.rankdata(arr, axis=1)  # (T, n), ties averaged
    centred = arr - arr.mean(axis=1, keepdims=True)  # (T, n)
    sd = np.sqrt((centred**2).mean(axis=1, keepdims=True))  # (T, 1), divisor n
    # Constant rows: exactly zero after centring (a row of equal values). The scale floor is
    # "any positive spread"; such rows are undefined, not scaled by a small number.
    flat = (np.ptp(arr, axis=1) == 0)[:, None]  # (T, 1)
    out = np.full_like(centred, np.nan)
    np.divide(centred, sd, out=out, where=~flat & (sd > 0))
    return np.where(flat, np.nan, out)


def step_correlations(
    x: np.ndarray, y: np.ndarray, lag: int = 0, method: str = "pearson"
) -> np.ndarray:
    """``r_t``: the correlation across prompts of ``x[t]`` with ``y[t + lag]``, t = 0..T-lag-1.

    ``r_t = (1/n) sum_i u_ti v_(t+lag)i`` with the within-step standardized values of
    :func:`standardize_within_steps` (Pearson's r of the row pair, or Spearman's rho with
    ``method="spearman"``). NaN where either row is constant across prompts, and everywhere
    with fewer than 3 prompts (two points always give ``|r| = 1``).

    Args:
        x, y: (T, n) per-measurement, per-prompt values of one shape (the same prompts in the
            same column at every measurement).
        lag: Offset in measurements, in [0, T).
        method: ``"pearson"`` or ``"spearman"``.

    Returns:
        (T - lag,) float64, in [-1, 1] or NaN.
    """
    xa, ya = _as_matrix(x, "x"), _as_matrix(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have one shape; got {xa.shape} and {ya.shape}")
    T, n = xa.shape
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or not 0 <= lag < T:
        raise ValueError(f"lag must be an integer in [0, T={T}); got {lag!r}")
    if n < 3:  # two points always give |r| = 1: no correlation (as diagnostics.correlation)
        return np.full(T - lag, np.nan)
    u = standardize_within_steps(xa, method)[: T - lag]  # (T - lag, n)
    v = standardize_within_steps(ya, method)[lag:]  # (T - lag, n)
    return np.clip((u * v).mean(axis=1), -1.0, 1.0)  # (T - lag,)


def pooled_correlation(
    x: np.ndarray, y: np.ndarray, lag: int = 0, method: str = "pearson"
) -> float:
    """The pooled correlation of within-step standardized values = the mean defined ``r_t``.

    The Pearson correlation of all (step, prompt) pairs ``(u_ti, v_(t+lag)i)`` over the steps
    where both rows vary (module docstring: equal to ``mean_t r_t`` of
    :func:`step_correlations`). NaN when no step is defined.
    """
    r = step_correlations(x, y, lag, method)
    ok = np.isfinite(r)
    return float(r[ok].mean()) if ok.any() else math.nan


# --------------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------------


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values.

    With the m p-values sorted ``p_(1) <= ... <= p_(m)``: ``p~_(k) = max_{j<=k} min(1, (m - j + 1)
    p_(j))``, returned in the input order. Rejecting ``p~ < alpha`` controls the family-wise
    error at alpha under any dependence; ``p~ >= p`` and ``p~ <= min(1, m p)`` (Bonferroni). NaN
    entries (no test) are left NaN and not counted in m.
    """
    arr = np.asarray(p, dtype=np.float64).ravel()  # (m_all,)
    if np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"p-values must be in [0, 1]; got {arr.tolist()}")
    out = np.full_like(arr, np.nan)
    idx = np.flatnonzero(np.isfinite(arr))
    if idx.size == 0:
        return out
    m = idx.size
    order = idx[np.argsort(arr[idx], kind="stable")]  # (m,)
    scaled = np.minimum(1.0, (m - np.arange(m)) * arr[order])  # (m,)
    out[order] = np.maximum.accumulate(scaled)
    return out


# --------------------------------------------------------------------------------------------
# Interval and reading
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PooledReading:
    """The mean of per-step correlations, its block-bootstrap interval and its reading.

    Attributes:
        estimate: ``mean_t r_t`` over the defined measurements.
        low, high: Two-sided ``confidence`` interval (block bootstrap, t form); NaN without one.
        largest: One-sided ``confidence`` bound on the paper's side (the ``1 - 2 alpha``
            interval's bound): the largest correlation not excluded; NaN without an interval.
        se: Bootstrap standard error of the mean (NaN without an interval).
        df: Degrees of freedom ``n / block - 1``.
        p: Two-sided bootstrap-t p-value for ``rho_bar = 0`` (NaN without an interval).
        n: Measurements with a defined ``r_t``.
        n_skipped: Measurements without one (a constant row).
        n_eff: Effective sample size ``sd^2 / se^2``.
        block: Block length.
        paper: The paper's correlation (signed).
        reading: One of :data:`POOLED_READINGS`.
        needed: When inconclusive, the measurements (at this probe size and autocorrelation)
            whose interval would resolve it at the observed mean and spread; else None.
        confidence: ``1 - alpha``.
        label: The reading with its reason, e.g. ``reproduced (consistent with the paper's
            +0.342; upper 95% bound +0.700)``: starts with ``reading``.
        description: One line: the estimate, its interval and ``label``.
    """

    estimate: float
    low: float
    high: float
    largest: float
    se: float
    df: float
    p: float
    n: int
    n_skipped: int
    n_eff: float
    block: int
    paper: float
    reading: str
    needed: int | None
    confidence: float
    label: str
    description: str

    @property
    def resolvable(self) -> bool:
        return not math.isnan(self.low)

    def as_dict(self) -> dict:
        """JSON-ready (NaN -> None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    def __str__(self) -> str:
        return self.description


def _df(n: int, block: int) -> float:
    return n / block - 1.0


def projected_half_width(se: float, n: int, m: int, *, crit_level: float) -> float:
    """Half-width of the block-bootstrap interval with ``m`` measurements instead of ``n``.

    Assumes the series keeps its spread and autocorrelation, so the standard error of the mean
    scales as ``se sqrt(n / m)``: ``t_{df_m, crit_level} se sqrt(n / m)`` with ``df_m = m /
    block(m) - 1`` and ``block(m) = ceil(2 m^(1/3))`` (:func:`~grponorm.stats.autocorr.
    block_length`, the bootstrap's). ``crit_level`` is the t quantile's level (``1 - alpha/2``
    two-sided, ``1 - alpha`` one-sided). ``m < 4`` or a single block: infinite.
    """
    b = block_length(m)
    df = _df(m, b)
    if m < 4 or df <= 0:
        return math.inf
    return float(sps.t.ppf(crit_level, df)) * se * math.sqrt(n / m)


def measurements_needed(
    se: float,
    n: int,
    margin: float,
    *,
    crit_level: float,
    max_n: int = 100_000,
) -> int | None:
    """Smallest number of measurements whose interval half-width would be below ``margin``.

    The half-width is :func:`projected_half_width` (same spread and autocorrelation). Not a
    power calculation: the m at which an observed mean ``margin`` from the boundary would
    resolve. The half-width falls with m except for small steps up where the block length
    grows; the search steps forward geometrically, then back while the previous m still
    resolves.

    Returns:
        m (at least 4), or None when ``margin <= 0``, ``se`` is not finite, or more than
        ``max_n`` would be needed.
    """
    if not (math.isfinite(se) and se >= 0) or not margin > 0:
        return None
    if se == 0:
        return max(4, int(n))

    def half(m: int) -> float:
        return projected_half_width(se, n, m, crit_level=crit_level)

    m = 4
    while half(m) >= margin:  # the half-width falls with m (df grows, se shrinks)
        m = m + max(1, m // 8)
        if m > max_n:
            return None
    while m > 4 and half(m - 1) < margin:
        m -= 1
    return m


def pooled_reading(
    rs: Sequence[float] | np.ndarray,
    paper_r: float,
    *,
    confidence: float = 0.95,
    block: int | None = None,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PooledReading:
    """Reads the mean of a series of per-step correlations ``rs`` against ``paper_r``.

    NaN entries (undefined steps) are dropped and counted; the rest, in measurement order, are
    the series. Interval: :func:`grponorm.stats.autocorr.block_bootstrap_interval` (circular, t
    form, ``block`` default ``ceil(2 n^(1/3))``, seeded) at ``confidence`` for the sign and at
    ``1 - 2 alpha`` for the one-sided bound -- the same resamples, so the same standard error.
    Readings: module docstring. Fewer than 4 defined measurements or a single block: no
    interval, "inconclusive".

    Args:
        rs: Per-step correlations in [-1, 1] (NaN allowed).
        paper_r: The paper's correlation; non-zero, in (-1, 1); its sign is the paper's side.
        confidence: ``1 - alpha``, in (0.5, 1).
        block: Block length (default from n).
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Raises:
        ValueError: ``rs`` not 1-D or outside [-1, 1]; ``paper_r`` zero or outside (-1, 1);
            ``confidence`` outside (0.5, 1).
    """
    confidence = _check_confidence(confidence)
    if confidence <= 0.5:
        raise ValueError(f"confidence must be above 0.5 (a one-sided bound at 1 - 2 alpha); "
                         f"got {confidence}")
    paper = float(paper_r)
    sign = _sign(paper)
    if not -1.0 < paper < 1.0:
        raise ValueError(f"paper_r must be in (-1, 1); got {paper_r!r}")
    arr = np.asarray(rs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"rs must be 1-D (one correlation per measurement); got {arr.shape}")
    ok = np.isfinite(arr)
    if np.any(np.abs(arr[ok]) > 1.0):
        raise ValueError("a correlation must be in [-1, 1]")
    series = arr[ok]  # (n,)
    n, skipped = int(series.size), int(arr.size - series.size)
    nan = math.nan
    alpha = 1.0 - confidence
    if n == 0:
        label = "inconclusive (no measurement with a defined correlation)"
        return PooledReading(nan, nan, nan, nan, nan, nan, nan, 0, skipped, 0.0, 0, paper,
                             "inconclusive", None, confidence, label, label)
    b = block_length(n) if block is None else int(block)
    two = block_bootstrap_interval(series, confidence=confidence, block=b,
                                   n_resamples=n_resamples, seed=seed)
    est = two.mean
    if not two.resolvable:
        label = "inconclusive (fewer than 4 measurements or one block: no interval)"
        return PooledReading(est, nan, nan, nan, nan, nan, nan, n, skipped, two.n_eff, b, paper,
                             "inconclusive", None, confidence, label,
                             f"r̄={_fmt(est)}, n={n} measurements: {label}")
    one = block_bootstrap_interval(series, confidence=1.0 - 2.0 * alpha, block=b,
                                   n_resamples=n_resamples, seed=seed)
    df = _df(n, b)
    crit2 = float(sps.t.ppf(1 - alpha / 2, df))
    se = (two.high - est) / crit2  # the bootstrap standard error behind the interval
    largest = one.high if sign > 0 else one.low
    if se > 0:
        p = float(2.0 * sps.t.sf(abs(est) / se, df))
    else:
        p = 0.0 if est != 0 else 1.0
    low, high = two.low, two.high
    if (low > 0) if sign > 0 else (high < 0):
        reading = "smaller than the paper's" if sign * largest < abs(paper) else "reproduced"
    elif (high < 0) if sign > 0 else (low > 0):
        reading = "contradicted"
    elif sign * largest < abs(paper):
        reading = "smaller than the paper's"
    else:
        reading = "inconclusive"
    needed = None
    if reading == "inconclusive":
        # Either route decides: 0 excluded (two-sided) or paper_r excluded (one-sided).
        cands = [measurements_needed(se, n, abs(est), crit_level=1 - alpha / 2),
                 measurements_needed(se, n, abs(paper) - sign * est, crit_level=1 - alpha)]
        cands = [c for c in cands if c is not None]
        needed = min(cands) if cands else None
    head = (f"r̄={_fmt(est)} [{_fmt(low)}, {_fmt(high)}], n={n} measurements "
            f"(n_eff≈{two.n_eff:.1f}, block {b}), p={p:.2g}")
    bound = f"{'upper' if sign > 0 else 'lower'} {1 - alpha:.0%} bound {_fmt(largest)}"
    if reading == "reproduced":
        beyond = (low > paper) if sign > 0 else (high < paper)
        tail = (f"larger than the paper's {_fmt(paper)}" if beyond
                else f"consistent with the paper's {_fmt(paper)}")
        label = f"reproduced ({tail}; {bound})"
    elif reading == "smaller than the paper's":
        real = (low > 0) if sign > 0 else (high < 0)
        label = (f"smaller than the paper's {_fmt(paper)} ({bound}"
                 + ("; 0 excluded" if real else "") + ")")
    elif reading == "contradicted":
        label = f"contradicted (0 excluded on the side opposite to the paper's {_fmt(paper)})"
    else:
        more = f"; ≈{needed} measurements would resolve it" if needed else ""
        label = f"inconclusive (holds 0 and the paper's {_fmt(paper)}; {bound}{more})"
    return PooledReading(est, low, high, largest, se, df, p, n, skipped, two.n_eff, b, paper,
                         reading, needed, confidence, label, f"{head}: {label}")
