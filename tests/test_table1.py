"""Table 1 (E5/E5b): Fisher-z intervals over replicates and the same-step / across-step verdicts."""

import math

import numpy as np
import pytest
from scipy import stats

from grponorm.experiments import diag_bandit_proxy, diag_fisher
from grponorm.experiments.table1 import (
    across_verdict,
    correlation_entry,
    lag_intervals,
    table1_rows,
)
from grponorm.stats import compare


def _rows(rs):
    return [{"pearson": r, "pearson_p": 0.5, "spearman": r, "spearman_p": 0.5} for r in rs]


def test_one_run_uses_measurements_as_replicates():
    rs = [0.30, 0.45, 0.20, 0.50, 0.35, 0.40]
    e = correlation_entry([_rows(rs)])
    z = np.arctanh(rs)
    half = stats.t.ppf(0.975, 5) * z.std(ddof=1) / math.sqrt(6)
    assert e["unit"] == "measurements" and e["n"] == 6
    assert e["r"] == pytest.approx(math.tanh(z.mean()))
    assert e["low"] == pytest.approx(math.tanh(z.mean() - half))
    assert e["high"] == pytest.approx(math.tanh(z.mean() + half))
    assert e["p"] == pytest.approx(stats.ttest_1samp(z, 0).pvalue)


def test_autocorrelated_measurements_widen_the_interval():
    """A slowly drifting series of per-step correlations (AR(1), phi 0.8): the interval uses the
    effective sample size, so it is wider than the plain t-interval of the same values."""
    rng = np.random.default_rng(3)
    z = np.empty(40)
    z[0] = 0.3
    for t in range(1, 40):
        z[t] = 0.3 + 0.8 * (z[t - 1] - 0.3) + rng.normal(0, 0.1)
    e = correlation_entry([_rows(np.tanh(z))])
    plain = stats.t.ppf(0.975, 39) * z.std(ddof=1) / math.sqrt(40)
    assert e["n"] == 40 and 2 <= e["n_eff"] < 20
    assert e["z_high"] - e["z_low"] > 1.5 * 2 * plain
    half = stats.t.ppf(0.975, e["n_eff"] - 1) * z.std(ddof=1) / math.sqrt(e["n_eff"])
    assert e["z_low"] == pytest.approx(z.mean() - half, rel=1e-6)
    t = z.mean() / (z.std(ddof=1) / math.sqrt(e["n_eff"]))
    assert e["p"] == pytest.approx(2 * stats.t.sf(abs(t), e["n_eff"] - 1))


def test_several_runs_use_seeds_as_replicates():
    groups = [_rows([0.1, 0.2, 0.3]), _rows([0.0, 0.1]), _rows([0.2, 0.2, 0.25, 0.3])]
    e = correlation_entry(groups)
    units = [np.arctanh([0.1, 0.2, 0.3]).mean(), np.arctanh([0.0, 0.1]).mean(),
             np.arctanh([0.2, 0.2, 0.25, 0.3]).mean()]
    c = compare(units, np.zeros(3))
    assert e["unit"] == "seeds" and e["n"] == 3
    assert e["z_low"] == pytest.approx(c.low) and e["z_high"] == pytest.approx(c.high)


def test_nan_coefficients_are_skipped_and_empty_is_undefined():
    e = correlation_entry([_rows([0.2, float("nan"), 0.4])])
    assert e["n"] == 2
    assert correlation_entry([_rows([float("nan")])])["n"] == 0


def test_lag_intervals_match_the_plain_summary():
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((8, 20)) for _ in range(3)]
    y = [xi + rng.standard_normal((8, 20)) for xi in x]
    out = lag_intervals(x, y, [0, 2, 9])
    assert set(out) == {0, 2}  # lag 9 >= T is skipped
    pe = out[0]["pearson"]
    assert pe["steps"] == 3 * 8 and pe["interval"]["unit"] == "seeds"
    assert pe["interval"]["low"] > 0.3  # x and x + noise correlate at ~0.7


def _entry(rs, groups=1):
    if groups == 1:
        iv = correlation_entry([_rows(rs)])
    else:
        iv = correlation_entry([_rows([r]) for r in rs])
    return {"pearson": {"mean": float(np.mean(rs)), "p": None, "steps": len(rs),
                        "frac_significant": 0.0, "interval": iv}}


def test_table1_verdicts():
    strong = _entry([0.40, 0.45, 0.35, 0.42, 0.38, 0.41, 0.44, 0.39])
    zero = _entry([0.01, -0.02, 0.00, 0.02, -0.01, 0.01, 0.00, -0.01])
    wide = _entry([0.5, -0.4, 0.3, -0.2])
    rows = table1_rows(strong, [("lag 1", zero), ("lag 2", strong), ("lag 3", wide)], "bandit")
    assert rows[0][3].startswith("reproduced; effects up to +0.4")  # the largest still allowed
    assert rows[0][3].endswith("not excluded (paper +0.342)")
    assert "n=8 measurements" in rows[0][2] and "[" in rows[0][2]
    weak = table1_rows(_entry([0.05, 0.08, 0.02, 0.06, 0.04, 0.07, 0.03, 0.05]), [], "bandit")
    assert weak[0][3].startswith("reproduced, but smaller than the paper's: effects up to +0.0")
    none_ = table1_rows(zero, [], "bandit")  # interval around 0, far below 0.342
    assert none_[0][3].startswith("smaller than the paper's (+0.342): effects beyond +0.0")
    assert none_[0][3].verdict.value == "smaller than the paper's"
    assert rows[1][3].startswith("reproduced (≈ 0")
    assert rows[2][3].startswith("contradicted")
    assert rows[3][3].startswith("inconclusive (≈") and "measurements" in rows[3][3]
    one = table1_rows(_entry([0.3]), [("lag 1", _entry([0.1]))], "language model")
    assert one[0][3] == "inconclusive (1 measurement)"
    assert one[1][3] == "inconclusive (1 measurement)"
    weak = table1_rows(_entry([0.3, -0.1, 0.4, 0.0]), [], "bandit")
    assert weak[0][3].startswith("inconclusive (≈") and "would resolve 0.342" in weak[0][3]


def test_across_verdict_needed_measurements_resolve():
    z = np.arctanh([0.15, -0.20, 0.22, 0.02, -0.04])
    c = compare(z, np.zeros(5))
    v = across_verdict(c)
    assert v.startswith("inconclusive (≈")
    k = int(v.split("≈")[1].split(" ")[0])
    half = stats.t.ppf(0.975, k - 1) * c.sd / math.sqrt(k)
    assert abs(c.diff) + half < math.atanh(0.15)  # with k replicates it would lie within ±0.15


def test_report_rows_read_back_from_json_summaries():
    """Report rows work on summaries as reproduce stores them (string lag keys, null NaN)."""
    entry = _entry([0.3, 0.35, 0.4])
    s = {"correlations": {diag_bandit_proxy.MAIN: {"0": entry, "2": entry},
                          "exact Hessian vs exact variance": {"0": {"spearman": {"mean": 0.9}}},
                          "exact Hessian vs Fisher proxy": {"0": {"pearson": {"mean": -0.2}}}}}
    rows = diag_bandit_proxy.report_rows(s)
    assert rows[1][0].startswith("Fisher vs reward variance, lag 2 steps (bandit)")
    lm = {"mode": "train", "steps_measured": [0, 2, 4], "probe": 6, "cost": {"ratio": 1.5},
          "correlations": {diag_fisher.MAIN: {"0": entry, "1": entry}}}
    rows = diag_fisher.report_rows(lm)
    assert rows[1][0].startswith("Fisher vs reward variance, lag 1 (2 steps)")
    ck = {"mode": "checkpoints", "correlations": {diag_fisher.MAIN: {
        "same draw (same step)": entry, "across training (base -> checkpoint.pt)": entry}}}
    rows = diag_fisher.report_rows(ck)
    assert len(rows) == 2 and "across training" in rows[1][0]
