"""Tests for grponorm.rl.trainer (and its update) on a tiny local model.

The central one kills a training subprocess with SIGKILL after a checkpoint, resumes it, and
checks that its metrics equal an uninterrupted run's (timing fields aside).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import tiny_train_config  # noqa: E402  (tests/conftest.py)
from grponorm.rl import logprobs, session, trainer  # noqa: E402
from grponorm.rl.config import TrainConfig  # noqa: E402
from grponorm.rl.policy import load_policy  # noqa: E402
from grponorm.rl.problems import build_problems  # noqa: E402
from grponorm.rl.summary import TIMING_FIELDS, read_metrics  # noqa: E402
from grponorm.rl.update import train_on_batch  # noqa: E402

_cfg = tiny_train_config


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# ------------------------------------------------------------------------------ training


def test_tiny_run_writes_metrics_checkpoint_summary(tiny_policy_dir, tmp_path):
    cfg = _cfg(
        tiny_policy_dir,
        tmp_path,
        steps=4,
        checkpoint_every=2,
        normalizer="rloo",
        updates_per_batch=2,
        kl_coef=0.1,
        loss_agg="token_sum",
    )
    summary = trainer.run(cfg, progress=False)
    run_dir = Path(summary["run_dir"])
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "table.md",
        "checkpoint.pt",
        "adapter",
    ):
        assert (run_dir / name).exists(), name
    train = read_metrics(run_dir)
    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 3, 4]
    rec = train[0]
    for key in (
        "reward_mean",
        "acc",
        "acc_easy",
        "acc_hard",
        "frac_flat",
        "n_flat",
        "frac_zero_adv",
        "n_zero_adv",
        "adv_mean",
        "adv_std",
        "adv_abs_max",
        "loss",
        "grad_norm",
        "kl",
        "clip_frac",
        "tokens",
        "tokens_per_s",
        "time_generate",
        "time_train",
        "time_other",
        "lr",
        "data_position",
    ):
        assert key in rec, key
    assert any(r["grad_norm"] > 0 for r in train), "the tiny policy should give some signal"
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 4
    assert summary["slice_sizes"] == {"easy": 16, "hard": 16}
    assert "rloo" in (run_dir / "table.md").read_text()


def test_log_line_averages_the_interval():
    recs = [{"step": 9, "reward_mean": 0.5, "acc": 0.5, "loss": 0.1, "frac_flat": 0.5,
             "frac_zero_adv": 0.25, "time_step": 2.0},
            {"step": 10, "reward_mean": 1.0, "acc": 1.0, "loss": -0.1, "frac_flat": 0.0,
             "frac_zero_adv": 0.0, "time_step": 4.0}]
    line = session.log_line(recs, 40, 0.25)
    assert line == ("step 10/40 | reward 0.750 | acc 0.750 | loss +0.0000 | flat 0.25 | "
                    "zero-adv 0.12 | 3.00 s/step | eval 0.250")
    assert "eval" not in session.log_line(recs[:1], 40, None)


def test_normalizer_context_gives_what_the_normalizer_needs():
    from types import SimpleNamespace

    from grponorm.normalizers import normalize

    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # (n=2, G=2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])  # (n * G, C)
    batch = SimpleNamespace(completion_mask=mask)
    problems = [SimpleNamespace(id="p1"), SimpleNamespace(id="p2")]

    def context(normalizer, options=None):
        cfg = TrainConfig(normalizer=normalizer)
        return trainer.normalizer_context(cfg, options or {}, batch, rewards, problems)

    assert context("group_std") is None
    ctx = context("opo")
    assert ctx.given() == ("lengths",) and ctx.lengths.tolist() == [[2, 1], [3, 3]]
    ctx = context("gdpo")
    assert ctx.given() == ("components",) and ctx.components.shape == (2, 2, 1)
    assert torch.equal(ctx.components[..., 0], rewards)
    ctx = context("krpo", {"persist": True})
    assert ctx.given() == ("prompt_ids",) and ctx.prompt_ids == ["p1", "p2"]
    adv = normalize(rewards, "opo", context=context("opo"))  # lengths-weighted baseline 2/3
    torch.testing.assert_close(adv[0], torch.tensor([1 / 3, -2 / 3]))


def test_slice_filters_training_problems(tiny_policy_dir, tmp_path, capsys):
    sinks = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    cfg = _cfg(tiny_policy_dir, tmp_path, steps=3, slice="hard", eval_every=0, checkpoint_every=0,
               log_every=2, report_to=sinks)
    summary = trainer.run(cfg, progress=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split(" |")[0] for x in lines] == ["step 2/3", "step 3/3"]  # every 2, and the end
    if sinks:  # --report-to tensorboard: the same numbers as metrics.jsonl
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(Path(summary["run_dir"]) / "tensorboard"))
        acc.Reload()
        events = acc.Scalars("train/acc")
        recs = read_metrics(summary["run_dir"])
        assert [e.step for e in events] == [r["step"] for r in recs]
        assert [e.value for e in events] == pytest.approx([r["acc"] for r in recs])
    rec = read_metrics(summary["run_dir"])[0]
    assert all(p.startswith("arith/mul1") for p in rec["problems"])
    assert rec["acc_easy"] is None and summary["slice_sizes"] == {"easy": 0, "hard": 16}


def test_missing_model_gives_a_clean_cli_error(tmp_path):
    from grponorm import cli

    with pytest.raises(FileNotFoundError, match="model path not found"):
        trainer.run(TrainConfig(model=str(tmp_path / "nope"), out=str(tmp_path)), False)
    rc = cli.main(
        ["rl", "train", "--model", str(tmp_path / "nope"), "--out", str(tmp_path), "--no-progress"]
    )
    assert rc == 2
    assert not (tmp_path / "rl_train").exists()  # no empty run folder left behind


def _cli(cfg_args: list[str], env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "grponorm.cli", "rl", "train", *cfg_args, "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_and_resume_give_identical_metrics(tiny_policy_dir, tmp_path):
    steps, every = 24, 3
    args = [
        "--model",
        str(tiny_policy_dir),
        "--levels",
        "add1,mul1",
        "--n-train",
        "16",
        "--n-eval",
        "2",
        "--G",
        "4",
        "--prompts-per-step",
        "2",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
        "--lr",
        "5e-3",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--threads",
        "1",
        "--eval-every",
        "4",
        "--steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = _cli([*args, "--run-dir", str(full_dir)], env)
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out

    victim = _cli([*args, "--run-dir", str(cut_dir)], env)
    info = cut_dir / "checkpoint.json"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if info.exists() and json.loads(info.read_text())["step"] >= 2 * every:
            break
        time.sleep(0.002)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed_at = json.loads(info.read_text())["step"]
    assert killed_at < steps and not (cut_dir / "summary.json").exists()

    resumed = _cli(["--resume", str(cut_dir)], env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    a = read_metrics(full_dir, kind=None)
    b = read_metrics(cut_dir, kind=None)
    assert [r["step"] for r in b if r["kind"] == "train"] == list(range(1, steps + 1))
    assert _deterministic(b) == _deterministic(a)
    assert any(r["grad_norm"] > 0 for r in a if r["kind"] == "train" and r["step"] > killed_at)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full_dir, cut_dir))
    assert sa["acc_end"] == sb["acc_end"] and sa["eval_end"] == sb["eval_end"]


def test_resume_of_unknown_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        trainer.run(TrainConfig(resume=str(tmp_path)), progress=False)


def test_device_resolution():
    import torch

    from grponorm.rl.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_old_logprobs_come_from_the_rollout_without_an_extra_pass(tiny_policy_dir, tmp_path,
                                                                   monkeypatch):
    """With the decode engine, a multi-update step takes the sampling policy's log-probs from
    the rollout: one forward per update and no no-grad pass; the metrics equal recomputing
    them (float32), and the rollout/training log-prob gap is logged (~0 here)."""
    calls = []
    real = logprobs.grouped_token_logprobs

    def counting(*a, **kw):
        calls.append(torch.is_grad_enabled())
        return real(*a, **kw)

    monkeypatch.setattr(logprobs, "grouped_token_logprobs", counting)
    recs = {}
    for mode in ("auto", "recompute"):
        calls.clear()
        cfg = _cfg(tiny_policy_dir, tmp_path / mode, steps=2, updates_per_batch=2,
                   old_logprobs=mode, eval_every=0, dtype="float32")
        trainer.run(cfg, progress=False)
        recs[mode] = read_metrics(next((tmp_path / mode / "runs" / "rl_train").iterdir()))
        no_grad = calls.count(False)
        assert no_grad == (0 if mode == "auto" else 2), calls  # one no-grad pass per step
        assert calls.count(True) == 2 * 2  # two updates per step, one chunk each
    for a, b in zip(recs["auto"], recs["recompute"], strict=True):
        assert a["logprob_gap"] < 1e-4 and a["logprob_gap_max"] < 1e-3
        for k in ("loss", "grad_norm", "clip_frac", "reward_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6), k
    cfg = _cfg(tiny_policy_dir, tmp_path / "gen", steps=1, updates_per_batch=2,
               old_logprobs="rollout", rollout="generate", eval_every=0)
    with pytest.raises(ValueError, match="engine that returns log-probs"):
        trainer.run(cfg, progress=False)


def test_micro_batches_give_the_gradient_of_one_batch(tiny_policy_dir, tmp_path):
    """``micro_batch`` chunks of whole groups, each loss weighted by its share of the rows (here
    8 + 4 rows): the accumulated gradient and the loss equal the whole batch's."""
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, dtype="float32")
    policy = load_policy(cfg)
    torch.manual_seed(0)
    model = policy.attach_lora()
    problems = build_problems(cfg)[0][:3]
    batch = policy.engine.generate(policy.prompts(problems), cfg.G, max_new_tokens=6,
                                   temperature=1.0, top_p=1.0, generator_seed=0)
    adv = torch.randn(3 * cfg.G, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads, stats = {}, {}
    for mb in (0, 4, 8):
        opt = torch.optim.SGD(params, lr=0.0)  # weights stay put: the same point each time
        stats[mb] = train_on_batch(model, opt, batch, adv, replace(cfg, micro_batch=mb), None)
        grads[mb] = torch.cat([p.grad.flatten() for p in params])
    assert grads[0].abs().sum() > 0
    for mb in (4, 8):
        torch.testing.assert_close(grads[mb], grads[0], rtol=1e-4, atol=1e-7)
        assert stats[mb]["loss"] == pytest.approx(stats[0]["loss"], rel=1e-5, abs=1e-8)



@pytest.mark.parametrize("normalizer,options", [("krpo", "persist=true"), ("running_std", "")])
def test_stateful_normalizer_resumes_bit_exact(normalizer, options, tiny_policy_dir, tmp_path,
                                               monkeypatch):
    """A stateful normalizer killed after step 3 of 6 (checkpoint at 3) and resumed: its state
    comes back from the checkpoint, so the metrics equal an uninterrupted run's (timing aside).
    Without the saved state the advantages of steps 4-6 would differ."""
    import torch

    # 4 training problems, 2 per step: KRPO's per-prompt filters see their prompts again
    kw = dict(normalizer=normalizer, normalizer_options=options, steps=6, checkpoint_every=3,
              eval_every=3, n_train=2)
    full = trainer.run(tiny_train_config(tiny_policy_dir, tmp_path / "a", **kw), False)

    real = trainer.train_step

    def dying(loop, step):
        if step == 4:
            raise KeyboardInterrupt
        return real(loop, step)

    run_dir = tmp_path / "b" / "run"
    cfg = tiny_train_config(tiny_policy_dir, tmp_path / "b", run_dir=str(run_dir), **kw)
    monkeypatch.setattr(trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(cfg, False)
    monkeypatch.setattr(trainer, "train_step", real)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["extra"]["normalizer_state"]  # the state was saved
    trainer.run(TrainConfig(resume=str(run_dir)), False)

    def untimed(recs):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs]

    a, b = read_metrics(full["run_dir"], None), read_metrics(run_dir, None)
    assert [r["step"] for r in b if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert untimed(a) == untimed(b)
    assert any(r["adv_abs_max"] > 0 for r in a if r["kind"] == "train")  # it trained on signal
