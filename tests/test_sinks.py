"""Tests for grponorm.rl.sinks: metrics reach TensorBoard and W&B (offline) besides the JSONL."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from grponorm.rl.config import TrainConfig  # noqa: E402
from grponorm.rl.sinks import MetricSinks, missing_sinks, scalars  # noqa: E402

RECS = [
    {"kind": "eval", "step": 0, "eval_acc": 0.25, "eval_acc_easy": None},
    {"kind": "train", "step": 1, "acc": 0.5, "loss": 0.125, "problems": ["a", "b"],
     "fisher_trace": [1.0, 2.0], "tokens_per_s": None, "flag": True},
    {"kind": "train", "step": 2, "acc": 0.75, "loss": -0.25, "adv_std": float("nan")},
]


def test_scalars_keep_finite_numbers_by_kind():
    assert scalars(RECS[0]) == {"eval/eval_acc": 0.25}
    assert scalars(RECS[1]) == {"train/acc": 0.5, "train/loss": 0.125}
    assert scalars(RECS[2]) == {"train/acc": 0.75, "train/loss": -0.25}


def test_tensorboard_event_files_hold_every_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = MetricSinks(["tensorboard"], tmp_path)
    for rec in RECS:
        sinks.log(rec)
    sinks.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"eval/eval_acc", "train/acc", "train/loss"}
    assert [(e.step, e.value) for e in acc.Scalars("train/acc")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.125), (2, -0.25)]


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = MetricSinks(["wandb"], tmp_path / "run-1", {"lr": 0.1})
    for rec in RECS:
        sinks.log(rec)
    summary = dict(sinks._wandb.summary)  # what W&B holds for the run (offline: no network)
    sinks.close()
    assert summary["train/acc"] == 0.75 and summary["eval/eval_acc"] == 0.25
    assert summary["train/loss"] == -0.25 and "train/problems" not in summary
    (run,) = (tmp_path / "run-1" / "wandb").glob("offline-run-*")
    assert any(f.stat().st_size > 0 for f in run.glob("*.wandb"))  # the run file, for `wandb sync`
    rid = (tmp_path / "run-1" / "wandb_id.txt").read_text().strip()
    assert run.name.endswith(rid)  # a resumed run continues the same W&B run


def test_unknown_or_missing_sink_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown sink"):
        TrainConfig(report_to=["mlflow"]).validate()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert missing_sinks(["wandb"]) == ["wandb"]
    with pytest.raises(ValueError, match="pip install wandb"):
        TrainConfig(report_to=["wandb"]).validate()
