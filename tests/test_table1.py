"""Table 1 (E5/E5b): Fisher-z intervals over replicates and the same-step / across-step verdicts."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from grponorm.experiments import diag_bandit_proxy, diag_fisher
from grponorm.experiments.table1 import (
    MIN_SPREAD,
    _across_pooled,
    across_verdict,
    correlation_entry,
    lag_intervals,
    pooled_entry,
    pooled_rows,
    table1_rows,
)
from grponorm.stats import compare
from grponorm.stats.pooled import POOLED_READINGS, holm, pooled_reading, step_correlations


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


# ------------------------------------------------------------------------------ pooled (one run)


def _run_panel(rho: float, T: int = 30, n: int = 20, phi: float = 0.5, seed: int = 0):
    """(T, n) Fisher-like x and variance-like y correlating at rho across prompts at each
    measurement, AR(1) per prompt over measurements."""
    rng = np.random.default_rng(seed)
    x, y = np.empty((T, n)), np.empty((T, n))
    e = lambda: rng.standard_normal(n)  # noqa: E731
    x[0] = e()
    y[0] = rho * x[0] + math.sqrt(1 - rho**2) * e()
    s = math.sqrt(1 - phi**2)
    for t in range(1, T):
        a = e()
        x[t] = phi * x[t - 1] + s * a
        y[t] = phi * y[t - 1] + s * (rho * a + math.sqrt(1 - rho**2) * e())
    return x, y


def test_pooled_entry_reads_same_step_and_holm_adjusts_the_lags():
    x, y = _run_panel(0.6)
    out = pooled_entry(x, y, [0, 1, 2, 3, 40], n_resamples=999)
    assert set(out["lags"]) == {"0", "1", "2", "3"}  # lag 40 >= T skipped
    same = out["lags"]["0"]["pearson"]
    ref = pooled_reading(step_correlations(x, y), 0.342, n_resamples=999)
    assert same["estimate"] == pytest.approx(ref.estimate) and same["low"] == ref.low
    assert same["reading"] == "reproduced" and same["verdict"].startswith("reproduced (")
    assert len(same["rs"]) == 30 and "p_holm" not in same
    assert out["multiplicity"] == {"method": "holm", "lags": [1, 2, 3],
                                   "family": "lags > 0, per method"}
    raw = [out["lags"][g]["pearson"]["p"] for g in ("1", "2", "3")]
    adj = [out["lags"][g]["pearson"]["p_holm"] for g in ("1", "2", "3")]
    np.testing.assert_allclose(adj, holm(raw))
    # x[t] vs y[t + L] correlates at 0.6 * 0.5^L: lag 1 (0.3) is resolved from 0 after Holm
    assert out["lags"]["1"]["pearson"]["verdict"].startswith("contradicted (")
    assert "Holm-adjusted p=" in out["lags"]["1"]["pearson"]["verdict"]


def test_pooled_lag_verdicts_use_the_adjusted_p():
    """A lag whose unadjusted p is below 0.05 but whose Holm-adjusted p is not is not
    "contradicted"; a lag whose interval lies within ±0.15 reads "≈ 0"."""
    rd = {"estimate": 0.2, "low": 0.01, "high": 0.39, "se": 0.06, "n": 30}
    assert _across_pooled(rd, 0.03).startswith("contradicted")
    v = _across_pooled(rd, 0.09)
    assert v.startswith("inconclusive (≈") and "resolve it from 0" in v
    near = {"estimate": 0.01, "low": -0.1, "high": 0.12, "se": 0.03, "n": 30}
    assert _across_pooled(near, 0.9).startswith("reproduced (≈ 0")
    mid = {"estimate": 0.05, "low": -0.2, "high": 0.3, "se": 0.06, "n": 30}
    assert "within ±0.15" in _across_pooled(mid, 0.9)
    none_ = _across_pooled({"low": None, "n": 3}, None)
    assert none_ == "inconclusive (3 measurements: no interval)"


def test_pooled_entry_sensitivity_and_degenerate_inputs():
    x, y = _run_panel(0.5, T=12, n=8, seed=4)
    spread = np.abs(y)
    spread[:5, 1:] = 0.0  # the first 5 measurements: one prompt with reward spread
    out = pooled_entry(x, y, [0, 1], spread=spread, n_resamples=999)
    assert out["sensitivity"]["kept"] == 7 and out["sensitivity"]["of"] == 12
    assert out["sensitivity"]["pearson"]["n"] == 7 and MIN_SPREAD == 3
    rows = pooled_rows(out, every=2)
    assert len(rows) == 3
    assert rows[0][3].verdict.value == out["lags"]["0"]["pearson"]["reading"]
    assert rows[1][3] == out["lags"]["1"]["pearson"]["verdict"]
    assert rows[2][3].verdict.value == "measured"
    assert rows[2][3] == f"measured: {out['sensitivity']['pearson']['label']}"
    assert rows[1][0].startswith("Fisher vs reward variance, lag 1 (2 steps; Holm over 1 lag)")
    two = pooled_entry(x[:, :2], y[:, :2], [0])  # two prompts: no correlation at all
    assert two["lags"]["0"]["pearson"]["n"] == 0
    assert two["lags"]["0"]["pearson"]["verdict"].startswith("inconclusive")
    short = pooled_entry(x[:3], y[:3], [0, 1, 2, 3])
    assert set(short["lags"]) == {"0", "1", "2"}
    assert all(v["pearson"]["verdict"].startswith("inconclusive")
               for v in short["lags"].values())


# ------------------------------------------------------------------------------ E5 re-analysis

RESULTS_E5 = Path(__file__).resolve().parents[1] / "results" / "e5-cpu"


@pytest.mark.skipif(not (RESULTS_E5 / "train" / "metrics.jsonl").is_file(),
                    reason="results/e5-cpu not in this checkout")
def test_reanalyze_committed_e5_reads_the_per_step_matrices():
    """The pooled estimate of the committed run equals the mean per-step Pearson r that the
    run's own summary computed another way (``diagnostics.correlation``); its rows and lags
    follow the run's config; the saved summary is otherwise returned as it was."""
    saved = json.loads((RESULTS_E5 / "summary.json").read_text())
    s = diag_fisher.reanalyze(RESULTS_E5)
    assert {k: v for k, v in s.items() if k != "pooled"} == saved
    lags = s["pooled"]["lags"]
    assert set(lags) == set(saved["correlations"][diag_fisher.MAIN])
    for g, by in lags.items():
        for key in ("pearson", "spearman"):
            ref = saved["correlations"][diag_fisher.MAIN][g][key]
            assert by[key]["estimate"] == pytest.approx(ref["mean"], rel=1e-9)
            assert by[key]["n"] == ref["steps"] and by[key]["reading"] in POOLED_READINGS
    assert s["pooled"]["multiplicity"]["lags"] == [1, 2, 3]
    rows = diag_fisher.report_rows(s)
    assert rows[0][0].startswith("Fisher vs reward variance, same step (language model; mean")
    assert rows[0][3].verdict.value == lags["0"]["pearson"]["reading"]
    assert [r[0].split(" (")[0] for r in rows[1:4]] == [
        f"Fisher vs reward variance, lag {g}" for g in (1, 2, 3)]
    assert rows[-1][0] == "cost of the diagnostic"
    table = diag_fisher.pooled_table(s["pooled"], 2)
    assert "Holm over lags 1, 2, 3" in table and table.count("| pearson |") == 4


def test_reanalyze_refuses_a_checkpoints_run(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"mode": "checkpoints"}))
    with pytest.raises(ValueError, match="training-mode"):
        diag_fisher.reanalyze(tmp_path)
