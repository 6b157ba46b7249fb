"""Tests for grponorm.stats.autocorr: n_eff and block-bootstrap intervals for a series' mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from grponorm.stats import (
    SeriesInterval,
    autocorr_mean_interval,
    autocorrelation,
    block_bootstrap_interval,
    block_length,
    effective_sample_size,
)
from series import ar1

PHI = 0.6




def _covers(c: SeriesInterval, truth: float = 0.0) -> bool:
    # No interval (n_eff < 2) would be unbounded: it covers.
    return not c.resolvable or c.low <= truth <= c.high


# ------------------------------------------------------------------------------------------
# Coverage on AR(1), phi = 0.6
# ------------------------------------------------------------------------------------------


def test_coverage_on_ar1_plain_t_under_covers_corrected_ones_do_not():
    # n = 40 steps. Nominal 95%. The plain t-interval covers ~67% (tau = 4): require < 0.80.
    # The corrected ones keep a small-sample shortfall of <= 4 points (module docstring: 91-94%
    # at n = 30-60); tolerance 0.95 - 0.04 - 3 MC SE below, 0.99 above. 2000 series for the
    # n_eff interval, 400 (999 resamples each) for the circular block bootstrap.
    rng = np.random.default_rng(20240615)
    x = ar1(rng, 40, PHI, 2000)
    t_crit = scipy.stats.t.ppf(0.975, 39)
    naive = np.mean(np.abs(x.mean(1)) <= t_crit * x.std(1, ddof=1) / math.sqrt(40))
    n_eff = np.mean([_covers(autocorr_mean_interval(row)) for row in x])
    boot = np.mean(
        [_covers(block_bootstrap_interval(row, n_resamples=999, seed=i)) for i, row in
         enumerate(x[:400])]
    )
    tol = lambda sims: 0.04 + 3 * math.sqrt(0.95 * 0.05 / sims)  # noqa: E731
    assert naive < 0.80
    assert 0.95 - tol(2000) <= n_eff <= 0.99
    assert 0.95 - tol(400) <= boot <= 0.99
    assert n_eff - naive > 0.15 and boot - naive > 0.15


def test_coverage_on_independent_values_is_not_below_nominal():
    # phi = 0: both corrections stay at or above ~95% (conservative: n_eff is capped at n).
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 40))
    tol = 3 * math.sqrt(0.95 * 0.05 / 1000)
    assert np.mean([_covers(autocorr_mean_interval(row)) for row in x]) >= 0.95 - tol
    boot = [_covers(block_bootstrap_interval(r, n_resamples=499, seed=i)) for i, r in
            enumerate(x[:200])]
    assert np.mean(boot) >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 200)


# ------------------------------------------------------------------------------------------
# Autocorrelation and n_eff
# ------------------------------------------------------------------------------------------


def test_autocorrelation_of_a_long_ar1_is_phi_to_the_k():
    x = ar1(np.random.default_rng(1), 20_000, PHI, 1)[0]
    rho = autocorrelation(x, max_lag=4)
    assert rho.shape == (5,) and rho[0] == 1.0
    np.testing.assert_allclose(rho, PHI ** np.arange(5), atol=0.03)
    # Divisor n: equals numpy's correlate of the centered series over n.
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    d = y - y.mean()
    full = np.correlate(d, d, "full")[d.size - 1 :] / (d @ d)
    np.testing.assert_allclose(autocorrelation(y), full, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(autocorrelation([2.0, 2.0, 2.0]), [1.0, 0.0, 0.0])


def test_effective_sample_size_of_ar1_is_n_over_tau():
    x = ar1(np.random.default_rng(2), 20_000, PHI, 1)[0]
    tau = (1 + PHI) / (1 - PHI)  # 4
    assert effective_sample_size(x) == pytest.approx(20_000 / tau, rel=0.15)
    assert effective_sample_size(x, max_lag=30) == pytest.approx(20_000 / tau, rel=0.15)
    iid = np.random.default_rng(3).normal(size=20_000)
    assert effective_sample_size(iid) == pytest.approx(20_000, rel=0.1)


def test_effective_sample_size_formula_bounds_and_errors():
    x = np.array([0.3, 0.5, 0.4, 0.7, 0.6, 0.9, 0.8, 0.7, 0.5, 0.6])
    n = x.size
    d = x - x.mean()
    g = np.array([d[: n - k] @ d[k:] for k in range(3)]) / n
    tau = 1 + 2 * (g[1] + g[2]) / g[0]
    expected = x.var(ddof=1) / (g[0] * tau / (n - 2 * 2 - 1))
    assert effective_sample_size(x, max_lag=2) == pytest.approx(min(expected, n))
    alternating = np.tile([1.0, -1.0], 10)  # negative autocorrelation: capped at n
    assert effective_sample_size(alternating) == 20.0
    assert effective_sample_size([1.0, 1.0, 1.0]) == 3.0
    assert effective_sample_size([1.0]) == 1.0
    with pytest.raises(ValueError, match="max_lag"):
        effective_sample_size(x, max_lag=10)
    with pytest.raises(ValueError, match=r"x\[2\]"):
        effective_sample_size([1.0, 2.0, math.inf])


def test_autocorr_mean_interval():
    x = ar1(np.random.default_rng(4), 50, PHI, 1)[0]
    c = autocorr_mean_interval(x)
    ne = effective_sample_size(x)
    half = scipy.stats.t.ppf(0.975, ne - 1) * x.std(ddof=1) / math.sqrt(ne)
    assert c.n_eff == pytest.approx(ne) and c.method == "n_eff" and c.n == 50
    assert (c.low, c.high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert ne < 50 and c.window >= 1
    assert "n=50 (n_eff≈" in c.describe()
    one = autocorr_mean_interval([0.5])
    assert not one.resolvable and one.describe() == "+0.500, n=1 (n_eff≈1.0, n_eff): no interval"
    const = autocorr_mean_interval([0.2, 0.2, 0.2, 0.2])
    assert (const.low, const.high) == (0.2, 0.2)


# ------------------------------------------------------------------------------------------
# Block bootstrap
# ------------------------------------------------------------------------------------------


def test_block_length_rule():
    assert [block_length(n) for n in (4, 8, 30, 60, 1000)] == [2, 4, 7, 8, 20]
    with pytest.raises(ValueError):
        block_length(0)


def test_block_bootstrap_is_seeded_and_wider_than_plain_t():
    x = ar1(np.random.default_rng(6), 50, PHI, 1)[0]
    a = block_bootstrap_interval(x, seed=3)
    assert a == block_bootstrap_interval(x, seed=3)
    assert a != block_bootstrap_interval(x, seed=4)
    assert a.window == block_length(50) and a.method == "block-bootstrap-t"
    assert a.low < x.mean() < a.high
    plain = scipy.stats.t.ppf(0.975, 49) * x.std(ddof=1) / math.sqrt(50)
    assert a.high - a.low > 2 * plain and a.n_eff < 50
    moving = block_bootstrap_interval(x, seed=3, circular=False)
    pct = block_bootstrap_interval(x, seed=3, method="percentile", block=5)
    assert moving.resolvable and pct.method == "block-bootstrap-percentile" and pct.window == 5
    assert pct.low < x.mean() < pct.high


def test_block_bootstrap_edge_cases_and_errors():
    assert not block_bootstrap_interval([0.1, 0.2, 0.3]).resolvable  # n < 4
    assert not block_bootstrap_interval(np.arange(8.0), block=5).resolvable  # one block
    const = block_bootstrap_interval([0.3] * 10)
    assert (const.low, const.high) == pytest.approx((0.3, 0.3), abs=1e-15)
    with pytest.raises(ValueError, match="block"):
        block_bootstrap_interval(np.arange(10.0), block=0)
    with pytest.raises(ValueError, match="method"):
        block_bootstrap_interval(np.arange(10.0), method="bca")
    with pytest.raises(ValueError, match="n_resamples"):
        block_bootstrap_interval(np.arange(10.0), n_resamples=1)
