"""Tests for grponorm.stats.equivalence: readings against the paper's effect size (TOST)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats

from grponorm.stats import (
    READINGS,
    EffectReading,
    compare,
    correlation_interval,
    correlation_reading,
    effect_reading,
    mean_correlation_reading,
)

ALPHA = 0.05


def _mc_tol(p: float, sims: int) -> float:
    """Three Monte-Carlo standard errors of a rate p estimated from ``sims`` simulations."""
    return 3 * math.sqrt(p * (1 - p) / sims)


# ------------------------------------------------------------------------------------------
# Calibration (simulated normal differences and bivariate normal correlations)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.5, -0.5])
def test_smaller_claimed_at_most_alpha_at_the_boundary(delta):
    # True effect exactly the paper's: "smaller than the paper's" is a false claim. The one-sided
    # t-test is exact for normal data, so it is made alpha of the time; 4000 simulations of 8
    # seeds: at most alpha + 3 MC SE (0.05 + 0.010). The 95% interval covers the truth within
    # 0.95 +- 3 MC SE (+-0.010).
    rng = np.random.default_rng(2024)
    sims, n = 4000, 8
    d = rng.normal(delta, 1.0, size=(sims, n))
    readings = [effect_reading(row, delta) for row in d]
    claimed = np.mean([r.reading == "smaller than the paper's" for r in readings])
    covered = np.mean([r.low <= delta <= r.high for r in readings])
    assert claimed <= ALPHA + _mc_tol(ALPHA, sims)
    assert claimed >= ALPHA - _mc_tol(ALPHA, sims)  # and not far more conservative
    assert abs(covered - 0.95) <= _mc_tol(0.95, sims)


def test_smaller_claimed_often_when_the_true_effect_is_zero():
    # True effect 0, paper 0.5 sd, 40 seeds: the one-sided test's power is ~0.94 (noncentral t);
    # require >= 0.85 over 1000 simulations. Never "reproduced" more than alpha/2 + tolerance.
    rng = np.random.default_rng(7)
    sims, n, delta = 1000, 40, 0.5
    nct = scipy.stats.nct.sf(scipy.stats.t.ppf(1 - ALPHA, n - 1), n - 1, delta * math.sqrt(n))
    readings = [effect_reading(row, delta) for row in rng.normal(0.0, 1.0, size=(sims, n))]
    claimed = np.mean([r.smaller for r in readings])
    reproduced = np.mean([r.reading == "reproduced" for r in readings])
    assert nct > 0.9
    assert claimed >= 0.85
    assert abs(claimed - nct) <= _mc_tol(nct, sims)
    assert reproduced <= ALPHA / 2 + _mc_tol(ALPHA / 2, sims)


def test_correlation_smaller_claimed_at_most_alpha_at_the_paper_r():
    # Bivariate normal with rho = 0.342 (the paper's), 30 pairs, 4000 simulations: Fisher z is
    # approximate, so alpha + 3 MC SE + 0.01; the 95% interval covers rho within 0.95 +- (3 MC SE
    # + 0.01). With rho = 0 and 200 pairs "smaller than the paper's" is claimed >= 95%.
    rng = np.random.default_rng(11)
    sims, n, rho = 4000, 30, 0.342

    def rs(rho: float, n: int) -> np.ndarray:
        x = rng.normal(size=(sims, n))
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(sims, n))
        x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))  # (sims,)

    readings = [correlation_reading(r, n) for r in rs(rho, n)]
    claimed = np.mean([r.reading == "smaller than the paper's" for r in readings])
    covered = np.mean([r.low <= rho <= r.high for r in readings])
    assert claimed <= ALPHA + _mc_tol(ALPHA, sims) + 0.01
    assert abs(covered - 0.95) <= _mc_tol(0.95, sims) + 0.01
    null = [correlation_reading(r, 200) for r in rs(0.0, 200)]
    assert np.mean([r.reading == "smaller than the paper's" for r in null]) >= 0.95


# ------------------------------------------------------------------------------------------
# Differences
# ------------------------------------------------------------------------------------------


def test_interval_is_compares_and_largest_is_the_one_sided_bound():
    d = np.array([0.11, -0.05, 0.20, 0.02, 0.09, -0.12, 0.15, 0.04])
    e = effect_reading(d, 0.3)
    c = compare(d, np.zeros_like(d))
    assert (e.estimate, e.low, e.high, e.n) == pytest.approx((c.diff, c.low, c.high, c.n))
    # The largest effect allowed is the upper bound of the 90% interval (TOST at alpha = 0.05).
    c90 = compare(d, np.zeros_like(d), confidence=0.90)
    assert e.largest == pytest.approx(c90.high, rel=1e-12)
    assert e.reading in READINGS and e.confidence == 0.95
    # Paper on the negative side: the bound on that side.
    assert effect_reading(d, -0.3).largest == pytest.approx(c90.low, rel=1e-12)


def test_readings_and_descriptions():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(8)
    d = 0.027 + 0.12 * (z - z.mean()) / z.std(ddof=1)  # mean 0.027, sd 0.12
    e = effect_reading(d, 0.05)
    assert (e.low, e.high) == pytest.approx((-0.0733, 0.1273), abs=1e-4)
    assert e.reading == "inconclusive" and not e.smaller
    assert e.description.endswith(
        f"inconclusive; effects up to {e.largest:+.3f} not excluded (paper +0.050)".replace(
            "-", "\N{MINUS SIGN}"
        )
    )
    assert e.description.startswith(f"{e.estimate:+.3f} [") and ", n=8: " in e.description
    assert str(e) == e.description

    small = effect_reading(d, 0.5)  # 0 not excluded, 0.5 excluded
    assert small.reading == "smaller than the paper's" and small.smaller
    assert "smaller than the paper's +0.500; effects up to" in small.description

    real = effect_reading(0.2 + 0.05 * rng.standard_normal(8), 0.5)  # real but smaller
    assert real.reading == "reproduced" and real.smaller
    assert "reproduced, but smaller than the paper's +0.500" in real.description

    big = effect_reading(0.6 + 0.05 * rng.standard_normal(8), 0.5)
    assert big.reading == "reproduced" and not big.smaller
    assert big.description.endswith("not excluded (paper +0.500)")

    opposite = effect_reading(-0.2 + 0.05 * rng.standard_normal(8), 0.5)
    assert opposite.reading == "smaller than the paper's" and opposite.opposite
    assert "(opposite sign: 0 excluded)" in opposite.description

    neg = effect_reading(-0.2 + 0.05 * rng.standard_normal(8), -0.1)
    assert neg.reading == "reproduced" and "effects down to" in neg.description


def test_one_seed_is_never_evidence():
    e = effect_reading([0.4], 0.3)
    assert e.reading == "inconclusive" and not e.resolvable and not e.smaller
    assert math.isnan(e.low) and math.isnan(e.high) and math.isnan(e.largest)
    assert e.description == "+0.400, n=1: inconclusive (one seed is never evidence)"


def test_zero_spread_gives_the_point_interval():
    e = effect_reading([0.1, 0.1, 0.1], 0.3)
    assert (e.low, e.high, e.largest) == pytest.approx((0.1, 0.1, 0.1), abs=1e-15)
    assert e.reading == "reproduced" and e.smaller  # every seed agreed exactly, as compare


def test_n_eff_widens_the_interval():
    d = np.linspace(-0.1, 0.3, 20)
    plain, corrected = effect_reading(d, 0.3), effect_reading(d, 0.3, n_eff=5.0)
    assert corrected.high - corrected.low > plain.high - plain.low
    se = d.std(ddof=1) / math.sqrt(5.0)
    assert corrected.high == pytest.approx(d.mean() + scipy.stats.t.ppf(0.975, 4.0) * se)
    assert "n=20 (n_eff≈5.0)" in corrected.description
    few = effect_reading(d, 0.3, n_eff=1.5, unit="measurement")
    assert few.reading == "inconclusive" and "too few effective measurements" in few.description


def test_frozen_and_validation():
    e = effect_reading([0.1, 0.2, 0.3], 0.3)
    assert isinstance(e, EffectReading)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.reading = "reproduced"  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-zero"):
        effect_reading([0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="n_eff"):
        effect_reading([0.1, 0.2], 0.3, n_eff=3.0)
    with pytest.raises(ValueError, match=r"d\[1\]"):
        effect_reading([0.1, math.nan], 0.3)
    with pytest.raises(ValueError, match="confidence"):
        effect_reading([0.1, 0.2], 0.3, confidence=1.0)


# ------------------------------------------------------------------------------------------
# Correlations
# ------------------------------------------------------------------------------------------


def test_correlation_reading_matches_correlation_interval():
    e = correlation_reading(0.24, 30)
    ci = correlation_interval(0.24, 30)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert e.largest == pytest.approx(correlation_interval(0.24, 30, confidence=0.90).high)
    assert e.paper == 0.342 and e.reading == "inconclusive"
    assert e.description.startswith("r=+0.240 [") and "correlations up to" in e.description
    assert correlation_reading(0.05, 300).reading == "smaller than the paper's"
    assert correlation_reading(0.5, 300).reading == "reproduced"
    few = correlation_reading(0.5, 3)
    assert few.reading == "inconclusive" and "n <= 3" in few.description
    with pytest.raises(ValueError, match="paper_r"):
        correlation_reading(0.2, 30, paper_r=1.0)


def test_mean_correlation_reading_is_the_t_interval_of_fisher_z():
    rs = np.array([0.2, 0.3, 0.1, 0.4, 0.25, 0.15])
    e = mean_correlation_reading(rs)
    z = effect_reading(np.arctanh(rs), math.atanh(0.342))
    assert e.estimate == pytest.approx(math.tanh(z.estimate))
    assert (e.low, e.high, e.largest) == pytest.approx(
        tuple(math.tanh(v) for v in (z.low, z.high, z.largest))
    )
    assert e.reading == z.reading == "reproduced" and e.smaller
    wide = mean_correlation_reading(rs, n_eff=3.2, unit="measurement")
    assert wide.reading == "inconclusive" and "n_eff≈3.2" in wide.description
    one = mean_correlation_reading([0.3])
    assert one.reading == "inconclusive" and "one replicate is never evidence" in one.description
    with pytest.raises(ValueError, match=r"rs\[0\]"):
        mean_correlation_reading([1.5, 0.2])
