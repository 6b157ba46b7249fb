"""The decode engine's achieved FLOP/s as a fraction of this CPU's peak matmul FLOP/s, one run.

    python benchmarks/bench_decode_flops.py [--repeats 3] [--threads 1] [--png decode_flops.png]
    python benchmarks/bench_decode_flops.py --settings short --dtypes float32 --variants default

Model: the embedded SmolLM2-135M-Instruct, loaded offline as the trainer loads it. Settings:
    short   the trainer's CPU default: 4 arithmetic prompts (add1 + mul1) x G = 8, <= 12 new
            tokens, T = 0.7 (answers end after ~8 tokens, so prefill is a large share)
    long    4 GSM8K train questions x G = 8, <= 64 new tokens, T = 0.7: decoding dominates
            (GSM8K from $GRPONORM_GSM8K_DIR; the setting is skipped when it is not there)
Dtypes: float32, and bfloat16 where the CPU has native bf16 (avx512_bf16 / amx_bf16).
Variants: ``default`` is ``DecodeEngine(model, tok)`` as the trainer builds it; the others switch
on opt-in options of :class:`~grponorm.rl.rollout.decode.DecodeEngine` that change floating-point
results (see its docstring).

FLOP convention (model FLOPs of the work a rollout needs, not what the kernels execute):
    per token run through the model  2 x (weights of every nn.Linear in the decoder layers: q, k,
                                     v, o, gate, up, down; LoRA's too when present)
                                     + 4 x layers x (heads x head_dim) x keys it attends to (its
                                     real, unmasked context, itself included: q.k and p.v)
    LM head                          2 x hidden x vocab (full vocabulary) per position whose
                                     logits are used: the last prompt token of each prompt, and
                                     every decode step of a running row
    prefill                          the tokens the engine runs: the prefix common to all prompts
                                     once (when >= 8 tokens), then each prompt's own tokens
    decode                           a row's completion tokens 2..len (the first comes from the
                                     prefill's logits), len counted up to and including its eos;
                                     rows still in the batch after their eos (dropping lags,
                                     ``compact_at``) and the masked slots of the reserved cache
                                     are waste and not counted
    not counted                      norms, rotary embeddings, softmax, sampling, elementwise ops
A rollout's FLOP/s is those FLOPs over the wall time of ``engine.generate`` (tokenizing and
assembling the batch included); "decode loop" is the decode FLOPs over that time minus the time
spent in :func:`~grponorm.rl.kvcache.prefill` (timed by wrapping it). Each is given twice: over
wall time, and over the process's CPU time (``time.process_time``; with one thread, the time the
process actually ran), which is the fairer number on a machine other jobs load.

Peak: GFLOP/s of ``F.linear`` (best of 5 timings of as many calls as fit ``--budget-ms``, on the
wall clock and, separately, on the process's CPU clock) at each linear shape the model uses in
decode, with ``n_prompts x G`` rows (q/o, k/v, gate/up, down, LM head), and at a 2048 x 2048 x
2048 square; same dtype, same thread count. The peak is the best of these shapes, measured
right before each engine run (peak and engine interleaved, so both see the same machine load);
fraction = achieved / that peak, one per repeat, reported as min-max over repeats; CPU-time
rates are divided by the CPU-clock peak.
"bound" is the decode loop's linear-layer FLOPs (LM head included) timed at each shape's own
measured rate with all ``n_prompts x G`` rows (what the decode loop would take if the model's
matmuls ran at their standalone speed and nothing else cost time): fraction of bound = bound
time / decode-loop time. It can pass 1 only through noise: late steps run fewer rows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time

import torch

from grponorm import hardware
from grponorm.rl import data as rl_data
from grponorm.rl.kvcache import MIN_SHARED_PREFIX, common_prefix_len
from grponorm.rl.models import ModelConfig, chat_prompt, load_model
from grponorm.rl.rollout import decode as decode_module
from grponorm.rl.rollout.base import tokenize_prompts
from grponorm.rl.rollout.decode import DecodeEngine

SQUARE = 2048
#: name -> DecodeEngine keyword arguments (opt-in options change floating-point results)
VARIANTS = {
    "default": {},
}


def cpu_line() -> str:
    """lscpu's "Model name" and the avx512 / bf16 flags."""
    name = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    cpu = hardware.cpu_info()
    avx512 = "avx512f" in cpu.flags
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu.flags]
    return (f"cpu: {name or cpu.model} | avx512f: {'yes' if avx512 else 'no'} | "
            f"native bf16: {', '.join(bf16) or 'none'} | torch {torch.__version__} "
            f"(capability {cpu.capability})")


def span(xs, fmt="{:.2f}") -> str:
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}-{hi}"


def model_shapes(model) -> dict:
    """``{(in, out): count}`` of the decoder's linear layers (per forward token), and the LM
    head's ``(in, out)``."""
    head = model.get_output_embeddings()
    shapes: dict = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            key = (mod.in_features, mod.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes, (head.in_features, head.out_features)


class FlopCounter:
    """Model FLOPs of one rollout (the module docstring's convention)."""

    def __init__(self, model):
        cfg = model.config
        self.shapes, self.head = model_shapes(model)
        self.linear = 2 * sum(k * n * c for (k, n), c in self.shapes.items())  # per token
        self.lm_head = 2 * self.head[0] * self.head[1]  # per position with logits
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        width = cfg.num_attention_heads * head_dim
        self.attn = 4 * cfg.num_hidden_layers * width  # per (query token, key) pair

    def rollout(self, ids, mask, batch) -> dict:
        """``{"prefill", "decode"}`` FLOPs and token counts of one ``generate`` call."""
        n = ids.shape[0]
        lens = mask.long().sum(dim=1)  # (n,) real prompt tokens
        lc = common_prefix_len(ids, mask) if n > 1 else 0
        lc = lc if lc >= MIN_SHARED_PREFIX else 0
        # prefill: prefix (positions 0..lc-1) once, then each prompt's positions lc..len-1;
        # the token at position j attends to j + 1 keys
        tokens = lc + int((lens - lc).sum())
        keys = lc * (lc + 1) // 2 + sum((int(s) * (int(s) + 1) - lc * (lc + 1)) // 2 for s in lens)
        prefill = tokens * self.linear + self.attn * keys + n * self.lm_head
        # decode: row i's completion token t (t = 1..len_i - 1) comes from a forward of the
        # token at position p_i + t - 1, attending to p_i + t keys
        clen = batch.completion_lengths  # (B,)
        p = lens.repeat_interleave(batch.G)  # (B,)
        steps = (clen - 1).clamp(min=0)
        dkeys = int((steps * p + steps * (steps + 1) // 2).sum())
        dtok = int(steps.sum())
        decode = dtok * (self.linear + self.lm_head) + self.attn * dkeys
        return {"prefill": prefill, "decode": decode, "prefill_tokens": tokens,
                "decode_tokens": dtok, "completion_tokens": int(clen.sum()),
                "linear": (tokens + dtok) * self.linear + (n + dtok) * self.lm_head}


def time_linear(dtype, shape, budget_ms: float, timings: int = 5) -> tuple[float, float]:
    """Best ``(wall, cpu)`` ms per call of ``F.linear(x (m, k), w (n, k))``: ``timings`` timings
    of as many calls as fit ``budget_ms`` (the wall and the process-CPU best taken separately)."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    linear = torch.nn.functional.linear
    with torch.no_grad():
        t0 = time.perf_counter()
        linear(x, w)  # warm-up, and a first estimate of the cost
        reps = max(1, min(50, int(budget_ms / max((time.perf_counter() - t0) * 1e3, 1e-3))))
        wall = cpu = float("inf")
        for _ in range(timings):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                linear(x, w)
            wall = min(wall, (time.perf_counter() - t0) * 1e3 / reps)
            cpu = min(cpu, (time.process_time() - c0) * 1e3 / reps)
    return wall, cpu


def measure_peak(dtype, rows: int, counter: FlopCounter, budget_ms: float) -> dict:
    """``{"wall"|"cpu": {shape: GFLOP/s}}`` of each decode-shaped linear (rows x in -> out), the
    LM head and the square."""
    shapes = {f"{k}->{n}": (rows, k, n) for (k, n) in counter.shapes}
    shapes["lm_head"] = (rows, *counter.head)
    shapes["square"] = (SQUARE, SQUARE, SQUARE)
    out: dict = {"wall": {}, "cpu": {}}
    for name, (m, k, n) in shapes.items():
        wall, cpu = time_linear(dtype, (m, k, n), budget_ms)
        out["wall"][name] = 2.0 * m * k * n / wall / 1e6  # GFLOP/s
        out["cpu"][name] = 2.0 * m * k * n / max(cpu, 1e-9) / 1e6
    return out


def bound_seconds(counter: FlopCounter, flops: dict, gflops: dict) -> float:
    """The decode loop's linear-layer FLOPs at each shape's measured rate (the docstring's
    bound)."""
    per_token = sum(2 * k * n * c / (gflops[f"{k}->{n}"] * 1e9)
                    for (k, n), c in counter.shapes.items())
    return flops["decode_tokens"] * (per_token + counter.lm_head / (gflops["lm_head"] * 1e9))


@contextlib.contextmanager
def timed_prefill(log: list):
    """Wrap the decode module's ``prefill`` so each call's wall time lands in ``log``."""
    original = decode_module.prefill

    def wrapper(*a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return original(*a, **kw)
        finally:
            log.append((time.perf_counter() - t0, time.process_time() - c0))

    decode_module.prefill = wrapper
    try:
        yield
    finally:
        decode_module.prefill = original


def settings(names, prompts_n: int, G: int):
    out = {}
    for name in names:
        if name == "short":
            half = max(1, prompts_n // 2)
            probs = (rl_data.arithmetic_level("add1", half, seed=0)
                     + rl_data.arithmetic_level("mul1", prompts_n - half, seed=0))
            out[name] = (probs, 12)
        elif name == "long":
            try:
                probs = rl_data.load_gsm8k("train")[:prompts_n]
            except Exception as e:  # noqa: BLE001 -- no GSM8K here: skip the setting, say why
                print(f"[long setting skipped: {type(e).__name__}: {str(e)[:120]}]")
                continue
            out[name] = (probs, 64)
        else:
            raise ValueError(f"unknown setting {name!r} (short, long)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--settings", default="short,long")
    ap.add_argument("--dtypes", default="auto", help="auto: float32, plus bfloat16 if native")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-ms", type=float, default=20.0, help="per peak timing")
    ap.add_argument("--png", default="decode_flops.png", help="figure path ('' = none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cpu = hardware.cpu_info()
    print(cpu_line())
    print(f"threads: {torch.get_num_threads()} torch thread(s); {os.cpu_count()} logical CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    dtypes = (["float32"] + (["bfloat16"] if cpu.native_bf16 else [])
              if args.dtypes == "auto" else args.dtypes.split(","))
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    sets = settings(args.settings.split(","), args.prompts, args.G)
    models = {d: load_model(ModelConfig(dtype=d)) for d in dtypes}
    counter = FlopCounter(models[dtypes[0]][0])
    print(f"model: embedded SmolLM2-135M-Instruct; per token {counter.linear / 1e6:.1f} MFLOP in "
          f"decoder linears + {counter.lm_head / 1e6:.1f} MFLOP LM head (vocab {counter.head[1]}) "
          f"+ {counter.attn / 1e3:.1f} kFLOP per attended key")
    desc = ", ".join(f"{k} ({args.prompts} prompts x G={args.G}, <= {v[1]} new tokens)"
                     for k, v in sets.items())
    print(f"settings: {desc}, T = 0.7; {args.repeats} repeats; variants: {', '.join(variants)}")

    rows = []  # (dtype, setting, variant, [per-repeat dicts])
    for dtype in dtypes:
        model, tok = models[dtype]
        tdtype = getattr(torch, dtype)
        for sname, (probs, new) in sets.items():
            prompts = [chat_prompt(tok, rl_data.problem_messages(p)) for p in probs]
            ids, mask = tokenize_prompts(tok, prompts, model)
            engines = {v: DecodeEngine(model, tok, **kw) for v, kw in variants.items()}
            for eng in engines.values():  # warm-up (and any one-off setup)
                eng.generate(prompts, args.G, max_new_tokens=new, temperature=0.7,
                             generator_seed=0)
            res = {v: [] for v in engines}
            for r in range(args.repeats):
                for v, eng in engines.items():
                    peak = measure_peak(tdtype, args.prompts * args.G, counter, args.budget_ms)
                    log: list = []
                    with timed_prefill(log):
                        t0, c0 = time.perf_counter(), time.process_time()
                        batch = eng.generate(prompts, args.G, max_new_tokens=new,
                                             temperature=0.7, generator_seed=r + 1)
                        secs = time.perf_counter() - t0
                        cpu_secs = time.process_time() - c0
                    f = counter.rollout(ids, mask, batch)
                    best, cbest = max(peak["wall"].values()), max(peak["cpu"].values())
                    total = f["prefill"] + f["decode"]
                    dsecs = secs - sum(w for w, _ in log)
                    dcpu = cpu_secs - sum(c for _, c in log)
                    res[v].append({
                        "secs": secs, "cpu_secs": cpu_secs, "peak": best, "cpu_peak": cbest,
                        "cpu_frac": total / cpu_secs / 1e9 / cbest,
                        "cpu_decode_frac": f["decode"] / dcpu / 1e9 / cbest,
                        "cpu_gflops": total / cpu_secs / 1e9,
                        "gflops": total / secs / 1e9,
                        "decode_gflops": f["decode"] / dsecs / 1e9,
                        "frac": total / secs / 1e9 / best,
                        "decode_frac": f["decode"] / dsecs / 1e9 / best,
                        "bound_frac": bound_seconds(counter, f, peak["wall"]) / dsecs,
                        "cpu_bound_frac": bound_seconds(counter, f, peak["cpu"]) / dcpu,
                        "tokens": f["completion_tokens"], "flops": total,
                    })
            for v in engines:
                rows.append((dtype, sname, v, res[v]))

    print(f"\nranges are min-max over {args.repeats} repeats; peak = best F.linear GFLOP/s over "
          f"the model's {args.prompts * args.G}-row decode shapes and the {SQUARE}^3 square, "
          "measured before each run")
    hdr = (f"{'dtype':9s} {'setting':7s} {'variant':8s} {'tokens':>6s} {'GFLOP':>6s} "
           f"{'seconds':>11s} {'peak GFLOP/s':>13s} {'rollout GFLOP/s':>16s} {'frac of peak':>13s} "
           f"{'decode GFLOP/s':>15s} {'decode frac':>12s} {'frac of bound':>14s}")
    print(hdr)
    table = []
    for dtype, sname, v, rs in rows:
        def g(k, rs=rs):
            return [x[k] for x in rs]
        table.append(f"{dtype:9s} {sname:7s} {v:8s} {span(g('cpu_secs')):>11s} "
                     f"{span(g('cpu_peak'), '{:.0f}'):>13s} "
                     f"{span(g('cpu_gflops'), '{:.1f}'):>13s} {span(g('cpu_frac')):>13s} "
                     f"{span(g('cpu_decode_frac')):>12s} {span(g('cpu_bound_frac')):>14s} "
                     f"{span([1 / x for x in g('cpu_frac')]):>12s}")
        print(f"{dtype:9s} {sname:7s} {v:8s} {span(g('tokens'), '{:.0f}'):>6s} "
              f"{span([x / 1e9 for x in g('flops')], '{:.0f}'):>6s} {span(g('secs')):>11s} "
              f"{span(g('peak'), '{:.0f}'):>13s} {span(g('gflops'), '{:.1f}'):>16s} "
              f"{span(g('frac')):>13s} {span(g('decode_gflops'), '{:.1f}'):>15s} "
              f"{span(g('decode_frac')):>12s} {span(g('bound_frac')):>14s}")
    print("\nthe same over the process's CPU time (time.process_time: what the other jobs on this "
          "machine do not take away; 1 thread)")
    print(f"{'dtype':9s} {'setting':7s} {'variant':8s} {'cpu seconds':>11s} {'peak (cpu)':>13s} "
          f"{'GFLOP/cpu-s':>13s} "
          f"{'frac of peak':>13s} {'decode frac':>12s} {'frac of bound':>14s} {'x off peak':>12s}")
    print("\n".join(table))
    base = {(d, s): rs for d, s, v, rs in rows if v == "default"}
    for dtype, sname, v, rs in rows:
        if v != "default" and (dtype, sname) in base:
            sp = [b["secs"] / x["secs"] for b, x in zip(base[(dtype, sname)], rs)]
            print(f"  {dtype} {sname}: {v} vs default, same repeat: {span(sp)}x faster")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if args.png:
        plot(rows, args.png, args.threads)


def plot(rows, path: str, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    labels = [f"{dtype}\n{sname}\n{v}" for dtype, sname, v, _ in rows]
    for j, (key, name, color) in enumerate((("frac", "wall clock", "tab:gray"),
                                            ("cpu_frac", "process CPU time", "tab:blue"))):
        mids, los, his = [], [], []
        for *_, rs in rows:
            fr = sorted(x[key] for x in rs)
            mids.append(fr[len(fr) // 2])
            los.append(mids[-1] - fr[0])
            his.append(fr[-1] - mids[-1])
        ax.bar([i + (j - 0.5) * 0.38 for i in range(len(rows))], mids, width=0.38,
               yerr=[los, his], capsize=3, color=color, label=name)
    x = range(len(rows))
    ax.axhline(1 / 1.5, color="tab:red", ls="--", lw=1, label="within 1.5x of peak")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("rollout FLOP/s / peak matmul FLOP/s")
    ax.set_ylim(0, 1)
    ax.set_title(f"DecodeEngine vs peak matmul, {threads} thread(s) (median, min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
