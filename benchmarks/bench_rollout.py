"""Rollout throughput on the CPU default: the trainer's engine vs bare `model.generate`.

    python benchmarks/bench_rollout.py [--prompts 4] [--G 8] [--max-new-tokens 12] [--repeats 3]
    python benchmarks/bench_rollout.py --task gsm8k --prompts 8 --max-new-tokens 64  # long answers

Same prompts (the default task's chat prompts: one-digit addition and multiplication with two
worked examples; or GSM8K train questions from $GRPONORM_GSM8K_DIR), same sampling settings
(temperature 0.7), measured in one run:
    bare generate          each prompt repeated G times, one `model.generate` call
    engine (no sharing)    `HFGenerateEngine(share_prompt=False)`: the same call plus masks/text
    engine (shared prompt) `HFGenerateEngine(share_prompt=True)`: each prompt prefilled once, its
                           KV cache copied to the G samples of its group
    decode ...             `DecodeEngine`, the trainer's default: own decode loop, shared prompt
                           and shared few-shot prefix, grponorm's GQA attention, finished rows
                           dropped, per-token log-probs returned; the rows after it switch one
                           feature off at a time
Completion tokens are counted up to and including the first end-of-sequence token.
"""

from __future__ import annotations

import argparse
import time

import torch

from grponorm.rl import data as rl_data
from grponorm.rl.models import ModelConfig, chat_prompt, load_model
from grponorm.rl.rollout.base import completion_mask_from_eos, eos_token_ids
from grponorm.rl.rollout.decode import DecodeEngine
from grponorm.rl.rollout.generate import HFGenerateEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--task", choices=("arithmetic", "gsm8k"), default="arithmetic")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(ModelConfig(dtype=args.dtype))
    half = max(1, args.prompts // 2)
    if args.task == "gsm8k":
        problems = rl_data.load_gsm8k("train")[: args.prompts]
    else:
        problems = (rl_data.arithmetic_level("add1", half, seed=0)
                    + rl_data.arithmetic_level("mul1", args.prompts - half, seed=0))
    prompts = [chat_prompt(tok, rl_data.problem_messages(p)) for p in problems]
    eos = eos_token_ids(tok, model)

    def bare(seed):
        enc = tok([p for p in prompts for _ in range(args.G)], return_tensors="pt",
                  padding=True, add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=0.7, top_p=1.0, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos)
        return int(completion_mask_from_eos(out[:, enc["input_ids"].shape[1]:], eos).sum())

    def engine(share=True, **decode):
        eng = DecodeEngine(model, tok, **decode) if decode else HFGenerateEngine(
            model, tok, share_prompt=share)

        def go(seed):
            b = eng.generate(prompts, args.G, max_new_tokens=args.max_new_tokens,
                             temperature=0.7, generator_seed=seed)
            return int(b.completion_mask.sum())
        return go

    paths = [("bare generate", bare), ("engine (no sharing)", engine(False)),
             ("engine (shared prompt)", engine(True)),
             ("decode", engine(share_prefix=True)),
             ("decode, no prefix sharing", engine(share_prefix=False)),
             ("decode, model's attention", engine(gqa_attention=False)),
             ("decode, drop rows at every eos", engine(compact_at=0.0)),
             ("decode, no row dropping", engine(drop_finished=False))]
    prompt_len = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    print(f"rollouts: {args.task}, {args.prompts} prompts x G={args.G}, "
          f"<= {args.max_new_tokens} new tokens, "
          f"prompt ~{prompt_len} tokens, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    results = []
    for name, fn in paths:
        fn(0)  # warm-up
        best, tokens = float("inf"), 0
        for r in range(args.repeats):
            t0 = time.perf_counter()
            tokens = fn(r + 1)
            best = min(best, time.perf_counter() - t0)
        results.append((name, tokens, best))
    base = results[0][1] / results[0][2]
    print(f"{'path':26s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'vs bare':>8s}")
    for name, tokens, secs in results:
        print(f"{name:26s} {tokens:7d} {secs:8.2f} {tokens / secs:8.1f} "
              f"{tokens / secs / base:7.2f}x")


if __name__ == "__main__":
    main()
