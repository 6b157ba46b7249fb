"""Tests for grponorm.rl.checkpoint: a save/load round trip, metric truncation, run folders."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grponorm.rl.checkpoint import (  # noqa: E402
    CHECKPOINT,
    create_run,
    load_checkpoint,
    open_run,
    restore_trainable,
    save_checkpoint,
    truncate_metrics,
)
from grponorm.rl.config import TrainConfig  # noqa: E402


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen: not in the checkpoint
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rngs(tmp_path):
    model, opt = _model_and_optimizer(0)
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global state is what a checkpoint saves)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, model, opt, 7, {"data_position": 28, "ema_acc": 0.5})
    draws = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert not (tmp_path / (CHECKPOINT + ".tmp")).exists()
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == {"step": 7,
                                                                       "file": CHECKPOINT}

    other, opt2 = _model_and_optimizer(99)  # different weights and optimizer state
    state = load_checkpoint(tmp_path, other, opt2)
    assert state["step"] == 7 and state["extra"]["ema_acc"] == 0.5
    for (n, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        if a.requires_grad:
            assert torch.equal(a, b), n
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002


def test_restore_rejects_a_foreign_checkpoint():
    model, _ = _model_and_optimizer(0)
    with pytest.raises(ValueError, match="does not match the model"):
        restore_trainable(model, {"lm_head.weight": torch.zeros(1)})


def test_truncate_metrics_keeps_complete_lines_up_to_the_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s}) for s in (1, 2, 3)]
    f.write_text("\n".join(lines) + '\n{"kind": "train", "st')  # a line cut by a kill
    truncate_metrics(f, 2)
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [1, 2]
    truncate_metrics(f, -1)
    assert f.read_text() == ""


def test_open_run_refuses_to_overwrite_and_resumes_the_saved_config(tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), steps=3)
    run = create_run(cfg)
    assert open_run(cfg) == (cfg, None, False)  # nothing logged yet: a fresh start is fine
    run.log({"kind": "train", "step": 1})
    with pytest.raises(ValueError, match="already holds a run"):
        open_run(cfg)
    saved, again, has_ckpt = open_run(TrainConfig(resume=str(run.path), steps=99))
    assert saved.steps == 3 and again.path == run.path and not has_ckpt
    assert saved.resume == saved.run_dir == str(run.path)
