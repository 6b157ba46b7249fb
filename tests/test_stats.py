"""Tests for grponorm.stats: intervals, verdicts, seeds needed, ratios and correlations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats

from grponorm.stats import (
    VERDICTS,
    Comparison,
    compare,
    correlation,
    correlation_interval,
    ratio_compare,
    seeds_needed,
)
from grponorm.stats.paired import Verdict

# t quantiles written out (t_{df, 0.975}).
T975 = {2: 4.302652729749462, 3: 3.1824463052837078, 5: 2.5705818356363146, 6: 2.4469118511449786}


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


def test_t_interval_coverage_on_normal_paired_data():
    # 8 paired seeds, a known difference of 0.3 with a shared per-seed effect (pairing matters),
    # 500 simulations: the 95% interval covers the truth 90-99% of the time.
    rng = np.random.default_rng(12345)
    true_diff, hits = 0.3, 0
    for _ in range(500):
        seed_effect = rng.normal(0, 2.0, 8)  # common to both arms
        b = 1.0 + seed_effect + rng.normal(0, 0.5, 8)
        a = b + true_diff + rng.normal(0, 0.7, 8)
        c = compare(a, b)
        hits += c.low <= true_diff <= c.high
    assert 0.90 <= hits / 500 <= 0.99


def test_percentile_bootstrap_under_covers_at_small_n():
    # The reason the t-interval is the default: same data, the percentile bootstrap covers less.
    rng = np.random.default_rng(7)
    hits_t = hits_boot = 0
    for s in range(200):
        d = rng.normal(0.3, 1.0, 6)
        ct = compare(d, np.zeros(6))
        cb = compare(d, np.zeros(6), method="bootstrap-percentile", n_resamples=1000, seed=s)
        hits_t += ct.low <= 0.3 <= ct.high
        hits_boot += cb.low <= 0.3 <= cb.high
    assert hits_boot < hits_t
    assert hits_boot / 200 < 0.93


# ------------------------------------------------------------------------------------------
# Hand-computed values and agreement with scipy's tests
# ------------------------------------------------------------------------------------------


def test_paired_t_hand_computed():
    # d = [1, 2, 3, 4]: mean 2.5, sd sqrt(5/3) = 1.2909944, se = sd/2 = 0.6454972;
    # interval 2.5 -+ 3.1824463 * 0.6454972 = [0.4457397, 4.5542603]; t = 3.8729833, p = 0.0304663.
    c = compare([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    assert c.diff == 2.5 and c.n == 4 and c.method == "t" and c.paired
    assert c.sd == pytest.approx(math.sqrt(5 / 3), rel=1e-14)
    assert c.low == pytest.approx(2.5 - T975[3] * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert c.low == pytest.approx(0.4457397432, rel=1e-9)
    assert c.high == pytest.approx(4.5542602568, rel=1e-9)
    assert c.p == pytest.approx(0.0304662917, rel=1e-8)
    assert c.confidence == 0.95 and c.sizes == (4, 4)


def test_paired_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 9), rng.normal(0.5, 1, 9)
    c = compare(a, b, confidence=0.9)
    ref = scipy.stats.ttest_rel(a, b)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_welch_matches_scipy_ttest_ind():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1, 1, 7), rng.normal(0, 3, 11)
    c = compare(a, b, paired=False)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval()
    assert c.method == "welch" and not c.paired and c.sizes == (7, 11) and c.n == 7
    assert c.diff == pytest.approx(a.mean() - b.mean(), rel=1e-14)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # Pooled spread: sqrt(((7-1) s_a^2 + (11-1) s_b^2) / 16).
    pooled = math.sqrt((6 * a.var(ddof=1) + 10 * b.var(ddof=1)) / 16)
    assert c.sd == pytest.approx(pooled, rel=1e-14)


def test_paired_interval_narrower_than_unpaired_on_correlated_data():
    # A large per-seed effect shared by both arms: pairing removes it, so the paired interval is
    # much narrower and resolves the difference the unpaired one cannot.
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 1.0, 8)
    b = seed_effect + rng.normal(0, 0.05, 8)
    a = b + 0.1 + rng.normal(0, 0.05, 8)
    p, u = compare(a, b), compare(a, b, paired=False)
    assert p.diff == pytest.approx(u.diff, rel=1e-12)
    assert (p.high - p.low) < 0.2 * (u.high - u.low)
    assert p.sd < u.sd
    assert p.verdict(+1) == "reproduced" and u.verdict(+1) == "inconclusive"


# ------------------------------------------------------------------------------------------
# Verdicts
# ------------------------------------------------------------------------------------------


def test_clear_effect_verdicts_both_ways():
    a = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02]
    b = [0.0, 0.1, -0.1, 0.05, 0.02, -0.03]
    up = compare(a, b)
    assert up.verdict(+1) == "reproduced" and up.verdict(-1) == "contradicted"
    down = compare(b, a)
    assert down.verdict(-1) == "reproduced" and down.verdict(+1) == "contradicted"
    assert up.verdict(0.05) == "reproduced"  # any signed effect works as the expected sign
    assert up.verdict(+1) is Verdict.REPRODUCED and down.verdict(+1) is Verdict.CONTRADICTED


@pytest.mark.parametrize(
    "low, high, n, up, down",
    [
        (0.1, 0.5, 4, "reproduced", "contradicted"),  # excludes 0 above
        (-0.5, -0.1, 4, "contradicted", "reproduced"),  # excludes 0 below
        (0.0, 0.5, 4, "inconclusive", "inconclusive"),  # touches 0: not excluded
        (-0.5, 0.0, 4, "inconclusive", "inconclusive"),
        (-0.1, 0.1, 4, "inconclusive", "inconclusive"),  # contains 0
        (0.1, 0.5, 1, "inconclusive", "inconclusive"),  # one seed: no interval to trust
        (math.nan, math.nan, 4, "inconclusive", "inconclusive"),
    ],
)
def test_verdict_rule_at_the_interval_edges(low, high, n, up, down):
    c = Comparison((low + high) / 2, low, high, 0.5, n, 0.1, "t", 0.95)
    assert c.verdict(+1) is Verdict(up) and c.verdict(-1) is Verdict(down)


def test_verdict_is_its_label_as_text_and_in_json():
    import json

    v = compare([1.0, 1.1, 0.9], [0.0, 0.1, 0.05]).verdict(+1)
    assert v is Verdict.REPRODUCED
    assert (v, str(v), f"{v}", f"{v:>12}") == ("reproduced", "reproduced", "reproduced",
                                             "  reproduced")
    assert json.dumps({"v": v, v: [v]}) == '{"v": "reproduced", "reproduced": ["reproduced"]}'
    assert json.dumps([v], indent=1) == '[\n "reproduced"\n]'
    assert tuple(Verdict)[:3] == VERDICTS


@pytest.mark.parametrize(
    "cell, verdict",
    [
        ("reproduced", Verdict.REPRODUCED),
        ("reproduced (bound holds)", Verdict.REPRODUCED),
        ("inconclusive (≈14 seeds would resolve 0.05)", Verdict.INCONCLUSIVE),
        ("measured: contradicted", Verdict.MEASURED),  # the label it starts with, not any word
        ("measured: curvature tracks variance (Lemma 2)", Verdict.MEASURED),
        ("no clear difference (≈4 seeds would resolve 1.43)", Verdict.NO_CLEAR_DIFFERENCE),
        ("differs (mean +0.051, 40% below 0.1)", Verdict.DIFFERS),
        ("VIOLATED (3 cases)", Verdict.VIOLATED),
        ("not run: No module named 'x'", Verdict.NOT_RUN),
    ],
)
def test_verdict_of_a_report_cell(cell, verdict):
    assert Verdict.of_cell(cell) is verdict


@pytest.mark.parametrize("cell", ["", "reproducedx", "Reproduced", "std ahead", "violated (1)",
                                  " reproduced"])
def test_a_cell_without_a_verdict_label_raises(cell):
    with pytest.raises(ValueError, match="starts with none of the verdicts"):
        Verdict.of_cell(cell)


def test_interval_containing_zero_is_inconclusive():
    c = compare([0.1, -0.2, 0.15, -0.05], [0.0, 0.0, 0.0, 0.0])
    assert c.low < 0 < c.high
    assert c.verdict(+1) == c.verdict(-1) == "inconclusive"


def test_one_seed_is_inconclusive():
    for paired in (True, False):
        c = compare([5.0], [1.0], paired=paired)
        assert c.n == 1 and c.diff == 4.0
        assert math.isnan(c.low) and math.isnan(c.high) and math.isnan(c.sd) and math.isnan(c.p)
        assert c.verdict(+1) == c.verdict(-1) == "inconclusive"
        assert c.seeds_needed(1.0) is None
        assert str(c).endswith("inconclusive (1 seed)")
    # Unpaired with one seed in one arm: still no interval.
    assert compare([1.0, 2.0, 3.0], [0.0], paired=False).verdict(+1) == "inconclusive"


def test_zero_spread_gives_point_interval_verdict_by_sign():
    c = compare([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # every seed: a - b = 0.5 exactly
    assert (c.low, c.high, c.sd, c.p) == (0.5, 0.5, 0.0, 0.0)
    assert c.verdict(+1) == "reproduced" and c.verdict(-1) == "contradicted"
    same = compare([1.0, 2.0], [1.0, 2.0])
    assert (same.low, same.high, same.p) == (0.0, 0.0, 1.0)
    assert same.verdict(+1) == "inconclusive"
    # Bootstrap falls back to the point interval too (no resampling spread to use).
    boot = compare([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], method="bootstrap")
    assert (boot.low, boot.high) == (0.5, 0.5)
    # Unpaired, both arms constant.
    u = compare([1.0, 1.0], [0.0, 0.0, 0.0], paired=False)
    assert (u.low, u.high, u.p) == (1.0, 1.0, 0.0) and u.verdict(+1) == "reproduced"


@pytest.mark.parametrize("bad", [0, math.nan, math.inf, "up"])
def test_expected_sign_validation(bad):
    c = compare([1.0, 2.0], [0.0, 0.0])
    with pytest.raises((ValueError, TypeError)):
        c.verdict(bad)


# ------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------


def test_nan_raises_naming_the_index():
    with pytest.raises(ValueError, match=r"a\[2\] is nan"):
        compare([1.0, 2.0, math.nan, 4.0], [0.0] * 4)
    with pytest.raises(ValueError, match=r"b\[0\] is inf"):
        compare([1.0, 2.0], [math.inf, 0.0], paired=False)


def test_mismatched_lengths_when_paired_raise():
    with pytest.raises(ValueError, match=r"paired.*3 and 2 seeds"):
        compare([1.0, 2.0, 3.0], [1.0, 2.0])
    assert compare([1.0, 2.0, 3.0], [1.0, 2.0], paired=False).sizes == (3, 2)


@pytest.mark.parametrize(
    ("a", "b", "opts", "match"),
    [
        ([], [], {}, "empty"),
        ([[1.0, 2.0]], [[1.0, 2.0]], {}, "1-D"),
        ([1.0, 2.0], [0.0, 1.0], {"confidence": 1.0}, "confidence"),
        ([1.0, 2.0], [0.0, 1.0], {"method": "wilcoxon"}, "method"),
    ],
)
def test_invalid_inputs(a, b, opts, match):
    with pytest.raises(ValueError, match=match):
        compare(a, b, **opts)


def test_comparison_is_frozen():
    c = compare([1.0, 2.0], [0.0, 0.5])
    assert isinstance(c, Comparison)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.diff = 0.0


# ------------------------------------------------------------------------------------------
# Bootstrap option
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bootstrap", "bootstrap-percentile"])
@pytest.mark.parametrize("paired", [True, False])
def test_bootstrap_is_seeded_and_sane(method, paired):
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 10), rng.normal(0, 1, 10)
    c1 = compare(a, b, paired=paired, method=method, seed=3, n_resamples=2000)
    c2 = compare(a, b, paired=paired, method=method, seed=3, n_resamples=2000)
    c3 = compare(a, b, paired=paired, method=method, seed=4, n_resamples=2000)
    assert c1 == c2 and (c1.low, c1.high) != (c3.low, c3.high)
    assert c1.method == ("bootstrap-bca" if method == "bootstrap" else "bootstrap-percentile")
    assert c1.low < c1.diff < c1.high
    t = compare(a, b, paired=paired)
    assert c1.p == t.p  # the p-value is the t-test's
    assert c1.high - c1.low == pytest.approx(t.high - t.low, rel=0.4)


# ------------------------------------------------------------------------------------------
# Seeds needed
# ------------------------------------------------------------------------------------------


def test_seeds_needed_hand_case():
    # sd = 1, effect = 1: n = 6 gives 2.5705818/sqrt(6) = 1.0494 >= 1; n = 7 gives
    # 2.4469119/sqrt(7) = 0.9248 < 1 -> 7.
    assert T975[5] / math.sqrt(6) > 1 > T975[6] / math.sqrt(7)
    assert seeds_needed(1.0, 1.0) == 7
    assert seeds_needed(-1.0, 1.0) == 7  # the sign of the effect is irrelevant
    # docs/theory.md §6: sd 0.06, a 5 pp gap -> 9 paired seeds
    # (t_8 0.06/3 = 0.0461 < 0.05 <= n=8's 0.0502).
    assert seeds_needed(0.05, 0.06) == 9


def test_seeds_needed_monotone():
    by_effect = [seeds_needed(e, 1.0) for e in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)]
    assert by_effect == sorted(by_effect, reverse=True)
    by_sd = [seeds_needed(0.5, s) for s in (0.1, 0.3, 1.0, 3.0)]
    assert by_sd == sorted(by_sd)
    assert seeds_needed(0.01, 1.0) > 30_000  # large n: t -> z, n ~ (1.96/0.01)^2 = 38,416
    assert seeds_needed(0.01, 1.0) == pytest.approx(38_416, rel=0.01)
    # Unpaired (per arm, pooled sd) needs more than paired at the same spread.
    assert seeds_needed(1.0, 1.0, paired=False) > seeds_needed(1.0, 1.0)


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.5, 0.0) == 2
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(0.5, math.nan) is None
    assert seeds_needed(1e-6, 1.0, max_n=1000) is None
    with pytest.raises(ValueError):
        seeds_needed(1.0, -1.0)


def test_seeds_needed_resolves_at_that_n():
    # With the returned n and an observed difference equal to the effect, the interval excludes 0.
    n = seeds_needed(1.0, 1.0)
    d = np.array([1.0 + x for x in np.linspace(-1, 1, n)])
    d = 1.0 + (d - d.mean()) / d.std(ddof=1)  # mean 1, sd exactly 1
    c = compare(d, np.zeros(n))
    assert c.verdict(+1) == "reproduced"
    d_short = 1.0 + (d[:-1] - d[:-1].mean()) / d[:-1].std(ddof=1)
    assert compare(d_short, np.zeros(n - 1)).verdict(+1) == "inconclusive"


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------


def test_describe_inconclusive_with_seeds_needed():
    c = Comparison(0.031, -0.012, 0.074, 0.15, 8, 0.05, "t", 0.95, True, (8, 8))
    n = seeds_needed(0.05, 0.05)
    assert c.describe(+1, effect=0.05) == (
        f"+0.031 [\N{MINUS SIGN}0.012, +0.074], n=8 paired: inconclusive "
        f"(≈{n} seeds would resolve 0.050)"
    )
    assert str(c).startswith("+0.031 [\N{MINUS SIGN}0.012, +0.074], n=8 paired: inconclusive (≈")


def test_describe_resolved_and_neutral():
    c = compare([1.0, 1.1, 0.9, 1.05], [0.0, 0.1, -0.1, 0.05])
    assert c.describe(+1).endswith(": reproduced")
    assert c.describe(-1).endswith(": contradicted")
    assert str(c).endswith(": positive")  # no expected direction
    u = compare([1.0, 1.1, 0.9], [0.0, 0.1], paired=False)
    assert "n=3+2 unpaired" in str(u)


# ------------------------------------------------------------------------------------------
# Ratios
# ------------------------------------------------------------------------------------------


def test_ratio_compare_hand_computed():
    # Ratios 2, 4, 8: logs ln2 * [1, 2, 3], mean 2 ln2 -> geometric mean 4; sd ln2, se ln2/sqrt3;
    # interval exp(2 ln2 -+ 4.3026527 ln2/sqrt3) = [0.7149242, 22.3799935].
    rc = ratio_compare([2.0, 8.0, 24.0], [1.0, 2.0, 3.0])
    assert rc.ratio == pytest.approx(4.0, rel=1e-14)
    assert rc.low == pytest.approx(0.7149242472, rel=1e-9)
    assert rc.high == pytest.approx(22.379993493, rel=1e-9)
    assert rc.verdict(+1) == "inconclusive" and rc.n == 3
    assert rc.log.sd == pytest.approx(math.log(2), rel=1e-14)


def test_ratio_compare_speedup_verdict_and_seeds():
    reinforce = np.array([5100.0, 5200, 5150, 5080, 5190])
    grpo = np.array([4100.0, 4150, 4120, 4090, 4160])
    rc = ratio_compare(reinforce, grpo)
    assert 1.2 < rc.low < rc.ratio < rc.high < 1.3
    assert rc.verdict(+1) == "reproduced" and rc.verdict(-1) == "contradicted"
    assert "× [" in str(rc) and str(rc).endswith("positive")
    assert rc.seeds_needed(1.25) == seeds_needed(math.log(1.25), rc.log.sd)
    with pytest.raises(ValueError, match=r"b\[1\] is 0\.0"):
        ratio_compare([1.0, 2.0], [1.0, 0.0])


# ------------------------------------------------------------------------------------------
# Correlations
# ------------------------------------------------------------------------------------------


def test_fisher_z_hand_computed():
    # r = 0.5, n = 28: z = atanh(0.5) = 0.5493061, se = 1/sqrt(25) = 0.2, z_0.975 = 1.9599640;
    # tanh(0.5493061 -+ 0.3919928) = [0.1560284, 0.7358185].
    c = correlation_interval(0.5, 28)
    assert c.low == pytest.approx(0.15602836, rel=1e-7)
    assert c.high == pytest.approx(0.73581848, rel=1e-7)
    # p from t = 0.5 sqrt(26/0.75) = 2.9439203 with 26 df.
    assert c.p == pytest.approx(2 * scipy.stats.t.sf(0.5 * math.sqrt(26 / 0.75), 26), rel=1e-12)
    assert c.verdict(+1) == "reproduced" and c.verdict(-1) == "contradicted"


def test_correlation_matches_scipy_pearsonr():
    rng = np.random.default_rng(5)
    x = rng.normal(size=12)
    y = 0.4 * x + rng.normal(size=12)
    c = correlation(x, y, confidence=0.9)
    ref = scipy.stats.pearsonr(x, y)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert c.r == pytest.approx(ref.statistic, rel=1e-12)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_correlation_small_n_and_edges():
    for n in (1, 2, 3):
        c = correlation_interval(0.9, n)
        assert math.isnan(c.low) and math.isnan(c.high)
        assert c.verdict(+1) == "inconclusive"
        assert "inconclusive" in str(c)
    assert math.isnan(correlation_interval(0.9, 2).p)
    perfect = correlation_interval(1.0, 10)
    assert (perfect.low, perfect.high, perfect.p) == (1.0, 1.0, 0.0)
    assert correlation_interval(-0.1, 12).verdict(+1) == "inconclusive"
    for bad in (1.5, math.nan):
        with pytest.raises(ValueError, match="r must be"):
            correlation_interval(bad, 10)
    with pytest.raises(ValueError, match="n must be"):
        correlation_interval(0.5, 0)
    with pytest.raises(ValueError, match="constant"):
        correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"y\[1\] is nan"):
        correlation([1.0, 2.0], [1.0, math.nan])
