"""Tests for grponorm.rl.trainer and grponorm.experiments.rl_compare on a tiny local model.

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
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from grponorm.experiments import rl_compare  # noqa: E402
from grponorm.rl import trainer  # noqa: E402
from grponorm.rl.trainer import (  # noqa: E402
    TIMING_FIELDS,
    TrainConfig,
    parse_options,
    read_metrics,
    step_indices,
)

TINY = dict(
    levels=["add1", "mul1"],
    n_train=16,
    n_eval=2,
    G=4,
    prompts_per_step=2,
    max_new_tokens=6,
    temperature=1.0,
    lr=5e-3,
    lora_r=4,
    lora_alpha=8.0,
    threads=1,
    eval_every=3,
)


def _cfg(model_dir, tmp_path, **kw) -> TrainConfig:
    return TrainConfig(
        model=str(model_dir),
        out=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        **{**TINY, **kw},
    )


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# ------------------------------------------------------------------------------ pure parts


def test_parse_options_and_validation():
    assert parse_options("eps=1e-4, ddof=1,flag=true") == {"eps": 1e-4, "ddof": 1, "flag": True}
    assert parse_options("") == {}
    with pytest.raises(ValueError, match="name=value"):
        parse_options("eps")
    TrainConfig().validate()
    for kw, msg in [
        (dict(normalizer="nope"), "unknown normalizer"),
        (dict(normalizer_options="bogus=1"), "bad option"),
        (dict(levels=["add9"]), "unknown arithmetic level"),
        (dict(task="gsm8k"), "slice_by=level"),
        (dict(slice="medium"), "slice"),
        (dict(loss_agg="mean"), "loss_agg"),
        (dict(G=0), "G must be"),
        (dict(temperature=0.0), "temperature"),
        (dict(rollout="hf"), "rollout must be"),
        *([(dict(rollout="vllm"), "pip install vllm")]
          if importlib.util.find_spec("vllm") is None else []),
        (dict(old_logprobs="cached"), "old_logprobs"),
        (dict(attention="flash"), "attention must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw).validate()


def test_step_indices_are_seeded_epochs():
    a = [step_indices(10, s, 4, seed=0) for s in range(1, 6)]  # 20 positions = 2 epochs
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert a == [step_indices(10, s, 4, seed=0) for s in range(1, 6)]
    assert a != [step_indices(10, s, 4, seed=1) for s in range(1, 6)]


def test_slice_labels_by_level_and_steps():
    cfg = TrainConfig(levels=["add1", "ops2"], n_train=4, n_eval=0)
    pool, held = trainer.build_problems(cfg)
    assert len(pool) == 8 and held == []
    by_level = trainer.slice_labels(cfg, pool, None)
    assert [by_level[p.id] for p in pool] == ["easy"] * 4 + ["hard"] * 4
    cfg.slice_by, cfg.easy_max_steps = "steps", 1
    assert trainer.slice_labels(cfg, pool, None) == by_level
    cfg.slice_by = "pass_rate"
    rates = {p.id: (0.75 if i % 2 else 0.25) for i, p in enumerate(pool)}
    lab = trainer.slice_labels(cfg, pool, rates)
    assert [lab[p.id] for p in pool[:2]] == ["hard", "easy"]


def test_gsm8k_data_errors_are_clear(tmp_path):
    bad = tmp_path / "gsm"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"question": "q", "answer": "#### 3"}\n{"question": 1}\n')
    cfg = TrainConfig(task="gsm8k", slice_by="steps", gsm8k_dir=str(bad), n_eval=0)
    with pytest.raises(ValueError, match=r"train\.jsonl:2"):
        trainer.build_problems(cfg)
    cfg.gsm8k_dir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="GSM8K file not found"):
        trainer.build_problems(cfg)


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
        "frac_zero_variance",
        "n_zero_variance",
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


def test_slice_filters_training_problems(tiny_policy_dir, tmp_path):
    cfg = _cfg(tiny_policy_dir, tmp_path, steps=1, slice="hard", eval_every=0, checkpoint_every=0)
    summary = trainer.run(cfg, progress=False)
    (rec,) = read_metrics(summary["run_dir"])
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


# ------------------------------------------------------------------------------ compare


def test_compare_grid_figure_table_and_resume(tiny_policy_dir, tmp_path):
    fields = {f for f in rl_compare.CompareConfig.__dataclass_fields__}
    train_fields = set(TrainConfig.__dataclass_fields__)
    assert fields - set(rl_compare.OWN_FIELDS) <= train_fields
    shared = {k: v for k, v in TINY.items() if k != "eval_every"}
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


def test_arithmetic_eval_questions_are_held_out():
    train, held = trainer.build_problems(trainer.TrainConfig(n_train=120, n_eval=32))
    for lv in ("add1", "mul1"):
        tq = {p.question for p in train if p.meta["level"] == lv}
        hq = [p.question for p in held if p.meta["level"] == lv]
        assert len(hq) == len(set(hq)) == 32  # distinct
        assert not tq & set(hq)  # never trained on
        assert sum(p.meta["level"] == lv for p in train) == 120
    with pytest.raises(ValueError, match="too few distinct questions"):
        trainer.build_problems(trainer.TrainConfig(n_train=10, n_eval=101))


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


def test_pass_rate_slicing_is_measured_once_and_cached(tiny_policy_dir, tmp_path):
    cfg = _cfg(tiny_policy_dir, tmp_path, slice_by="pass_rate", pass_rate_k=2, steps=1,
               eval_every=0, n_train=8)
    s = trainer.run(cfg, progress=False)
    assert sum(s["slice_sizes"].values()) == 16  # 8 per level, each easy or hard
    (cache,) = (tmp_path / "cache" / "pass_rates").glob("*.json")
    rates = json.loads(cache.read_text())["pass_rates"]
    assert len(rates) == 16 + 2 * 2 and all(0.0 <= r <= 1.0 for r in rates.values())
    stamp = cache.stat().st_mtime
    trainer.run(_cfg(tiny_policy_dir, tmp_path, slice_by="pass_rate", pass_rate_k=2, steps=1,
                     eval_every=0, n_train=8), progress=False)
    assert cache.stat().st_mtime == stamp  # the second run read the cache


def test_old_logprobs_come_from_the_rollout_without_an_extra_pass(tiny_policy_dir, tmp_path,
                                                                   monkeypatch):
    """With the decode engine, a multi-update step takes the sampling policy's log-probs from
    the rollout: one forward per update and no no-grad pass; the metrics equal recomputing
    them (float32), and the rollout/training log-prob gap is logged (~0 here)."""
    calls = []
    real = trainer.grouped_token_logprobs

    def counting(*a, **kw):
        calls.append(torch.is_grad_enabled())
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "grouped_token_logprobs", counting)
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
