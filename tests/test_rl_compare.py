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
    assert sum(summary["spread"]["easy"]["hist"]) == 4
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


def test_smooth():
    assert rl_compare.smooth([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert rl_compare.smooth([1.0], 5).tolist() == [1.0]
