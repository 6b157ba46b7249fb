"""E6's readings (grponorm.experiments.rl_compare_stats) on per-seed summaries: the
pre-registered rows, the cross-fitted tuned LR and rliable's estimates. No model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from grponorm.experiments import rl_compare_stats as rs
from grponorm.stats import compare
from grponorm.stats.crossfit import crossfit
from grponorm.stats.paired import Verdict

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("group_std", "none")
SHARED = ("adamw", 5e-4)


def _points(seeds, lrs=(5e-4,), slices=("easy", "hard"), seed=0, shift=None):
    """Synthetic per-seed run summaries: acc_primary (and the secondary metrics) per grid
    point, with a shared per-seed draw so that the arms are correlated, as paired runs are."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in slices:
        for lr in lrs:
            base = {x: rng.uniform(0.2, 0.8) for x in seeds}
            for arm in ARMS:
                gain = (shift or {}).get((s, arm, lr), 0.0)
                out[rs._key(s, arm, "adamw", lr)] = [
                    {"seed": x, "acc_start": 0.1, **{m: float(np.clip(
                        base[x] + gain + rng.normal(0, 0.03), 0, 1)) for m in rs.METRICS}}
                    for x in seeds]
    return out


def _only(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_the_committed_grids_have_the_pre_registered_settings():
    for grid in ("results/e6-cpu/confirm", "results/e6-cpu/pilot"):
        cfg = json.loads((ROOT / grid / "config.json").read_text())["config"]
        cfg.setdefault("primary_window", 10)  # the pilot predates the field (its default)
        assert rs.preregistration_mismatches(cfg) == [], grid
        assert rs.preregistration_mismatches({**cfg, "lr": 1e-3}) == [
            "lr: got 0.001, pre-registered 0.0005"]


def test_pre_registered_rows_confirmatory_all_seeds_and_corrected_extension():
    pre = rs.PREREGISTRATION
    points = _points(range(8, 48), shift={("hard", "group_std", 5e-4): 0.03})
    pilot = _points(range(0, 8), seed=1)
    rows = rs.comparisons(points, ["easy", "hard"], ARMS, SHARED, {}, [], preregistered=True,
                          pilot=pilot)
    key_a, key_b = rs._key("hard", *ARMS[:1], *SHARED), rs._key("hard", ARMS[1], *SHARED)
    a = {r["seed"]: r["acc_primary"] for r in points[key_a] + pilot[key_a]}
    b = {r["seed"]: r["acc_primary"] for r in points[key_b] + pilot[key_b]}

    (conf,) = _only(rows, slice="hard", metric="acc_primary", reading="confirmatory")
    c = compare([a[x] for x in pre["confirmatory_seeds"]], [b[x] for x in
                                                           pre["confirmatory_seeds"]])
    assert conf["n"] == 24 and conf["confidence"] == 0.95
    assert (conf["diff"], conf["low"], conf["high"]) == pytest.approx((c.diff, c.low, c.high))
    assert conf["seeds"] == list(range(8, 32))

    (pooled,) = _only(rows, slice="hard", metric="acc_primary", reading="all seeds")
    c = compare([a[x] for x in range(32)], [b[x] for x in range(32)])
    assert pooled["n"] == 32 and pooled["diff"] == pytest.approx(c.diff)

    (ext,) = _only(rows, slice="hard", metric="acc_primary", reading="extension")
    d = np.array([a[x] - b[x] for x in range(8, 48)])
    half = stats.t.ppf(1 - 0.025 / 2, 39) * d.std(ddof=1) / np.sqrt(40)  # 97.5% per look
    assert ext["n"] == 40 and ext["confidence"] == pytest.approx(0.975)
    assert (ext["low"], ext["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    # TOST at alpha = 0.025: the one-sided 97.5% bound
    upper = d.mean() + stats.t.ppf(0.975, 39) * d.std(ddof=1) / np.sqrt(40)
    assert ext["largest_allowed"] == pytest.approx(upper)
    assert "97.5% interval excludes" in ext["cell"] and "Bonferroni" in ext["what"]
    assert ext["excludes_zero"] == (ext["low"] > 0 or ext["high"] < 0)
    # every metric has its confirmatory and extension rows; the pooled row is primary only
    assert len(_only(rows, reading="confirmatory")) == len(_only(rows, reading="extension")) == 8
    assert len(_only(rows, reading="all seeds")) == 2


def test_without_the_pilot_the_all_seeds_row_says_so():
    rows = rs.comparisons(_points(range(8, 48)), ["hard"], ARMS, SHARED, {}, [],
                          preregistered=True)
    (row,) = _only(rows, reading="all seeds")
    assert row["cell"].verdict is Verdict.NOT_RUN and "pilot" in row["cell"]


def test_a_grid_without_every_confirmatory_seed_or_settings_gets_plain_rows():
    for seeds, pre in ((range(8, 31), True), (range(8, 48), False)):
        rows = rs.comparisons(_points(seeds), ["hard"], ARMS, SHARED, {}, [],
                              preregistered=pre)
        assert {r["reading"] for r in rows} == {"shared"}
        assert {r["n"] for r in rows} == {len(seeds)}


def _tuned_points(seeds, missing=()):
    lrs = rs.TUNED_PREREGISTRATION["lrs"]
    # Std best at 1.5e-3, No-Std best at 5e-3 (the grid's edge), by wide margins
    shift = {(s, arm, lr): 0.0 for s in ("easy", "hard") for arm in ARMS for lr in lrs}
    shift.update({(s, "group_std", 1.5e-3): 0.3 for s in ("easy", "hard")})
    shift.update({(s, "none", 5e-3): 0.25 for s in ("easy", "hard")})
    points = _points(seeds, lrs=lrs, shift=shift)
    for key, seed in missing:  # a run not finished yet
        points[key] = [r for r in points[key] if r["seed"] != seed]
    return points, lrs


def test_tuned_rows_are_cross_fitted_and_interim_below_the_pre_registered_n():
    hole = rs._key("hard", "none", "adamw", 1.5e-4)
    points, lrs = _tuned_points(range(8, 18), missing=[(hole, 11)])
    rows = rs.tuned_comparisons(points, ["easy", "hard"], ARMS, "adamw", lrs,
                                preregistered=True)
    hard, easy, inter = (_only(rows, slice=s)[0] for s in ("hard", "easy", "hard-easy"))
    assert hard["left_out"] == [11] and 11 not in hard["seeds"] and hard["n"] == 9
    assert easy["left_out"] == [] and easy["n"] == 10
    for arm, best in (("group_std", 1.5e-3), ("none", 5e-3)):
        assert hard["chosen"][arm] == {"even": best, "odd": best}
    assert hard["edge"] == ["none even fold at 0.005", "none odd fold at 0.005"]
    # the values are stats.crossfit's on the seeds with every LR, per arm
    for arm, vals in zip(ARMS, (hard["a"], hard["b"]), strict=True):
        per = {lr: {r["seed"]: r["acc_primary"] for r in points[rs._key("hard", arm, "adamw",
                                                                         lr)]} for lr in lrs}
        _, want = crossfit({lr: np.array([per[lr][x] for x in hard["seeds"]]) for lr in lrs})
        np.testing.assert_allclose(vals, want)
    for r in (hard, easy, inter):
        assert r["interim"] == f"interim, n = {r['n']}, not the pre-registered reading"
        assert r["cell"].verdict is Verdict.INCONCLUSIVE and "no verdict drawn" in r["cell"]
    # interaction: per seed (Std − No-Std on Hard) − (Std − No-Std on Easy), common seeds
    gap = {s: dict(zip(r["seeds"], np.subtract(r["a"], r["b"]), strict=True))
           for s, r in (("hard", hard), ("easy", easy))}
    both = sorted(set(gap["hard"]) & set(gap["easy"]))
    assert inter["seeds"] == both and inter["n"] == 9
    assert inter["diff"] == pytest.approx(np.mean([gap["hard"][x] - gap["easy"][x]
                                                   for x in both]))


def test_tuned_rows_at_the_pre_registered_n_draw_a_verdict():
    points, lrs = _tuned_points(range(8, 48))
    rows = rs.tuned_comparisons(points, ["easy", "hard"], ARMS, "adamw", lrs,
                                preregistered=True)
    assert [r["n"] for r in rows] == [40, 40, 40]
    assert all(r["interim"] is None for r in rows)
    (hard,) = _only(rows, slice="hard")
    # Std at its best LR (+0.3) vs No-Std at its best (+0.25): +0.05 on average
    assert hard["diff"] == pytest.approx(0.05, abs=0.02)
    assert not hard["cell"].startswith("inconclusive (interim")


def test_no_seed_with_every_lr_is_said():
    points, lrs = _tuned_points(range(8, 10))
    del points[rs._key("hard", "none", "adamw", 5e-3)]
    rows = rs.tuned_comparisons(points, ["hard"], ARMS, "adamw", lrs, preregistered=True)
    (row,) = rows
    assert row["cell"].verdict is Verdict.NOT_RUN and row["left_out"] == [8, 9]


def test_rliable_rows_are_rliables_iqm_and_probability_of_improvement():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=12), rng.uniform(size=12) - 0.2
    rows = rs.rliable_rows({"hard": (list(a), list(b))}, ARMS, "test", reps=300)
    iqm_a, iqm_b, poi = rows
    assert iqm_a["estimate"] == pytest.approx(stats.trim_mean(a, 0.25))
    assert iqm_b["estimate"] == pytest.approx(stats.trim_mean(b, 0.25))
    u = stats.mannwhitneyu(a, b, alternative="greater").statistic
    assert poi["estimate"] == pytest.approx(u / (12 * 12))
    for r in rows:
        assert r["low"] <= r["estimate"] <= r["high"] and r["n"] == 12
        assert r["cell"].verdict is Verdict.MEASURED
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (rliable's generator)
    again = rs.rliable_rows({"hard": (list(a), list(b))}, ARMS, "test", reps=300)
    assert [r["low"] for r in again] == [r["low"] for r in rows]  # seeded
    restored = np.random.get_state()[1]  # noqa: NPY002
    np.testing.assert_array_equal(restored, state)  # the global generator is restored


def test_base_rates_average_both_arms_of_the_main_grid():
    points = _points(range(8, 12))
    out = rs.base_rates(points, ["hard"], ARMS, SHARED)
    runs = points[rs._key("hard", "group_std", *SHARED)] + points[rs._key("hard", "none",
                                                                          *SHARED)]
    assert out["hard"]["acc_primary"] == pytest.approx(np.mean([r["acc_primary"] for r in runs]))
    assert out["hard"]["runs"] == 8 and out["hard"]["paper"] == [76, 81]
