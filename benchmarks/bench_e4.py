"""E4 embedding throughput: every full chat prompt vs the shared chat prefix run once.

    python benchmarks/bench_e4.py [--prompts 16] [--repeats 3] [--dtypes float32 bfloat16]

The texts are E4's own (``grponorm diag orthogonality`` defaults): the training chat prompts of
the first ``--prompts`` GSM8K train questions ($GRPONORM_GSM8K_DIR), mean-pooled over each
question's tokens at the penultimate layer of the embedded SmolLM2-135M. For each dtype, in one
run and interleaved (so that a busy CPU slows both alike):
    full prompts    ``prompt_embeddings(share_prefix=False)``: every prompt run whole
    shared prefix   ``prompt_embeddings(share_prefix=True)``: the common token prefix (system
                    message, worked example) run once, its KV cache expanded to each batch
Each path is warmed up once, then timed ``--repeats`` times; the table gives prompts/s as
median [min, max] over the repeats, the speed-up as median [min, max] of the per-repeat ratios,
and the largest difference between the two paths' embeddings (absolute, and relative to each
embedding's largest entry).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from grponorm.diagnostics.orthogonality import prompt_embeddings
from grponorm.experiments.diag_orthogonality import OrthogonalityConfig, _texts
from grponorm.rl import data as rl_data
from grponorm.rl.models import ModelConfig, load_model


def cpu_name() -> str:
    """The first processor's model name in /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _range(xs: list[float], fmt: str) -> str:
    return (f"{format(statistics.median(xs), fmt)} "
            f"[{format(min(xs), fmt)}, {format(max(xs), fmt)}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=OrthogonalityConfig.batch_size)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    problems = rl_data.load_gsm8k("train")[: args.prompts]
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    rows = []
    for dtype in args.dtypes:
        model, tok = load_model(ModelConfig(dtype=dtype, device="cpu"))
        texts, spans, _ = _texts(OrthogonalityConfig(), tok, problems)
        kw = dict(spans=spans, add_special_tokens=False, batch_size=args.batch_size,
                  progress=False)

        def embed(share: bool, stats: dict | None = None, kw=kw, model=model, tok=tok,
                  texts=texts):
            return prompt_embeddings(model, tok, texts, share_prefix=share, stats=stats, **kw)

        full_st, shared_st = {}, {}
        ref, got = embed(False, full_st), embed(True, shared_st)  # warm-up, and the comparison
        diff = np.abs(got - ref)  # (N, hidden)
        rel = float((diff.max(1) / np.abs(ref).max(1)).max())
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for share in (False, True):
                t0 = time.perf_counter()
                embed(share)
                rates[share].append(len(texts) / (time.perf_counter() - t0))
        ratios = [b / a for a, b in zip(rates[False], rates[True])]
        lens = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
        rows.append((dtype, statistics.mean(lens), shared_st["shared_prefix_tokens"],
                     full_st["n_tokens"], shared_st["n_tokens"], rates, ratios,
                     float(diff.max()), rel))
        del model
    print(f"{args.prompts} GSM8K chat prompts, batch {args.batch_size}, {args.repeats} repeats; "
          "prompts/s as median [min, max]")
    print(f"{'dtype':9s} {'prompt tok':>10s} {'prefix':>6s} {'tokens run':>13s} "
          f"{'full prompts':>22s} {'shared prefix':>22s} {'speed-up':>20s} "
          f"{'max |diff|':>10s} {'rel':>8s}")
    for dtype, mean_len, lc, tok_full, tok_shared, rates, ratios, dmax, rel in rows:
        print(f"{dtype:9s} {mean_len:10.1f} {lc:6d} {f'{tok_full} -> {tok_shared}':>13s} "
              f"{_range(rates[False], '.2f'):>22s} {_range(rates[True], '.2f'):>22s} "
              f"{_range(ratios, '.2f') + 'x':>20s} {dmax:10.2e} {rel:8.1e}")


if __name__ == "__main__":
    main()
