"""``grponorm rl train --backend trl``: TRL's real GRPOTrainer on the tiny policy (CPU, offline).

Checks that a TRL run writes the native backend's files and record schema (the differences
listed), trains on the native trainer's prompts in the native step order, refuses what TRL
cannot honour, resumes from TRL's checkpoints, and that summaries and ``rl compare`` read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from conftest import TINY_TRAIN, tiny_train_config  # noqa: E402
from grponorm import cli  # noqa: E402
from grponorm.experiments import rl_compare, rl_train  # noqa: E402
from grponorm.integrations import trl_backend  # noqa: E402
from grponorm.rl.summary import TIMING_FIELDS, read_metrics, summarize  # noqa: E402


def _flags(model_dir: Path, tmp_path: Path, **kw) -> list[str]:
    """CLI flags of ``tiny_train_config`` (plus ``kw``)."""
    settings = {**TINY_TRAIN, "cache_dir": str(tmp_path / "cache"), **kw}
    out = ["--model", str(model_dir)]
    for key, value in settings.items():
        if isinstance(value, list):
            value = ",".join(value)
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


@pytest.fixture(scope="module")
def two_runs(tiny_policy_dir, tmp_path_factory):
    """The same 2-step config run by both backends through the CLI: (native dir, trl dir)."""
    tmp = tmp_path_factory.mktemp("backends")
    dirs = {}
    for backend in ("native", "trl"):
        run_dir = tmp / backend
        argv = ["rl", "train", "--backend", backend, "--run-dir", str(run_dir), "--no-progress",
                *_flags(tiny_policy_dir, tmp, steps=2, eval_every=1)]
        assert cli.main(argv) == 0
        dirs[backend] = run_dir
    return dirs["native"], dirs["trl"]


def test_trl_backend_writes_the_native_schema(two_runs):
    native, trl = two_runs
    for name in ("config.json", "metrics.jsonl", "summary.json", "table.md", "adapter"):
        assert (trl / name).exists(), name
    assert json.loads((trl / "config.json").read_text())["config"]["backend"] == "trl"
    a, b = read_metrics(native), read_metrics(trl)
    assert [r["step"] for r in b] == [1, 2]
    native_keys, trl_keys = set(a[0]), set(b[0])
    # the documented differences are the measured ones, and nothing else differs
    assert native_keys - trl_keys == set(trl_backend.NATIVE_ONLY_FIELDS)
    assert trl_keys - native_keys == set(trl_backend.TRL_ONLY_FIELDS)
    shared = [k for k in a[0] if k in trl_keys]
    assert [k for k in b[0] if k in native_keys] == shared  # same key order
    for rec in b:
        for key in ("reward_mean", "acc", "loss", "grad_norm", "tokens", "lr", "time_step",
                    "time_generate", "time_train", "time_forward", "time_backward"):
            assert isinstance(rec[key], float), key
        assert rec["lr"] == pytest.approx(TINY_TRAIN["lr"])  # constant schedule
        assert rec["kl"] == 0.0 and 0 <= rec["acc"] <= 1
        assert rec["completion_len_mean"] <= TINY_TRAIN["max_new_tokens"]
        assert rec["time_step"] >= rec["time_generate"]
    evals = read_metrics(trl, "eval")
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert set(evals[0]) == set(read_metrics(native, "eval")[0])


def test_trl_backend_sees_the_native_prompts_per_step(two_runs):
    native, trl = two_runs
    a, b = read_metrics(native), read_metrics(trl)
    assert [r["problems"] for r in a] == [r["problems"] for r in b]
    assert [r["data_position"] for r in a] == [r["data_position"] for r in b]
    # greedy eval of the same initial policy (same LoRA init) on the same held-out prompts
    assert read_metrics(native, "eval")[0]["eval_acc"] == read_metrics(trl, "eval")[0]["eval_acc"]


def test_summary_reads_a_trl_run(two_runs, tiny_policy_dir, tmp_path):
    _, trl = two_runs
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", steps=2)
    s = summarize(trl, cfg)
    assert s["steps"] == 2 and s["window"] == 1
    assert s["eval_start"] is not None and s["eval_end"] is not None
    assert s["time_step_s"] > 0 and s["tokens_per_s"] > 0
    saved = json.loads((trl / "summary.json").read_text())
    assert saved["backend"] == "trl" and saved["steps"] == 2


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"share_prefix": False}, "share_prefix=False"),
        ({"share_prompt": False}, "share_prompt=False"),
        ({"attention": "gqa"}, "attention='gqa'"),
        ({"old_logprobs": "rollout"}, "old_logprobs='rollout'"),
        ({"diagnostics": "fisher"}, "diagnostics='fisher'"),
        ({"micro_batch": 12, "G": 4, "prompts_per_step": 4}, "micro_batch=12"),
    ],
)
def test_unsupported_settings_are_refused(override, field, tiny_policy_dir, tmp_path):
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", **override)
    with pytest.raises(ValueError, match="backend=trl cannot run") as err:
        rl_train.run(cfg, progress=False)
    assert field in str(err.value)
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def test_refusal_lists_every_field_at_once(tiny_policy_dir, tmp_path):
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", share_prefix=False,
                            attention="gqa", diagnostics="fisher")
    with pytest.raises(ValueError) as err:
        trl_backend.check_supported(cfg)
    for text in ("share_prefix=False", "attention='gqa'", "diagnostics='fisher'"):
        assert text in str(err.value)
    ok = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", attention="model",
                           old_logprobs="recompute", rollout="generate")
    trl_backend.check_supported(ok)  # TRL's own behaviour: accepted


def test_grpo_config_maps_the_fields(tiny_policy_dir, tmp_path):
    from trl import GRPOConfig

    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", G=4, prompts_per_step=4,
                            micro_batch=8, steps=5, updates_per_batch=2, loss_agg="token_sum",
                            kl_coef=0.1, clip_eps=0.0, max_grad_norm=0.5, top_p=0.9,
                            checkpoint_every=2, report_to=["tensorboard"], seed=3)
    kw = trl_backend.grpo_config(cfg, str(tmp_path / "trl"), num_processes=1, use_cpu=True)
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (8, 2)
    assert kw["num_generations"] == 4 and kw["num_iterations"] == 2
    assert kw["max_steps"] == 10 and kw["save_steps"] == 4
    assert kw["loss_type"] == "dr_grpo" and kw["beta"] == 0.1 and kw["epsilon"] >= 1e9
    assert kw["max_grad_norm"] == 0.5 and kw["top_p"] == 0.9 and kw["seed"] == 3
    assert kw["learning_rate"] == cfg.lr and kw["lr_scheduler_type"] == "constant"
    assert kw["max_completion_length"] == cfg.max_new_tokens and kw["shuffle_dataset"] is False
    assert kw["report_to"] == ["tensorboard"] and kw["use_vllm"] is False
    args = GRPOConfig(**{**kw, "report_to": "none"})  # TRL accepts the mapping
    assert args.generation_batch_size == 16 and args.steps_per_generation == 2
    two = trl_backend.grpo_config(cfg, "", num_processes=2, use_cpu=True)
    assert (two["per_device_train_batch_size"], two["gradient_accumulation_steps"]) == (8, 1)
    seq = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl")
    assert trl_backend.grpo_config(seq, "", use_cpu=True)["loss_type"] == "grpo"


def test_rl_compare_reads_trl_runs(tiny_policy_dir, tmp_path):
    cfg = rl_compare.CompareConfig(
        model=str(tiny_policy_dir), out=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
        backend="trl", steps=1, seeds=[0], measure_spread=False, checkpoint_every=0,
        **{k: v for k, v in TINY_TRAIN.items() if k != "eval_every"}, eval_every=1)
    summary = rl_compare.run(cfg, progress=False)
    assert set(summary["results"]) == {"easy/group_std", "easy/none", "hard/group_std",
                                       "hard/none"}
    rows = rl_compare.report_rows(summary)
    assert rows and all(len(r) == 4 for r in rows)
    sub = Path(summary["run_dir"]) / "runs" / "easy-none-s0"
    assert json.loads((sub / "summary.json").read_text())["backend"] == "trl"


def test_resume_from_trl_checkpoint(tiny_policy_dir, tmp_path, monkeypatch):
    """Killed at step 4 (checkpoint at 2): the resumed run redoes 3-4 as if never killed."""
    kw = dict(backend="trl", steps=4, checkpoint_every=2, eval_every=2)
    full = rl_train.run(tiny_train_config(tiny_policy_dir, tmp_path / "a", **kw), False)

    calls = {"n": 0}
    reward = trl_backend.correctness

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return reward(*args, **kwargs)

    run_dir = tmp_path / "b" / "run"
    cfg = tiny_train_config(tiny_policy_dir, tmp_path / "b", run_dir=str(run_dir), **kw)
    monkeypatch.setattr(trl_backend, "correctness", dying)
    with pytest.raises(KeyboardInterrupt):
        rl_train.run(cfg, False)
    monkeypatch.setattr(trl_backend, "correctness", reward)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    assert (run_dir / "trl" / "checkpoint-2").is_dir()
    resumed = rl_train.run(rl_train.TrainConfig(resume=str(run_dir)), False)
    a, b = read_metrics(full["run_dir"], None), read_metrics(run_dir, None)
    assert [(r["kind"], r["step"]) for r in b] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4),
        ("eval", 4)]

    def untimed(r):
        return {k: v for k, v in r.items() if k not in TIMING_FIELDS}

    # TRL restores weights, optimizer, RNG states and the data position: on CPU the resumed
    # run's records equal the uninterrupted run's, timings aside
    assert [untimed(r) for r in a] == [untimed(r) for r in b]
    assert resumed["steps"] == 4 and resumed["backend"] == "trl"


def test_several_updates_and_micro_batches_give_one_record_per_batch(tiny_policy_dir, tmp_path):
    """updates_per_batch=2 (TRL's num_iterations) and micro_batch=4 (2 accumulated chunks)."""
    from grponorm.rl.problems import build_problems, step_indices

    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", steps=2, eval_every=0,
                            updates_per_batch=2, micro_batch=4, checkpoint_every=0)
    summary = rl_train.run(cfg, False)
    recs = read_metrics(summary["run_dir"])
    assert [r["step"] for r in recs] == [1, 2]
    pool, _ = build_problems(cfg)  # slice "all": the pool as the trainer sees it
    for r in recs:
        assert r["problems"] == [pool[i].id for i in step_indices(len(pool), r["step"], 2, 0)]
        assert 0.0 <= r["clip_frac"] <= 1.0 and r["grad_norm"] >= 0.0
    trl_state = json.loads(next((Path(summary["run_dir"]) / "trl").glob(
        "checkpoint-*/trainer_state.json")).read_text())
    assert trl_state["global_step"] == 4  # 2 sampled batches x 2 updates


def test_every_train_config_field_has_a_trl_mapping():
    """A field added to TrainConfig without a TRL_MAPPING entry fails here (and is refused by
    check_supported at run time, below)."""
    import dataclasses

    from grponorm.rl.config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(set(names) - set(trl_backend.TRL_MAPPING)) == []
    assert sorted(set(trl_backend.TRL_MAPPING) - set(names)) == []  # no stale entries


def test_a_field_without_a_mapping_is_refused(tiny_policy_dir, tmp_path, monkeypatch):
    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl")
    table = dict(trl_backend.TRL_MAPPING)
    del table["optimizer"]
    monkeypatch.setattr(trl_backend, "TRL_MAPPING", table)
    with pytest.raises(ValueError, match="optimizer='adamw': no TRL mapping declared"):
        trl_backend.check_supported(cfg)


@pytest.mark.parametrize(("optimizer", "cls", "optim"), [
    ("sgd", "SGD", "sgd"), ("adamw", "AdamW", "adamw_torch")])
def test_trl_trains_with_the_configured_optimizer(optimizer, cls, optim, tiny_policy_dir,
                                                  tmp_path):
    """TRL's saved arguments name the optimizer, and the optimizer state TRL saved is that
    optimizer's (SGD keeps momentum/nesterov settings, AdamW its betas)."""
    import torch

    cfg = tiny_train_config(tiny_policy_dir, tmp_path, backend="trl", steps=1, eval_every=0,
                            optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 1e-3)
    summary = rl_train.run(cfg, False)
    ckpt = next((Path(summary["run_dir"]) / "trl").glob("checkpoint-*"))
    args = torch.load(ckpt / "training_args.bin", weights_only=False)
    assert args.optim == optim
    groups = torch.load(ckpt / "optimizer.pt", weights_only=False)["param_groups"]
    assert ("nesterov" in groups[0]) == (cls == "SGD")
    assert ("betas" in groups[0]) == (cls == "AdamW")
    if cls == "SGD":
        assert groups[0]["momentum"] == 0 and groups[0]["lr"] == pytest.approx(0.1)
