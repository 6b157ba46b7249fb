"""Whole training steps: grponorm's trainer vs TRL's GRPOTrainer, same prompts and settings.

    python benchmarks/bench_step.py [--model embedded] [--engines decode,generate] [--prompts 4]
        [--G 8] [--max-new-tokens 12] [--steps 6] [--warmup 2] [--dtype bfloat16] [--threads 0]
        [--micro-batch 0] [--no-trl-backend] [--peak-tflops 790] [--out results.json]

Both sides train `--model` (default: the embedded SmolLM2-135M-Instruct, loaded offline from its
GGUF; `random:<shape>` is a seeded random-weight model of a known shape, e.g.
`random:qwen2.5-math-1.5b`, with the embedded tokenizer and EOS off, so every completion has
exactly --max-new-tokens tokens; see grponorm.rl.shapes) with LoRA r=16, alpha=32 on q/k/v/o,
G completions for each of `--prompts` prompts per step (sampling at temperature 0.7, top_p 1,
no top_k), reward 1/0 from `grponorm.rl.rewards.correctness_reward`,
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
tokens/s = completion tokens generated per second of step time. For a `random:` model the
`throughput:` lines also give the model FLOPs of a step (grponorm.rl.shapes.step_flops: 2N per
prompt and generated token for the rollout, 4N + 2N_trainable (+ LoRA's own) per token for the
training pass) and MFU = FLOPs / s/step / --peak-tflops; and the run stops with an error when a
completion ended before --max-new-tokens (EOS off not honoured).

--micro-batch R: grponorm's micro_batch (rows per forward/backward chunk, whole groups) and,
for TRL, per_device_train_batch_size=R with gradient_accumulation_steps = steps_per_generation
= prompts x G / R (one generation and one optimizer step per step either way; 0 = one chunk).

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
from grponorm.rl.models import (  # noqa: E402
    EMBEDDED,
    ModelConfig,
    chat_prompt,
    convert_gguf_to_cache,
    embedded_gguf_path,
    embedded_tokenizer_dir,
    load_model,
)
from grponorm.rl.problems import build_problems, step_indices  # noqa: E402
from grponorm.rl.random_model import random_model_facts  # noqa: E402
from grponorm.rl.rewards import correctness_reward  # noqa: E402
from grponorm.rl.shapes import (  # noqa: E402
    H200_BF16_TFLOPS,
    is_random,
    lora_parameter_count,
    parse_random,
    step_flops,
)
from grponorm.rl.summary import read_metrics  # noqa: E402

LORA_R, LORA_ALPHA, LORA_TARGETS = 16, 32.0, ("q_proj", "k_proj", "v_proj", "o_proj")


def train_config(args, engine: str, run_dir: str = "", backend: str = "native") -> TrainConfig:
    return TrainConfig(
        model=args.model, dtype=args.dtype, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
        lora_targets=LORA_TARGETS, levels=["add1", "mul1"], n_train=args.pool, n_eval=0,
        G=args.G, prompts_per_step=args.prompts, steps=args.warmup + args.steps, lr=args.lr,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=1.0,
        loss_agg="seq_mean", kl_coef=0.0, clip_eps=0.2, updates_per_batch=1, rollout=engine,
        eval_every=0, checkpoint_every=0, threads=args.threads, seed=args.seed, run_dir=run_dir,
        backend=backend, micro_batch=args.micro_batch)


def mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def result(path: str, args, step_s: float, gen_s: float, acc: float, length: float, **extra):
    return {"path": path, "s_per_step": step_s, "samples_per_s": args.prompts * args.G / step_s,
            "gen_s": gen_s, "outside_rollout_share": 1.0 - gen_s / step_s, "acc": acc,
            "completion_len": length, **extra}


def step_problems(args, step: int) -> list:
    """The problems grponorm's trainer draws at ``step`` (1-based): TRL gets the same rows."""
    pool, _ = build_problems(train_config(args, "decode"))
    return [pool[i] for i in step_indices(len(pool), step, args.prompts, args.seed)]


def load_tokenizer(model: str):
    """The tokenizer of ``model`` alone (no weights)."""
    from transformers import AutoTokenizer

    cache = ModelConfig().cache_dir
    if is_random(model):
        folder = embedded_tokenizer_dir(cache)
    elif model == EMBEDDED:  # the converted entry the runs above already made
        folder = convert_gguf_to_cache(embedded_gguf_path(), cache)
    else:
        folder = model
    return AutoTokenizer.from_pretrained(str(folder))


def prompt_tokens_per_step(args) -> float:
    """Mean prompt tokens of a timed step, each prompt counted once (its chat prompt, as the
    engines tokenize it: no special tokens added)."""
    tok = load_tokenizer(args.model)
    counts = []
    for step in range(args.warmup + 1, args.warmup + args.steps + 1):
        texts = [chat_prompt(tok, problem_messages(p)) for p in step_problems(args, step)]
        counts.append(sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]))
    return mean(counts)


def add_throughput(r: dict, args, prompt_tokens: float) -> None:
    """tokens/s for every row; model FLOPs and MFU when the model is a random shape."""
    completion_tokens = r["completion_len"] * args.prompts * args.G
    r["completion_tokens_per_step"] = completion_tokens
    r["tokens_per_s"] = completion_tokens / r["s_per_step"]
    r["prompt_tokens_per_step"] = prompt_tokens
    if not is_random(args.model):
        return
    shape = parse_random(args.model).shape
    n_lora = lora_parameter_count(shape, LORA_R, LORA_TARGETS)
    flops = step_flops(shape.matmul_parameter_count(), round(prompt_tokens),
                       round(completion_tokens), n_lora=n_lora)
    r["flops_per_step"] = flops
    r["mfu"] = flops["total"] / r["s_per_step"] / (args.peak_tflops * 1e12)


def check_fixed_length(results, args) -> None:
    """A random model generates to a fixed length: every path must report exactly
    max_new_tokens per completion, else EOS-off was not honoured somewhere."""
    if not is_random(args.model):
        return
    bad = [f"{r['path']}: {r['completion_len']:.2f}" for r in results
           if abs(r["completion_len"] - args.max_new_tokens) > 1e-6]
    if bad:
        raise SystemExit(f"EOS off not honoured: mean completion length is not "
                         f"{args.max_new_tokens} for " + "; ".join(bad))


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

    model, tok = load_model(ModelConfig(model=args.model, dtype=args.dtype))
    n = args.warmup + args.steps
    rows = [p for s in range(1, n + 1) for p in step_problems(args, s)]
    data = Dataset.from_dict({"prompt": [chat_prompt(tok, problem_messages(p)) for p in rows],
                              "answer": [p.answer for p in rows]})

    rows_per_chunk = args.micro_batch or args.prompts * args.G
    chunks = args.prompts * args.G // rows_per_chunk

    def correctness(completions, answer, **_):
        return [correctness_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    config = GRPOConfig(
        output_dir=str(Path(tmp) / "trl"), use_cpu=model.device.type == "cpu",
        bf16=args.trl_autocast, fp16=False, seed=args.seed, max_steps=n,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=0.0, max_grad_norm=1.0, per_device_train_batch_size=rows_per_chunk,
        gradient_accumulation_steps=chunks, steps_per_generation=chunks, num_iterations=1,
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
    ap.add_argument("--model", default=EMBEDDED,
                    help="embedded, random:<shape>[@seed] (grponorm.rl.shapes), a folder or hub id")
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
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="rows per forward/backward chunk, whole groups (0 = the whole batch)")
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS,
                    help="MFU denominator, TFLOP/s (default: one H200, dense bf16)")
    ap.add_argument("--trl-autocast", action="store_true", help="TRL with bf16=True (autocast)")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL GRPOTrainer row")
    ap.add_argument("--no-trl-backend", action="store_true",
                    help="skip the `grponorm --backend trl` row")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    B = args.prompts * args.G
    if args.micro_batch and (args.micro_batch % args.G or B % args.micro_batch):
        ap.error(f"--micro-batch {args.micro_batch} must be whole groups (a multiple of G="
                 f"{args.G}) dividing prompts x G = {B}")
    if args.model != EMBEDDED:
        ModelConfig(model=args.model)  # a bad random: name fails here, listing the shapes
    hf_logging.disable_progress_bar()  # no "Loading weights" bars
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("torch", "transformers", "trl", "peft", "grponorm")
    versions = {k: version(k) for k in names}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {torch.get_num_threads()} threads")
    facts = random_model_facts(args.model) if is_random(args.model) else None
    model_text = "embedded SmolLM2-135M" if args.model == EMBEDDED else args.model
    if facts:
        model_text += (f" ({facts['parameters'] / 1e9:.3f}B parameters, init seed "
                       f"{facts['init_seed']}, {facts['tokenizer']} tokenizer, EOS {facts['eos']})")
    length = "exactly" if facts else "<="
    print(f"settings: {model_text}, {args.dtype}, LoRA r={LORA_R} alpha={LORA_ALPHA:g} "
          f"q/k/v/o, {args.prompts} prompts x G={args.G}, {length} {args.max_new_tokens} new "
          f"tokens, micro-batch {args.micro_batch or 'none'}, "
          f"T={args.temperature:g} top_p=1, lr {args.lr:g}, clip 0.2, no KL, 1 update/batch, "
          f"{args.steps} timed steps after {args.warmup} warm-up; device "
          f"{'cuda: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_step-") as tmp:
        def measured(fn, *a) -> dict:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            r = fn(*a)
            if torch.cuda.is_available():
                r["max_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            return r

        for engine in filter(None, (e.strip() for e in args.engines.split(","))):
            results.append(measured(bench_grponorm, args, engine, tmp))
        if versions["trl"] == "missing":
            if not (args.no_trl and args.no_trl_backend):
                print("trl is not installed: pip install 'grponorm[bench]' (grponorm rows only)")
        else:
            if not args.no_trl_backend:
                results.append(measured(bench_trl_backend, args, tmp))
            if not args.no_trl:
                results.append(measured(bench_trl, args, tmp))
    if not results:
        raise SystemExit("nothing was measured (no --engines and no TRL row)")
    prompt_tokens = prompt_tokens_per_step(args)
    for r in results:
        add_throughput(r, args, prompt_tokens)
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
    for r in results:
        if r.get("max_gpu_mem_gib") is not None:
            print(f"  {r['path']}: peak GPU memory {r['max_gpu_mem_gib']:.1f} GiB")
        line = (f"throughput: {r['path']}: {r['tokens_per_s']:.4g} tokens/s, step "
                f"{r['s_per_step']:.3f} s, {r['completion_tokens_per_step']:.0f} completion + "
                f"{r['prompt_tokens_per_step']:.0f} prompt tokens/step")
        if "mfu" in r:
            f = r["flops_per_step"]
            line += (f", model FLOPs {f['total']:.3e}/step (rollout {f['rollout']:.3e}, train "
                     f"{f['train']:.3e}), MFU {100 * r['mfu']:.3g}% of {args.peak_tflops:g} "
                     "TFLOP/s")
        else:
            line += ", MFU n/a (FLOPs are counted for random: shapes only)"
        print(line)
    if trl:
        print(f"  TRL: own step_time {trl['trl_step_time_s']:.2f} s (training_step, without clip "
              f"and optimizer step); base {trl['base_dtype']}, LoRA {trl['lora_dtype']}, "
              f"autocast {'on' if trl['autocast'] else 'off'}")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"versions": versions, "threads": torch.get_num_threads(), "settings": vars(args),
             "model": facts, "results": results}, indent=2) + "\n")
    check_fixed_length(results, args)


if __name__ == "__main__":
    main()
