"""Tests for grponorm.rl.summary: the averaging window is recorded and drives the labels."""

from __future__ import annotations

import json
import math

import pytest

from grponorm.rl.summary import (
    SUMMARY_WINDOW,
    read_metrics,
    read_summary,
    summarize,
    summary_table,
    summary_window,
    upgrade_fields,
)


class _Cfg:
    normalizer, slice, seed = "group_std", "hard", 0


def _write(run_dir, accs, evals=(0.25, 0.5)):
    lines = [{"kind": "eval", "step": 0, "eval_acc": evals[0]}]
    for i, a in enumerate(accs, 1):
        lines.append({"kind": "train", "step": i, "acc": a, "tokens": 10.0, "time_generate": 0.5,
                      "time_train": 1.0, "time_forward": 0.4, "time_backward": 0.6,
                      "time_other": 0.1, "time_step": 1.6, "frac_zero_variance": 0.5,
                      "completion_len_mean": 5.0})
    lines.append({"kind": "eval", "step": len(accs), "eval_acc": evals[1]})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize("steps, window", [(20, 5), (10, 5), (8, 4), (3, 1), (1, 1)])
def test_window_is_five_steps_or_half_a_short_run(tmp_path, steps, window):
    accs = [i / steps for i in range(steps)]
    _write(tmp_path, accs)
    s = summarize(tmp_path, _Cfg())
    assert s["window"] == window == summary_window(s)
    assert s["acc_start"] == pytest.approx(sum(accs[:window]) / window)
    assert s["acc_end"] == pytest.approx(sum(accs[-window:]) / window)
    assert (s["eval_start"], s["eval_end"]) == (0.25, 0.5)
    assert s["tokens_per_s"] == pytest.approx(20.0)
    table = summary_table(s)
    assert f"train acc first {window}" in table and f"train acc last {window}" in table


def test_window_of_a_summary_written_before_it_was_recorded():
    assert summary_window({"steps": 8}) == 4
    assert summary_window({"steps": 40}) == SUMMARY_WINDOW


def test_read_metrics_by_kind(tmp_path):
    _write(tmp_path, [0.0, 1.0])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert [r["kind"] for r in read_metrics(tmp_path, None)] == ["eval", "train", "train", "eval"]


def test_legacy_zero_variance_fields_are_read_as_flat(tmp_path):
    """Runs recorded before the rename hold ``n_zero_variance`` / ``frac_zero_variance`` (the
    flat groups): read_metrics, summarize, read_summary and the table read them as frac_flat."""
    _write(tmp_path, [0.0, 1.0])  # legacy records: frac_zero_variance 0.5
    recs = read_metrics(tmp_path)
    assert all(r["frac_flat"] == 0.5 and "frac_zero_variance" not in r for r in recs)
    assert list(recs[0])[9:12] == ["time_step", "frac_flat", "completion_len_mean"]  # in place
    s = summarize(tmp_path, _Cfg())
    assert s["frac_flat"] == 0.5 and math.isnan(s["frac_zero_adv"])  # never recorded then
    old = {**s, "frac_zero_variance": 0.25}
    del old["frac_flat"], old["frac_zero_adv"]
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert read_summary(tmp_path)["frac_flat"] == 0.25
    assert "| 0.25 |" in summary_table(old) and "flat groups" in summary_table(old)
    assert upgrade_fields({"n_zero_variance": 1, "frac_zero_variance": 0.5}) == {
        "n_flat": 1, "frac_flat": 0.5}
    new = {"frac_flat": 0.1, "frac_zero_variance": 0.9}  # today's name wins where both exist
    assert upgrade_fields(new) is new


def test_new_records_summarize_both_counts(tmp_path):
    lines = [{"kind": "train", "step": i, "acc": 0.5, "tokens": 1.0, "time_generate": 1.0,
              "frac_flat": f, "frac_zero_adv": z, "n_flat": 1, "n_zero_adv": 0}
             for i, (f, z) in enumerate([(0.5, 0.25), (0.25, 0.0)], 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = summarize(tmp_path, _Cfg())
    assert (s["frac_flat"], s["frac_zero_adv"]) == (0.375, 0.125)
    assert read_metrics(tmp_path)[0] == lines[0]
