"""Tests for grponorm.experiments.rl_compare (E6) on a tiny local model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from conftest import TINY_TRAIN  # noqa: E402  (tests/conftest.py)
from grponorm.experiments import grid as grid_runner  # noqa: E402
from grponorm.experiments import rl_compare, rl_compare_stats  # noqa: E402
from grponorm.experiments.rows import VerdictCell  # noqa: E402
from grponorm.rl.summary import read_metrics  # noqa: E402
from grponorm.stats import compare  # noqa: E402
from grponorm.stats.paired import Verdict  # noqa: E402


def test_compare_grid_figure_table_and_resume(tiny_policy_dir, tmp_path, monkeypatch):
    shared = {k: v for k, v in TINY_TRAIN.items() if k != "eval_every"}
    cfg = rl_compare.CompareConfig(
        model=str(tiny_policy_dir),
        out=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        steps=2,
        eval_every=2,
        spread_n=4,
        pass_rate_k=4,
        **shared,
    )
    summary = rl_compare.run(cfg, progress=False)
    out = Path(summary["run_dir"])
    for name in ("accuracy.png", "success_hist.png", "table.md", "summary.json", "spread.json"):
        assert (out / name).is_file(), name
    assert set(summary["results"]) == {"easy/group_std", "easy/none", "hard/group_std", "hard/none"}
    assert sum(summary["spread"]["slices"]["easy"]["hist"]) == 4
    rows = summary["comparisons"]  # one seed: every comparison is inconclusive
    assert {(r["slice"], r["metric"]) for r in rows} >= {("easy", "acc_end"), ("hard", "acc_end")}
    assert all(r["n"] == 1 and r["verdict"] == "inconclusive" for r in rows)
    report = rl_compare.report_rows(summary)
    caveats = [r for r in report if "base-rate caveat" in r[0]]
    assert [r[0].split(":")[0] for r in caveats] == ["Easy", "Hard"]  # the level of each slice
    assert all(r[-1] == "inconclusive (1 seed)" for r in report if r not in caveats)
    table = (out / "table.md").read_text()
    assert "group_std" in table and "none" in table
    subs = sorted(p.name for p in (out / "runs").iterdir())
    assert subs == ["easy-group_std-s0", "easy-none-s0", "hard-group_std-s0", "hard-none-s0"]
    # Same seed, same slice: the first rollouts (before any update) are identical.
    a = read_metrics(out / "runs" / "easy-group_std-s0")[0]
    b = read_metrics(out / "runs" / "easy-none-s0")[0]
    assert a["acc"] == b["acc"] and a["problems"] == b["problems"]
    # Resume: a finished grid is not retrained (summaries untouched).
    stamp = (out / "runs" / "easy-none-s0" / "summary.json").stat().st_mtime_ns
    again = rl_compare.run(rl_compare.CompareConfig(grid_dir=str(out)), progress=False)
    assert again["results"] == summary["results"]
    assert (out / "runs" / "easy-none-s0" / "summary.json").stat().st_mtime_ns == stamp
    # analyze_only: the table and summary rebuilt from the finished runs, nothing trained,
    # nothing written into the grid folder: the analysis goes to a new folder under --out
    (out / "runs" / "hard-none-s0" / "summary.json").unlink()  # an unfinished run is left out
    monkeypatch.setattr(grid_runner.rl_train, "run", lambda *a, **k: pytest.fail("trained"))
    before = _snapshot(out)
    again = rl_compare.run(rl_compare.CompareConfig(grid_dir=str(out), analyze_only=True,
                                                    out=str(tmp_path / "analysis"),
                                                    seeds=[0, 1]),  # more seeds: not saved
                           progress=False)
    assert _snapshot(out) == before
    analysis = Path(again["run_dir"])
    assert analysis.parent.parent == tmp_path / "analysis" and again["grid_dir"] == str(out)
    for name in ("accuracy.png", "success_hist.png", "table.md", "summary.json"):
        assert (analysis / name).is_file(), name
    assert again["runs"] == 3 and again["runs_wall_time_s"] == pytest.approx(sum(
        json.loads((out / "runs" / f / "summary.json").read_text())["wall_time_s"]
        for f in ("easy-group_std-s0", "easy-none-s0", "hard-group_std-s0")), abs=0.2)
    assert set(again["points"]) == {"easy/group_std/adamw/lr0.005", "easy/none/adamw/lr0.005",
                                    "hard/group_std/adamw/lr0.005"}
    primary = [r for r in again["comparisons"] if r["metric"] == "acc_primary"]
    assert [r["slice"] for r in primary] == ["easy"]  # hard lost its pair
    recs = read_metrics(out / "runs" / "easy-none-s0")
    point = again["points"]["easy/none/adamw/lr0.005"]
    assert point["acc_primary"] == pytest.approx(np.mean([r["acc"] for r in recs][-10:]))
    evals = [r["eval_acc"] for r in read_metrics(out / "runs" / "easy-none-s0", "eval")
             if r["step"] > 0]
    assert evals and point["eval_mean"] == pytest.approx(np.mean(evals))


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes' hash and its mode (folders: their mode)."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes())
                                          .hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_window_metrics():
    recs = [{"kind": "eval", "step": 0, "eval_acc": 0.1}]
    recs += [{"kind": "train", "step": t, "acc": t / 20} for t in range(1, 21)]
    recs += [{"kind": "eval", "step": 10, "eval_acc": 0.5}, {"kind": "eval", "step": 20,
                                                             "eval_acc": 0.7}]
    m = rl_compare.window_metrics(recs, 10)
    assert m["acc_primary"] == pytest.approx(np.mean(np.arange(11, 21) / 20))
    assert m["eval_mean"] == pytest.approx(0.6)  # step 0 (the base model) left out
    assert rl_compare.window_metrics(recs[:1], 10) == {"acc_primary": None, "eval_mean": None}


def test_grid_sweeps_resume_and_paired_comparisons(tiny_policy_dir, tmp_path, monkeypatch):
    """Two seeds, an LR sweep and SGD on the Hard slice; a run killed mid-grid resumes from
    the runs already finished, and reproduce finds the unfinished grid by itself."""
    shared = {k: v for k, v in TINY_TRAIN.items() if k not in ("eval_every", "levels")}
    cfg = rl_compare.CompareConfig(
        model=str(tiny_policy_dir), out=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"),
        steps=2, eval_every=2, measure_spread=False, levels=["add1", "mul1"],
        seeds=[0, 1], lrs=[1e-3], sgd_lrs=[0.5], sweep_seeds=1, workers=1, **shared)
    points = rl_compare.grid(cfg)
    assert len(points) == 2 * 2 * 2 + 2 * 1 + 2 * 1 and len(set(points)) == len(points)
    assert {p.folder(cfg) for p in points if p.optimizer == "sgd"} == {
        "hard-group_std-sgd-lr0.5-s0", "hard-none-sgd-lr0.5-s0"}
    calls = []
    real = grid_runner.rl_train.run

    def flaky(tcfg, progress=True):  # the 5th run is "killed": the session stops there
        calls.append(tcfg.run_dir)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(tcfg, progress=progress)

    monkeypatch.setattr(grid_runner.rl_train, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        rl_compare.run(cfg, progress=False)
    (folder,) = (tmp_path / "runs" / "rl_compare").iterdir()
    assert len(list(folder.glob("runs/*/summary.json"))) == 4
    summary = rl_compare.run(rl_compare.CompareConfig(grid_dir=str(folder), workers=1),
                             progress=False)
    assert len(calls) == 4 + len(points) - 4 + 1  # the 4 finished runs were not rerun
    keys = set(summary["points"])
    assert "hard/group_std/sgd/lr0.5" in keys and "hard/none/adamw/lr0.001" in keys
    main = [r for r in summary["comparisons"] if r["what"].startswith("shared LR")]
    assert {r["n"] for r in main} == {2}  # paired over both seeds
    for r in main:  # Std - No-Std paired by seed, recomputed from the per-seed results
        std, none = (summary["points"][rl_compare_stats._key(r["slice"], arm, r["optimizer"],
                                                             r["lr_a"])]
                     for arm in ("group_std", "none"))
        a, b = (dict(zip(p["seeds"], p[f"{r['metric']}_seeds"])) for p in (std, none))
        assert sorted(a) == sorted(b) == [0, 1]
        c = compare([a[s] for s in (0, 1)], [b[s] for s in (0, 1)])
        assert r["diff"] == pytest.approx(c.diff, abs=1e-12)
        assert (r["mean_a"], r["mean_b"]) == pytest.approx((np.mean(list(a.values())),
                                                              np.mean(list(b.values()))))
        for k in ("low", "high"):
            got, want = r[k], getattr(c, k)
            assert got == pytest.approx(want) or got != got and want != want, k  # NaN: NaN
        assert r["verdict"] == c.verdict(+1)
    (tuned,) = [r for r in summary["comparisons"] if r.get("reading") == "tuned"]
    assert tuned["optimizer"] == "adamw" and tuned["slice"] == "hard"  # Easy was not swept
    assert tuned["lrs"] == sorted([cfg.lr, 1e-3])
    assert tuned["n"] == 1 and tuned["in_sample"] and tuned["seeds"] == [0]  # one sweep seed
    fixed = {(r["optimizer"], r["lr_a"], r["n"]) for r in summary["comparisons"]
             if r.get("reading") == "fixed LR"}
    assert fixed == {("adamw", 1e-3, 1), ("sgd", 0.5, 1)}  # SGD's one LR: no tuning


def test_reproduce_resumes_the_newest_grid(tmp_path):
    from grponorm.report.reproduce import _previous_run

    old, new = tmp_path / "rl_compare" / "20260101-000000", tmp_path / "rl_compare" / "20260102"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    assert _previous_run(tmp_path) == new
    assert _previous_run(tmp_path / "nothing") is None


def test_smooth():
    assert rl_compare.smooth([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert rl_compare.smooth([1.0], 5).tolist() == [1.0]


def _runs(values: dict[int, float], metric: str = "acc_end") -> list[dict]:
    """Per-seed run summaries, as ``comparisons`` gets them, in the order given."""
    return [{"seed": seed, metric: v} for seed, v in values.items()]


def test_comparisons_pair_arms_by_seed_std_minus_none():
    """Std - No-Std by seed: seeds listed in another order, and a seed only one arm ran, must
    neither shift the pairing nor enter the comparison."""
    std = {2: 0.62, 0: 0.50, 1: 0.71, 3: 0.90}  # seed 3: only Std ran it
    none = {0: 0.40, 1: 0.66, 2: 0.55}
    points = {"hard/group_std/adamw/lr0.001": _runs(std), "hard/none/adamw/lr0.001": _runs(none)}
    (row,) = rl_compare_stats.comparisons(points, ["hard"], ("group_std", "none"),
                                          ("adamw", 1e-3), {}, [])
    d = [std[s] - none[s] for s in (0, 1, 2)]  # [0.10, 0.05, 0.07]
    assert (row["slice"], row["metric"], row["n"]) == ("hard", "acc_end", 3)
    assert row["diff"] == pytest.approx(np.mean(d), abs=1e-12)
    half = 4.302652729749462 * np.std(d, ddof=1) / np.sqrt(3)  # t_{2, 0.975} sd / sqrt(n)
    assert (row["low"], row["high"]) == pytest.approx((np.mean(d) - half, np.mean(d) + half))
    assert row["low"] > 0 and row["verdict"] is Verdict.REPRODUCED
    assert row["cell"].startswith("reproduced")
    # against the paper's effect: the one-sided (90%) bound is the largest effect still allowed
    upper = np.mean(d) + stats.t.ppf(0.95, 2) * np.std(d, ddof=1) / np.sqrt(3)
    assert row["largest_allowed"] == pytest.approx(upper)
    assert row["smaller_than_paper"] == (upper < 0.05)
    assert (row["mean_a"], row["mean_b"]) == pytest.approx((np.mean([0.50, 0.71, 0.62]),
                                                          np.mean([0.40, 0.66, 0.55])))
    assert row["text"].startswith("+0.073 [")  # the cell shows this difference


def test_comparisons_tuned_lr_is_cross_fitted_on_the_primary_metric():
    """Each arm's LR is chosen per fold on the other fold's mean acc_primary (a held-out
    metric never enters), and each seed scores its own acc_primary at its fold's LR."""
    def runs(acc, ev):
        return [{"seed": s, "acc_primary": a, "eval_end": e}
                for s, (a, e) in enumerate(zip(acc, ev))]

    points = {  # Std best at 0.01 on both folds; No-Std: 0.001 on seeds 0, 2, 0.01 on 1, 3
        "hard/group_std/sgd/lr0.01": runs([0.9, 0.8, 0.7, 0.9], [0.0] * 4),
        "hard/group_std/sgd/lr0.001": runs([0.1, 0.1, 0.2, 0.1], [0.9] * 4),
        "hard/none/sgd/lr0.01": runs([0.6, 0.2, 0.5, 0.3], [0.9] * 4),
        "hard/none/sgd/lr0.001": runs([0.3, 0.7, 0.2, 0.8], [0.0] * 4),
    }
    rows = rl_compare_stats.comparisons(points, ["hard"], ("group_std", "none"),
                                        ("adamw", 1e-3), {"sgd": [0.001, 0.01]}, ["hard"])
    (row,) = [r for r in rows if r.get("reading") == "tuned"]
    # No-Std's even fold (seeds 0, 2) is chosen on seeds 1, 3: 0.001 (0.75 vs 0.25); its odd
    # fold on seeds 0, 2: 0.01 (0.55 vs 0.25)
    assert row["chosen"] == {"group_std": {"even": 0.01, "odd": 0.01},
                             "none": {"even": 0.001, "odd": 0.01}}
    assert row["edge"] and row["n"] == 4 and row["left_out"] == []
    none = [0.3, 0.2, 0.2, 0.3]  # seed by seed at its fold's LR
    assert row["b"] == pytest.approx(none)
    assert row["diff"] == pytest.approx(np.mean(np.subtract([0.9, 0.8, 0.7, 0.9], none)))
    fixed = [r for r in rows if r.get("reading") == "fixed LR"]
    assert {r["lr_a"] for r in fixed} == {0.001, 0.01}  # each LR of the sweep, secondary


def test_report_rows_show_each_comparisons_numbers_and_verdict():
    c = rl_compare_stats._row("shared LR (adamw, 0.001)", "hard", "acc_end", [0.69, 0.7, 0.71],
                              [0.5, 0.5, 0.5], {})
    bin_ = {"what": "Std − No-Std by base pass rate p̂ in [0.25, 0.50], shared LR",
            "slice": "hard", "text": "-0.2 [-0.3, -0.1], n=3 seeds", "change_a": 0.1,
            "change_b": 0.3, "cell": VerdictCell("negative", Verdict.NEGATIVE)}
    (row, bin_row) = rl_compare.report_rows({"comparisons": [c], "bins": [bin_]})
    assert row[0] == "Hard: train sample accuracy, last window, shared LR (adamw, 0.001)"
    assert row[1] == "≈81% vs 76%"  # the paper's Figure 2, Hard slice
    assert row[2] == f"0.700 vs 0.500; Std − No-Std {c['text']}" and "+0.200 [" in row[2]
    assert row[3] == c["cell"] and row[3].startswith("reproduced; effects up to +0.2")
    assert bin_row[0] == "Hard: Std − No-Std by base pass rate p̂ in [0.25, 0.50], shared LR"
    assert bin_row[2].startswith("-0.2 [-0.3, -0.1], n=3 seeds; change in success vs p̂: Std "
                                 "+0.100, No-Std +0.300")
    assert bin_row[3] is bin_["cell"]


def test_a_continued_grid_takes_more_seeds_only(tmp_path):
    """--grid-dir with a superset of the saved seeds extends the grid (saved for the next
    continuation); any other --seeds (e.g. the default) leaves the saved ones."""
    from grponorm.runs import Run

    saved = rl_compare.CompareConfig(seeds=[8, 9], steps=3, out=str(tmp_path))
    run = Run.create(tmp_path, "rl_compare", saved)
    same = rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path)))
    assert same.seeds == [8, 9] and same.steps == 3
    more = rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path),
                                                         seeds=[8, 9, 10, 11]))
    assert more.seeds == [8, 9, 10, 11] and more.steps == 3  # the rest stays as saved
    again = rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path)))
    assert again.seeds == [8, 9, 10, 11]
    other = rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path), seeds=[0]))
    assert other.seeds == [8, 9, 10, 11]
    # a setting of the grid given anew is refused, not ignored; the grid's own value passes
    with pytest.raises(ValueError, match=r"steps=7 \(the grid's: 3\)"):
        rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path), steps=7))
    assert rl_compare._settings(rl_compare.CompareConfig(grid_dir=str(run.path),
                                                         steps=3)).steps == 3


def _fake_grid(folder: Path, seeds: list[int], skip: set[str], acc, lrs=(1.5e-4, 1.5e-3, 5e-3),
               run_settings: dict | None = None) -> None:
    """A grid folder laid out as ``rl compare`` writes one, with the committed confirmatory
    grid's settings and the tuned pre-registration's LRs; each run's records are synthetic
    (``acc(slice, normalizer, lr, seed, step)``), its summary the committed template's."""
    root = Path(__file__).resolve().parents[1] / "results" / "e6-cpu" / "confirm"
    saved = json.loads((root / "config.json").read_text())
    lrs = list(lrs)
    saved["config"].update(seeds=seeds, lrs=lrs, sweep_slices=["easy", "hard"], out=str(folder))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(saved))
    template = json.loads((root / "runs" / "hard-none-s8" / "summary.json").read_text())
    run_cfg = json.loads((root / "runs" / "hard-none-s8" / "config.json").read_text())
    for s in ("easy", "hard"):
        for norm in ("group_std", "none"):
            for lr in (5e-4, *lrs):
                for seed in seeds:
                    name = (f"{s}-{norm}-s{seed}" if lr == 5e-4
                            else f"{s}-{norm}-adamw-lr{lr:g}-s{seed}")
                    run = folder / "runs" / name
                    run.mkdir(parents=True)
                    recs = [{"kind": "train", "step": t, "acc": acc(s, norm, lr, seed, t)}
                            for t in range(1, 21)]
                    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                               for r in recs))
                    (run / "config.json").write_text(json.dumps(
                        {**run_cfg, "config": {**run_cfg["config"], "slice": s, "seed": seed,
                                               "normalizer": norm, "lr": lr,
                                               **(run_settings or {})}}))
                    if name not in skip:  # a run still training has no summary.json
                        (run / "summary.json").write_text(json.dumps(
                            {**template, "slice": s, "normalizer": norm, "seed": seed}))


def test_analyze_only_reads_a_tuned_grid_interim_without_writing_into_it(tmp_path):
    """The pre-registered tuned grid, part-way: the cross-fitted rows use the seeds that ran
    every LR (the others counted), are labelled interim and draw no verdict."""
    best = {"group_std": 1.5e-3, "none": 5e-4}  # each arm's best LR, by a clear margin

    def acc(s, norm, lr, seed, t):
        return round(0.3 + 0.2 * (lr == best[norm]) + 0.01 * ((seed * 7 + t) % 5), 4)

    grid = tmp_path / "e6-tuned"
    _fake_grid(grid, [8, 9, 10, 11], {"hard-none-adamw-lr0.005-s9"}, acc)
    before = _snapshot(grid)
    s = rl_compare.run(rl_compare.CompareConfig(grid_dir=str(grid), analyze_only=True,
                                                out=str(tmp_path / "analysis"),
                                                rliable_reps=200), progress=False)
    assert _snapshot(grid) == before
    assert s["preregistration"]["applies"] and s["tuned_preregistration"]["applies"]
    tuned = {r["slice"]: r for r in s["comparisons"] if r.get("reading") in ("tuned",
                                                                            "interaction")}
    assert tuned["hard"]["n"] == 3 and tuned["hard"]["left_out"] == [9]
    assert tuned["easy"]["n"] == 4 and tuned["hard-easy"]["n"] == 3
    for r in tuned.values():
        assert r["cell"] == (f"inconclusive (interim, n = {r['n']}, not the pre-registered "
                             "reading: no verdict drawn)")
    assert tuned["hard"]["chosen"] == {"group_std": {"even": 1.5e-3, "odd": 1.5e-3},
                                       "none": {"even": 5e-4, "odd": 5e-4}}
    assert tuned["hard"]["edge"] == []  # neither 1.5e-4 nor 5e-3 was chosen
    assert tuned["easy"]["diff"] == pytest.approx(np.mean(
        [np.mean([acc("easy", "group_std", 1.5e-3, x, t) - acc("easy", "none", 5e-4, x, t)
                  for t in range(11, 21)]) for x in (8, 9, 10, 11)]))
    shared = [r for r in s["comparisons"] if r.get("reading") == "shared"]
    assert shared and all(r["interim"] == "interim, n = 4, not the pre-registered reading"
                          for r in shared)
    rows = rl_compare.report_rows(s)
    hard = [r for r in rows if r[0].startswith("Hard: PRIMARY") and "tuned LR" in r[0]]
    assert hard and "1 seed lacking an LR left out" in hard[0][0]
    assert any(r[0].startswith("Hard − Easy:") for r in rows)
    assert any("cross-fitted tuned LR" in r[0] and "IQM" in r[0] for r in rows)


def test_a_pilot_is_pooled_only_with_the_grids_settings(tmp_path):
    def acc(s, norm, lr, seed, t):
        return 0.5

    _fake_grid(tmp_path / "grid", [8, 9], set(), acc, lrs=())
    _fake_grid(tmp_path / "pilot", [0, 1], set(), acc, lrs=())
    _fake_grid(tmp_path / "hot", [0, 1], set(), acc, lrs=(), run_settings={"temperature": 1.0})
    _fake_grid(tmp_path / "same", [1, 8], set(), acc, lrs=())

    def analyze(pilot):
        return rl_compare.run(rl_compare.CompareConfig(
            grid_dir=str(tmp_path / "grid"), analyze_only=True, out=str(tmp_path / "an"),
            pilot_dir=str(tmp_path / pilot), rliable_reps=50), progress=False)

    s = analyze("pilot")
    assert s["pilot"]["seeds"] == [0, 1] and s["pilot"]["environment"] == "identical"
    with pytest.raises(ValueError, match="temperature"):
        analyze("hot")
    with pytest.raises(ValueError, match=r"seeds \[8\] are in the pilot and in the grid"):
        analyze("same")
