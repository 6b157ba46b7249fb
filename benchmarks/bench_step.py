"""Whole training steps: grponorm's trainer vs TRL's GRPOTrainer, same prompts and settings.

    python benchmarks/bench_step.py [--engines decode,generate] [--prompts 4] [--G 8]
        [--max-new-tokens 12] [--steps 6] [--warmup 2] [--dtype bfloat16] [--threads 0]
        [--no-trl-backend] [--out results.json]

Both sides train the embedded SmolLM2-135M-Instruct (loaded offline from its GGUF) with LoRA
r=16, alpha=32 on q/k/v/o, G completions for each of `--prompts` prompts per step (sampling at
temperature 0.7, top_p 1, no top_k), reward 1/0 from `grponorm.rl.rewards.correctness_reward`,
group-std advantages, per-sequence mean loss with clip 0.2, no KL (no reference model), AdamW
at a constant lr with one update per batch, grad-norm clip 1.0. The prompt pool is the
trainer's own (first `--pool` problems of add1 and of mul1, data seed 0); the problems of each
step are the ones grponorm's trainer draws at that step, and TRL gets the same rows in the same
order (shuffle_dataset=False), as plain chat-formatted strings (TRL does not template again).
The first `--warmup` steps are untimed; the means are over the next `--steps` steps.
    grponorm (decode)    `trainer.run(rollout="decode")`: the own decode loop
    grponorm (generate)  `trainer.run(rollout="generate")`: transformers' `generate`
    grponorm --backend trl  `rl_train.run(backend="trl")`: the same TrainConfig through
                         `grponorm.integrations.trl_backend` (NormalizedGRPOTrainer, TRL's
                         `generate`), timed by the backend's own records (same window as the
                         TRL row: `on_step_begin` to `on_step_end`, rollout = `_generate`)
    TRL GRPOTrainer      `trl.GRPOTrainer` with transformers' `generate` (no vLLM); a step is
                         timed from `on_step_begin` to `on_step_end` (generation, rewards,
                         loss, backward, clip, optimizer), its rollout by wrapping `_generate`
s/step is the mean wall time of a step, samples/s = prompts x G / s/step, gen s the rollout
part (tokenize, sample, decode), outside = 1 - gen s / s/step. acc is the mean training
accuracy over the timed steps (a sanity check that both sides learn the same task).

dtype: both sides get the same bf16 weights from `load_model` and peft's LoRA adapters in fp32
(peft's default autocast_adapter_dtype=True). TRL is run with bf16=False: no autocast, weights
left as loaded (TRL/transformers do not cast a passed-in model), i.e. the same arithmetic as
grponorm. TRL's own default (bf16=True) would add CPU bf16 autocast, under which the LoRA
matmuls also run in bf16; `--trl-autocast` measures that instead.

Same settings, different work: TRL puts each prompt G times into the batch (grponorm runs a
prompt once per group, in the rollout and in the log-prob pass), sends every position, prompt
included, through the LM head on CPU (its fused head keeps only completion positions on Triton
devices) and also computes token entropies; on CPU grponorm uses its own GQA attention.
Needs `pip install 'grponorm[bench]'` for the TRL row; without trl only grponorm's rows print.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from grponorm.rl import trainer as rl_trainer  # noqa: E402
from grponorm.rl.config import TrainConfig  # noqa: E402
from grponorm.rl.data import problem_messages  # noqa: E402
from grponorm.rl.models import ModelConfig, chat_prompt, load_model  # noqa: E402
from grponorm.rl.problems import build_problems, step_indices  # noqa: E402
from grponorm.rl.rewards import correctness_reward  # noqa: E402
from grponorm.rl.summary import read_metrics  # noqa: E402

LORA_R, LORA_ALPHA, LORA_TARGETS = 16, 32.0, ("q_proj", "k_proj", "v_proj", "o_proj")


def train_config(args, engine: str, run_dir: str = "", backend: str = "native") -> TrainConfig:
    return TrainConfig(
        model="embedded", dtype=args.dtype, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
        lora_targets=LORA_TARGETS, levels=["add1", "mul1"], n_train=args.pool, n_eval=0,
        G=args.G, prompts_per_step=args.prompts, steps=args.warmup + args.steps, lr=args.lr,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=1.0,
        loss_agg="seq_mean", kl_coef=0.0, clip_eps=0.2, updates_per_batch=1, rollout=engine,
        eval_every=0, checkpoint_every=0, threads=args.threads, seed=args.seed, run_dir=run_dir,
        backend=backend)


def mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def result(path: str, args, step_s: float, gen_s: float, acc: float, length: float, **extra):
    return {"path": path, "s_per_step": step_s, "samples_per_s": args.prompts * args.G / step_s,
            "gen_s": gen_s, "outside_rollout_share": 1.0 - gen_s / step_s, "acc": acc,
            "completion_len": length, **extra}


def bench_grponorm(args, engine: str, tmp: str) -> dict:
    run_dir = Path(tmp) / f"grponorm-{engine}"
    rl_trainer.run(train_config(args, engine, str(run_dir)), progress=False)
    recs = read_metrics(run_dir)[args.warmup:]

    def avg(key):
        return mean(r[key] for r in recs)

    return result(f"grponorm ({engine})", args, avg("time_step"), avg("time_generate"),
                  avg("acc"), avg("completion_len_mean"), forward_s=avg("time_forward"),
                  backward_s=avg("time_backward"), other_s=avg("time_other"))


def bench_trl_backend(args, tmp: str) -> dict:
    """`grponorm rl train --backend trl` with the native rows' settings (TRL's generate)."""
    from grponorm.experiments import rl_train

    run_dir = Path(tmp) / "grponorm-trl-backend"
    rl_train.run(train_config(args, "decode", str(run_dir), backend="trl"), progress=False)
    recs = read_metrics(run_dir)[args.warmup:]

    def avg(key):
        return mean(r[key] for r in recs)

    return result("grponorm --backend trl", args, avg("time_step"), avg("time_generate"),
                  avg("acc"), avg("completion_len_mean"), forward_s=avg("time_forward"),
                  backward_s=avg("time_backward"), other_s=avg("time_other"))


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, `on_step_begin` to `on_step_end` (keyed by step)."""

    def __init__(self):
        self.t0, self.seconds = 0.0, {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.t0


def bench_trl(args, tmp: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model(ModelConfig(dtype=args.dtype))
    pool, _ = build_problems(train_config(args, "decode"))
    n = args.warmup + args.steps
    rows = [pool[i] for s in range(1, n + 1)
            for i in step_indices(len(pool), s, args.prompts, args.seed)]
    data = Dataset.from_dict({"prompt": [chat_prompt(tok, problem_messages(p)) for p in rows],
                              "answer": [p.answer for p in rows]})

    def correctness(completions, answer, **_):
        return [correctness_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    config = GRPOConfig(
        output_dir=str(Path(tmp) / "trl"), use_cpu=model.device.type == "cpu",
        bf16=args.trl_autocast, fp16=False, seed=args.seed, max_steps=n,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=0.0, max_grad_norm=1.0, per_device_train_batch_size=args.prompts * args.G,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=args.G, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        shuffle_dataset=False, remove_unused_columns=False, activation_checkpointing=False,
        disable_dropout=True, log_completions=False, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=config, train_dataset=data,
                          processing_class=tok, peft_config=lora, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
    gen_s: dict[int, float] = {}
    inner = trainer._generate

    def timed_generate(prompts):  # the rollout: tokenize, `generate`, decode
        t0 = time.perf_counter()
        out = inner(prompts)
        step = trainer.state.global_step + 1  # the optimizer step this rollout belongs to
        gen_s[step] = gen_s.get(step, 0.0) + time.perf_counter() - t0
        return out

    trainer._generate = timed_generate
    trainer.train()
    timed = range(args.warmup + 1, n + 1)
    logs = {h["step"]: h for h in trainer.state.log_history if "reward" in h}
    params = dict(trainer.model.named_parameters())
    lora_dtype = next(str(p.dtype) for k, p in params.items() if "lora_" in k)
    base_dtype = next(str(p.dtype) for k, p in params.items() if "lora_" not in k)
    return result("TRL GRPOTrainer", args, mean(timer.seconds[s] for s in timed),
                  mean(gen_s.get(s) for s in timed), mean(logs[s]["reward"] for s in timed),
                  mean(logs[s].get("completions/mean_length") for s in timed),
                  trl_step_time_s=mean(logs[s].get("step_time") for s in timed),
                  base_dtype=base_dtype, lora_dtype=lora_dtype, autocast=args.trl_autocast)


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engines", default="decode,generate", help="grponorm rollout engines")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--pool", type=int, default=64, help="problems per level in the pool")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--trl-autocast", action="store_true", help="TRL with bf16=True (autocast)")
    ap.add_argument("--no-trl-backend", action="store_true",
                    help="skip the `grponorm --backend trl` row")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("torch", "transformers", "trl", "peft", "grponorm")
    versions = {k: version(k) for k in names}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {torch.get_num_threads()} threads")
    print(f"settings: embedded SmolLM2-135M, {args.dtype}, LoRA r={LORA_R} alpha={LORA_ALPHA:g} "
          f"q/k/v/o, {args.prompts} prompts x G={args.G}, <= {args.max_new_tokens} new tokens, "
          f"T={args.temperature:g} top_p=1, lr {args.lr:g}, clip 0.2, no KL, 1 update/batch, "
          f"{args.steps} timed steps after {args.warmup} warm-up", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_step-") as tmp:
        for engine in filter(None, (e.strip() for e in args.engines.split(","))):
            results.append(bench_grponorm(args, engine, tmp))
        if versions["trl"] == "missing":
            print("trl is not installed: pip install 'grponorm[bench]' (grponorm rows only)")
        else:
            if not args.no_trl_backend:
                results.append(bench_trl_backend(args, tmp))
            results.append(bench_trl(args, tmp))
    trl = next((r for r in results if r["path"].startswith("TRL")), None)
    print(f"{'path':24s} {'s/step':>7s} {'samples/s':>9s} {'gen s':>6s} {'outside':>7s} "
          f"{'len':>5s} {'acc':>5s} {'vs TRL':>7s}")
    for r in results:
        ratio = f"{r['samples_per_s'] / trl['samples_per_s']:6.2f}x" if trl else "-"
        r["vs_trl"] = r["samples_per_s"] / trl["samples_per_s"] if trl else None
        print(f"{r['path']:24s} {r['s_per_step']:7.2f} {r['samples_per_s']:9.1f} "
              f"{r['gen_s']:6.2f} {r['outside_rollout_share']:7.0%} {r['completion_len']:5.1f} "
              f"{r['acc']:5.2f} {ratio:>7s}")
    for r in results:
        if "forward_s" in r:
            print(f"  {r['path']}: forward {r['forward_s']:.2f} s, backward+optimizer "
                  f"{r['backward_s']:.2f} s, other {r['other_s']:.2f} s")
    if trl:
        print(f"  TRL: own step_time {trl['trl_step_time_s']:.2f} s (training_step, without clip "
              f"and optimizer step); base {trl['base_dtype']}, LoRA {trl['lora_dtype']}, "
              f"autocast {'on' if trl['autocast'] else 'off'}")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"versions": versions, "threads": torch.get_num_threads(), "settings": vars(args),
             "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
