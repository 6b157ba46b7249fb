"""Tests for grponorm.experiments.rl_compare (E6) on a tiny local model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import TINY_TRAIN  # noqa: E402  (tests/conftest.py)
from grponorm.experiments import rl_compare  # noqa: E402
from grponorm.rl.summary import read_metrics  # noqa: E402


def test_compare_grid_figure_table_and_resume(tiny_policy_dir, tmp_path):
    shared = {k: v for k, v in TINY_TRAIN.items() if k != "eval_every"}
    cfg = rl_compare.CompareConfig(
        model=str(tiny_policy_dir),
        out=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        steps=2,
        eval_every=2,
        dtype="float32",
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
    again = rl_compare.run(rl_compare.CompareConfig(resume=str(out)), progress=False)
    assert again["results"] == summary["results"]
    assert (out / "runs" / "easy-none-s0" / "summary.json").stat().st_mtime_ns == stamp


def test_grid_sweeps_resume_and_paired_comparisons(tiny_policy_dir, tmp_path, monkeypatch):
    """Two seeds, an LR sweep and SGD on the Hard slice; a run killed mid-grid resumes from
    the runs already finished, and reproduce finds the unfinished grid by itself."""
    shared = {k: v for k, v in TINY_TRAIN.items() if k not in ("eval_every", "levels")}
    cfg = rl_compare.CompareConfig(
        model=str(tiny_policy_dir), out=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"),
        steps=2, eval_every=2, dtype="float32", measure_spread=False, levels=["add1", "mul1"],
        seeds=[0, 1], lrs=[1e-3], sgd_lrs=[0.5], sweep_seeds=1, **shared)
    points = rl_compare.grid(cfg)
    assert len(points) == 2 * 2 * 2 + 2 * 1 + 2 * 1 and len(set(points)) == len(points)
    assert {p.folder(cfg) for p in points if p.optimizer == "sgd"} == {
        "hard-group_std-sgd-lr0.5-s0", "hard-none-sgd-lr0.5-s0"}
    calls = []
    real = rl_compare.rl_train.run

    def flaky(tcfg, progress=True):  # the 5th run is "killed": the session stops there
        calls.append(tcfg.run_dir)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(tcfg, progress=progress)

    monkeypatch.setattr(rl_compare.rl_train, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        rl_compare.run(cfg, progress=False)
    (folder,) = (tmp_path / "runs" / "rl_compare").iterdir()
    assert len(list(folder.glob("runs/*/summary.json"))) == 4
    summary = rl_compare.run(rl_compare.CompareConfig(resume=str(folder)), progress=False)
    assert len(calls) == 4 + len(points) - 4 + 1  # the 4 finished runs were not rerun
    keys = set(summary["points"])
    assert "hard/group_std/sgd/lr0.5" in keys and "hard/none/adamw/lr0.001" in keys
    main = [r for r in summary["comparisons"] if r["what"].startswith("shared LR")]
    assert {r["n"] for r in main} == {2}  # paired over both seeds
    for r in main:
        assert r["low"] <= r["diff"] <= r["high"] or r["low"] != r["low"]  # NaN: no spread
        assert r["verdict"] in ("reproduced", "contradicted", "inconclusive")
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
