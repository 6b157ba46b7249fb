"""Tests for grponorm.experiments.rl_compare (E6) on a tiny local model."""

from __future__ import annotations

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
    assert all(r[-1] == "inconclusive (1 seed)" for r in rl_compare.report_rows(summary))
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
    # analyze_only: the table and summary rebuilt from the finished runs, nothing trained
    (out / "runs" / "hard-none-s0" / "summary.json").unlink()  # an unfinished run is left out
    monkeypatch.setattr(grid_runner.rl_train, "run", lambda *a, **k: pytest.fail("trained"))
    again = rl_compare.run(rl_compare.CompareConfig(grid_dir=str(out), analyze_only=True),
                           progress=False)
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
    tuned = [r for r in summary["comparisons"] if r["what"].startswith("tuned LR (sgd")]
    assert tuned and tuned[0]["n"] == 1  # one sweep seed
    assert {r["slice"] for r in summary["comparisons"] if "tuned" in r["what"]} == {"hard"}


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


def test_comparisons_tuned_lr_picks_each_arms_best_held_out_lr():
    def runs(acc, ev):
        return [{"seed": s, "acc_end": a, "eval_end": e} for s, (a, e) in enumerate(zip(acc, ev))]

    points = {  # Std is best held out at lr 0.01, No-Std at 0.001: compared on acc_end there
        "hard/group_std/sgd/lr0.01": runs([0.9, 0.8], [0.7, 0.7]),
        "hard/group_std/sgd/lr0.001": runs([0.1, 0.1], [0.2, 0.3]),
        "hard/none/sgd/lr0.01": runs([0.5, 0.5], [0.1, 0.1]),
        "hard/none/sgd/lr0.001": runs([0.3, 0.2], [0.6, 0.6]),
    }
    assert rl_compare_stats.tuned_lr(points, "hard", "group_std", "sgd", [0.001, 0.01]) == 0.01
    assert rl_compare_stats.tuned_lr(points, "hard", "none", "sgd", [0.001, 0.01]) == 0.001
    rows = rl_compare_stats.comparisons(points, ["hard"], ("group_std", "none"),
                                        ("adamw", 1e-3), {"sgd": [0.001, 0.01]}, ["hard"])
    (row,) = [r for r in rows if r["what"].startswith("tuned")]
    assert row["what"] == "tuned LR (sgd: 0.01 vs 0.001)" and (row["lr_a"], row["lr_b"]) == (
        0.01, 0.001)
    assert row["diff"] == pytest.approx(np.mean([0.9 - 0.3, 0.8 - 0.2]))


def test_report_rows_show_each_comparisons_numbers_and_verdict():
    c = rl_compare_stats._row("shared LR (adamw, 0.001)", "hard", "acc_end", [0.69, 0.7, 0.71],
                              [0.5, 0.5, 0.5], {})
    bin_ = rl_compare_stats._row("base pass rate [0.25, 0.50]", "hard", "late group accuracy",
                                 [0.3, 0.2, 0.4], [0.5, 0.45, 0.6], {"prompts": 12})
    (row, bin_row) = rl_compare.report_rows({"comparisons": [c], "bins": [bin_]})
    assert row[0] == "Hard: train sample accuracy, last window, shared LR (adamw, 0.001)"
    assert row[1] == "≈81% vs 76%"  # the paper's Figure 2, Hard slice
    assert row[2] == f"0.700 vs 0.500; Std − No-Std {c['text']}" and "+0.200 [" in row[2]
    assert row[3] == c["cell"] and row[3].startswith("reproduced; effects up to +0.2")
    assert bin_["verdict"] is Verdict.CONTRADICTED and bin_row[3] == "Std behind here"
    assert bin_row[0] == "Hard: base pass rate [0.25, 0.50] (12 prompt-steps)"


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
