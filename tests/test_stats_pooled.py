"""Tests for grponorm.stats.pooled: the mean of per-step correlations over one run's
measurements, its circular block-bootstrap interval, the reading and Holm's correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import gammaln, hyp2f1

from grponorm.stats.autocorr import block_length
from grponorm.stats.pooled import (
    POOLED_READINGS,
    holm,
    measurements_needed,
    pooled_correlation,
    pooled_reading,
    projected_half_width,
    standardize_within_steps,
    step_correlations,
)

PAPER = 0.342


def _expected_r(rho: float, n: int) -> float:
    """E[r] of Pearson's r from n bivariate normal pairs (Olkin & Pratt 1958; checked against
    200 000 Monte Carlo draws at rho = 0.4, n = 12: 0.3847 vs 0.3845 +- 0.0006)."""
    c = math.exp(2 * gammaln(n / 2) - gammaln((n - 1) / 2) - gammaln((n + 1) / 2))
    return rho * c * hyp2f1(0.5, 0.5, (n + 1) / 2, rho**2)


def _panel(rng, reps: int, T: int, n: int, rho: float, phi: float):
    """(reps, T, n) x and y: per prompt a stationary AR(1) in time (coefficient phi) whose
    innovations correlate at rho across the pair, so every step is bivariate normal with
    correlation rho across n independent prompts and x[t] vs y[t + k] correlates at rho phi^k.
    The same prompts persist, so the per-step r_t are autocorrelated."""
    e1 = rng.standard_normal((reps, T, n))
    e2 = rho * e1 + math.sqrt(1 - rho**2) * rng.standard_normal((reps, T, n))
    x, y = np.empty_like(e1), np.empty_like(e2)
    x[:, 0], y[:, 0] = e1[:, 0], e2[:, 0]
    s = math.sqrt(1 - phi**2)
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + s * e1[:, t]
        y[:, t] = phi * y[:, t - 1] + s * e2[:, t]
    return x, y


# ------------------------------------------------------------------------------------------
# Per-step correlations and the pooled identity
# ------------------------------------------------------------------------------------------


def test_step_correlations_match_scipy_and_skip_constant_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 9))
    y = x + rng.standard_normal((6, 9))
    y[2] = 0.25  # a step where no prompt has any spread: undefined
    x[4, :3] = x[4, 0]  # ties, for the ranks
    for lag in (0, 2):
        pe = step_correlations(x, y, lag)
        sp = step_correlations(x, y, lag, method="spearman")
        assert pe.shape == (6 - lag,)
        for t in range(6 - lag):
            if t + lag == 2:
                assert math.isnan(pe[t]) and math.isnan(sp[t])
                continue
            assert pe[t] == pytest.approx(stats.pearsonr(x[t], y[t + lag]).statistic, abs=1e-12)
            assert sp[t] == pytest.approx(stats.spearmanr(x[t], y[t + lag]).statistic,
                                          abs=1e-12)
    u = standardize_within_steps(y)
    assert np.all(np.isnan(u[2])) and np.allclose((u[[0, 1, 3, 4, 5]] ** 2).mean(1), 1.0)
    with pytest.raises(ValueError, match="lag"):
        step_correlations(x, y, 6)
    with pytest.raises(ValueError, match="one shape"):
        step_correlations(x, y[:, :5])
    assert np.all(np.isnan(step_correlations(x[:, :2], y[:, :2])))  # two prompts: undefined
    with pytest.raises(ValueError, match="method"):
        standardize_within_steps(x, "kendall")


def test_pooled_correlation_is_the_mean_step_correlation_and_removes_step_levels():
    """The pooled Pearson r of within-step standardized values equals mean_t r_t, whatever the
    level and scale of each step; the raw pooled r is dominated by the step levels."""
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((10, 15))
    y0 = -0.8 * x0 + 0.5 * rng.standard_normal((10, 15))  # negative within steps
    level = np.linspace(0, 20, 10)[:, None]  # both drift upwards together across steps
    x, y = 5 * x0 + level, 0.1 * y0 + level
    y[7] = 3.0  # undefined step, dropped
    rs = step_correlations(x, y)
    pooled = pooled_correlation(x, y)
    ok = np.isfinite(rs)
    assert pooled == pytest.approx(rs[ok].mean(), abs=1e-12)
    u, v = standardize_within_steps(x)[ok].ravel(), standardize_within_steps(y)[ok].ravel()
    assert pooled == pytest.approx(np.corrcoef(u, v)[0, 1], abs=1e-12)
    assert pooled < -0.5
    assert np.corrcoef(x[ok].ravel(), y[ok].ravel())[0, 1] > 0.5  # pooling raw values
    assert math.isnan(pooled_correlation(np.ones((3, 4)), rng.standard_normal((3, 4))))


# ------------------------------------------------------------------------------------------
# Holm
# ------------------------------------------------------------------------------------------


def test_holm_step_down_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, raised to 0.06)
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    adj = holm([0.2, np.nan, 0.6, 0.01])
    assert math.isnan(adj[1])  # no test: not counted (m = 3)
    np.testing.assert_allclose(adj[[0, 2, 3]], [0.4, 0.6, 0.03])
    rng = np.random.default_rng(2)
    for _ in range(50):
        q = rng.uniform(0, 1, 5) ** 3
        a = holm(q)
        assert np.all(a >= q - 1e-15) and np.all(a <= np.minimum(1, 5 * q) + 1e-15)
        order = np.argsort(q)
        assert np.all(np.diff(a[order]) >= -1e-15)  # monotone in p
    assert np.all(np.isnan(holm([np.nan])))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.2])


def test_holm_controls_the_family_wise_error_where_unadjusted_tests_do_not():
    """Three independent true nulls: unadjusted p < 0.05 somewhere ~14% of the time, Holm's
    adjusted p-values at most 5%."""
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(20000, 3))
    raw = np.mean((p < 0.05).any(axis=1))
    adj = np.mean((np.apply_along_axis(holm, 1, p) < 0.05).any(axis=1))
    assert raw > 0.12
    assert adj <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 20000)


# ------------------------------------------------------------------------------------------
# Coverage on simulated autocorrelated panels with a known mean correlation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lag", [0, 1])
def test_block_bootstrap_interval_covers_the_mean_correlation(lag):
    """T = 30 measurements of n = 12 prompts, AR(1) phi = 0.7 per prompt, rho = 0.4 within a
    step: the truth is E[r] at correlation rho phi^lag from 12 pairs (Olkin & Pratt). Nominal
    95%: the block-bootstrap interval covers within 0.95 - 0.04 - 3 MC SE .. 0.99 (the small-
    sample shortfall of ``stats.autocorr``, 94% at T = 30), and its one-sided bound likewise;
    the plain t-interval over measurements, which ignores the autocorrelation, under-covers."""
    rng = np.random.default_rng(20261204 + lag)
    reps, T, n, rho, phi = 400, 30, 12, 0.4, 0.7
    x, y = _panel(rng, reps, T, n, rho, phi)
    truth = _expected_r(rho * phi**lag, n)
    two = one = naive = 0
    widths = []
    for i in range(reps):
        rs = step_correlations(x[i], y[i], lag)
        rd = pooled_reading(rs, PAPER, n_resamples=999, seed=i)
        two += rd.low <= truth <= rd.high
        one += truth <= rd.largest
        widths.append(rd.high - rd.low)
        m = rs.size
        half = stats.t.ppf(0.975, m - 1) * rs.std(ddof=1) / math.sqrt(m)
        naive += abs(rs.mean() - truth) <= half
    tol = 0.04 + 3 * math.sqrt(0.95 * 0.05 / reps)
    assert 0.95 - tol <= two / reps <= 0.99
    assert 0.95 - tol <= one / reps <= 0.995
    assert naive / reps < 0.85
    assert np.median(widths) < 0.5  # an interval that says something at this design


# ------------------------------------------------------------------------------------------
# Readings
# ------------------------------------------------------------------------------------------


def _series(center: float, spread: float, n: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(center + spread * rng.standard_normal(n), -1, 1)


def test_readings_decide_each_way():
    rep = pooled_reading(_series(0.35, 0.10), PAPER)
    assert rep.reading == "reproduced" and rep.low > 0 and rep.largest >= PAPER
    assert "consistent with the paper's" in rep.description
    big = pooled_reading(_series(0.70, 0.05), PAPER)
    assert big.reading == "reproduced" and big.low > PAPER
    assert "larger than the paper's" in big.description
    small = pooled_reading(_series(0.10, 0.05), PAPER)
    assert small.reading == "smaller than the paper's" and small.low > 0
    assert small.largest < PAPER and "0 excluded" in small.description
    zero = pooled_reading(_series(0.0, 0.10), PAPER)
    assert zero.reading == "smaller than the paper's" and zero.low < 0 < zero.high
    assert "upper 95% bound" in zero.description and "0 excluded" not in zero.description
    neg = pooled_reading(_series(-0.30, 0.08), PAPER)
    assert neg.reading == "contradicted" and neg.high < 0
    wide = pooled_reading(_series(0.15, 0.6, n=12), PAPER)
    assert wide.reading == "inconclusive" and wide.low < 0 and wide.largest > PAPER
    assert wide.needed is not None and f"≈{wide.needed} measurements" in wide.description
    assert {r.reading for r in (rep, small, neg, wide)} <= set(POOLED_READINGS)
    # a paper on the negative side reads the mirror image
    mirror = pooled_reading(-_series(0.35, 0.10), -PAPER)
    assert mirror.reading == "reproduced" and mirror.largest == pytest.approx(-rep.largest)


def test_interval_is_the_block_bootstrap_and_p_matches_it():
    from grponorm.stats.autocorr import block_bootstrap_interval

    rs = _series(0.2, 0.3, n=40, seed=5)
    rd = pooled_reading(rs, PAPER, seed=7)
    iv = block_bootstrap_interval(rs, seed=7)
    assert (rd.low, rd.high, rd.block) == (iv.low, iv.high, block_length(40))
    assert rd.df == pytest.approx(40 / block_length(40) - 1)
    # the 95% interval excludes 0 exactly when p < 0.05 (same se and df)
    assert (rd.low > 0) == (rd.p < 0.05)
    t = rd.estimate / rd.se
    assert rd.p == pytest.approx(2 * stats.t.sf(abs(t), rd.df))
    assert rd.largest == pytest.approx(rd.estimate + stats.t.ppf(0.95, rd.df) * rd.se)


def test_measurements_needed_is_the_first_that_resolves():
    se, n, margin = 0.2, 30, 0.15
    k = measurements_needed(se, n, margin, crit_level=0.975)

    def half(m):
        return stats.t.ppf(0.975, m / block_length(m) - 1) * se * math.sqrt(n / m)

    assert half(k) < margin <= half(k - 1)
    for m in (4, 9, 30, 61):
        assert projected_half_width(se, n, m, crit_level=0.975) == pytest.approx(half(m))
    assert projected_half_width(se, n, 3, crit_level=0.975) == math.inf
    assert measurements_needed(se, n, 0.0, crit_level=0.975) is None
    assert measurements_needed(math.nan, n, 0.1, crit_level=0.975) is None
    # the inconclusive reading's count would resolve its mean from 0 or from the paper's
    wide = pooled_reading(_series(0.15, 0.6, n=12), PAPER)
    routes = [measurements_needed(wide.se, wide.n, abs(wide.estimate), crit_level=0.975),
              measurements_needed(wide.se, wide.n, PAPER - wide.estimate, crit_level=0.95)]
    assert wide.needed == min(r for r in routes if r is not None)


def test_undefined_steps_are_dropped_and_too_few_is_inconclusive():
    rs = np.r_[_series(0.3, 0.1, n=20), [np.nan, np.nan]]
    rd = pooled_reading(rs, PAPER)
    assert rd.n == 20 and rd.n_skipped == 2
    assert rd.estimate == pytest.approx(np.nanmean(rs))
    few = pooled_reading([0.3, 0.5, np.nan], PAPER)
    assert few.reading == "inconclusive" and not few.resolvable and few.needed is None
    none_ = pooled_reading([np.nan], PAPER)
    assert none_.n == 0 and none_.reading == "inconclusive"
    d = rd.as_dict()
    assert d["reading"] == rd.reading and d["needed"] is None
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pooled_reading([0.2, 1.5, 0.1, 0.3], PAPER)
    with pytest.raises(ValueError, match="paper_r"):
        pooled_reading(rs, 1.0)
    with pytest.raises(ValueError, match="above 0.5"):
        pooled_reading(rs, PAPER, confidence=0.4)
