"""bf16 vs fp32 on this machine: matmuls at SmolLM2-135M's shapes and a forward pass of the model.

    python benchmarks/bench_dtype.py [--threads 1] [--repeats 5] [--batch 4] [--seq 32]
    python benchmarks/bench_dtype.py --embedded            # the embedded model, not a random one
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_dtype.py   # bf16 without its native kernels

Measured in one run, on ``--threads`` torch threads:
    matmul     ``F.linear`` (rows x in -> out, weights as nn.Linear stores them) of each projection
               of SmolLM2-135M (hidden 576, 9 heads / 3 kv heads of 64, MLP 1536, vocab 49152) at
               8 rows (a decode step of a rollout batch) and 256 rows (prefill / training), in
               fp32 and bf16: GFLOP/s as min-max over the repeats, and the bf16/fp32 ratio range
    forward    one no-grad forward pass over batch x seq tokens of a random-init model of
               SmolLM2-135M's shape (transformers' LlamaConfig; ``--embedded``: the embedded
               model), forced fp32 vs forced bf16, with the row that dtype="auto" picks marked
The CPU (model, torch capability, native bf16 flags), torch version and the dtype "auto" resolves
to, with its reason, are printed first.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from grponorm import hardware

HIDDEN, HEADS, KV_HEADS, INTER, LAYERS, VOCAB = 576, 9, 3, 1536, 30, 49152
HEAD_DIM = HIDDEN // HEADS
SHAPES = {  # name: (in, out)
    "q/o_proj": (HIDDEN, HIDDEN),
    "k/v_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "gate/up_proj": (HIDDEN, INTER),
    "down_proj": (INTER, HIDDEN),
    "lm_head": (HIDDEN, VOCAB),
}


def smollm2_shaped_model():
    """A random-init LlamaForCausalLM of SmolLM2-135M's shape (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=2048,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
    )
    return LlamaForCausalLM(config).eval()


def span(xs, fmt="{:.0f}") -> str:
    """"lo-hi" of ``xs`` in ``fmt`` (one value when both ends print the same)."""
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}-{hi}"


def bench_matmuls(repeats: int) -> None:
    print(f"\nmatmul F.linear, GFLOP/s min-max over {repeats} repeats")
    print(f"  {'shape':<28} {'fp32':>10} {'bf16':>10} {'bf16/fp32':>12}")
    for rows in (8, 256):
        for name, (k, n) in SHAPES.items():
            if name == "lm_head" and rows == 256:
                continue  # the trainer computes log-probs of completion rows only; skip the big one
            shape = (rows, k, n)
            flop = 2.0 * rows * k * n
            f32, b16 = [], []
            for r in range(repeats):
                f = hardware.time_linear(torch.float32, shape, seed=r)
                b = hardware.time_linear(torch.bfloat16, shape, seed=r)
                f32.append(flop / f / 1e6)
                b16.append(flop / b / 1e6)
            ratios = [b / f for f, b in zip(f32, b16)]
            label = f"{name} {rows}x{k}->{n}"
            print(f"  {label:<28} {span(f32):>10} {span(b16):>10} {span(ratios, '{:.2f}'):>11}x")


def bench_forward(model, batch: int, seq: int, repeats: int, auto: str) -> None:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator()
                        .manual_seed(0))
    print(f"\nforward pass, {batch}x{seq} tokens, seconds min-max over {repeats} repeats")
    times = {}
    for dtype in ("float32", "bfloat16"):
        m = model.to(getattr(torch, dtype))
        with torch.no_grad():
            m(ids)  # warm-up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                m(ids)
                ts.append(time.perf_counter() - t0)
        times[dtype] = ts
    for dtype, ts in times.items():
        tag = "  <- auto" if dtype == auto else ""
        tok_s = [batch * seq / t for t in ts]
        print(f"  forced {dtype:<9} {span(ts, '{:.3f}'):>13} s  {span(tok_s):>8} tokens/s{tag}")
    speed = [f / b for f, b in zip(times["float32"], times["bfloat16"])]
    print(f"  bf16 speedup over fp32: {span(speed, '{:.2f}')}x; auto = {auto}")
    model.to(torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--embedded", action="store_true", help="time the embedded SmolLM2-135M")
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cpu = hardware.cpu_info()
    t0 = time.perf_counter()
    auto, reason = hardware.resolve_dtype("auto", "cpu")
    probe_ms = (time.perf_counter() - t0) * 1e3
    n, why = hardware.resolve_threads(0)
    print(f"cpu: {cpu.model} | torch {torch.__version__} capability {cpu.capability} | "
          f"native bf16 flags: {', '.join(cpu.native_bf16) or 'none'}")
    env = {k: v for k in hardware.KERNEL_ENV if (v := os.environ.get(k))}
    if env:
        print(f"kernel env: {env}")
    print(f"threads: {torch.get_num_threads()} (threads=auto would give {n}: {why})")
    print(f"dtype=auto -> {auto}: {reason}  [{probe_ms:.0f} ms]")

    bench_matmuls(args.repeats)
    if args.skip_forward:
        return
    if args.embedded:
        from grponorm.rl.models import ModelConfig, load_model

        model, _ = load_model(ModelConfig(dtype="float32", device="cpu"))
        label = "embedded SmolLM2-135M-Instruct"
    else:
        model = smollm2_shaped_model()
        label = "random-init model of SmolLM2-135M's shape"
    print(f"\nmodel: {label}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    bench_forward(model, args.batch, args.seq, args.repeats, auto)


if __name__ == "__main__":
    main()
