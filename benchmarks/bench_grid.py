"""Grid throughput: runs per hour and peak memory of `rl compare` with --workers 1 and 2.

    python benchmarks/bench_grid.py [--workers 1,2] [--seeds 0] [--steps 2] [--model embedded]

The same small grid (slices easy,hard x normalizers group_std,none x --seeds; no spread
measurement; G=2, 1 prompt per step, 4 new tokens, 8 training problems per level, no eval,
float32, one thread per run) is trained once per --workers value, each in a fresh process, in
one invocation of this script:
    runs/hour   grid runs / wall time of the whole `rl compare` (process start, model loads,
                worker start-up and training included)
    peak RSS    the largest sum of resident memory over the grid process and its workers,
                sampled every 0.1 s (psutil), and the largest single process (ru_maxrss of the
                finished children)
The machine is named (CPU model, cores, load average at the start): on a shared machine the
numbers move with the other users' load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = dict(slices=["easy", "hard"], normalizers=["group_std", "none"], measure_spread=False,
            G=2, prompts_per_step=1, max_new_tokens=4, n_train=8, n_eval=0, eval_every=0,
            checkpoint_every=0, dtype="float32", threads=1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def inner(settings: dict) -> None:
    """One grid, in this (fresh) process."""
    from grponorm.experiments import rl_compare

    rl_compare.run(rl_compare.CompareConfig(**settings), progress=False)


def measure(settings: dict) -> dict:
    """Run one grid in a child process; wall time and peak RSS of it and its workers."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--inner", json.dumps(settings)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    top, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [top, *top.children(recursive=True)]:
                rss += p.memory_info().rss
        except psutil.Error:  # a process ended while being read
            pass
        peak = max(peak, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"grid failed (exit {proc.returncode}):\n{err[-3000:]}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB, max over children
    return {"wall_s": wall, "peak_rss_gb": peak / 2**30,
            "largest_process_gb": max(largest, before) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (4 runs per seed)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per run")
    ap.add_argument("--model", default="embedded", help="model of every run")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--inner", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(json.loads(args.inner))
    seeds = [int(s) for s in args.seeds.split(",")]
    n_runs = 4 * len(seeds)
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, load average "
          f"{os.getloadavg()[0]:.2f}; grid: {n_runs} runs x {args.steps} steps of {args.model}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in (int(x) for x in args.workers.split(",")):
            settings = {**GRID, "model": args.model, "seeds": seeds, "steps": args.steps,
                        "workers": w, "out": str(Path(tmp) / f"w{w}")}
            m = measure(settings)
            rows.append({"workers": w, "runs": n_runs, **m,
                         "runs_per_hour": n_runs / m["wall_s"] * 3600})
            print(f"--workers {w}: {m['wall_s']:.1f} s, {rows[-1]['runs_per_hour']:.0f} runs/h, "
                  f"peak RSS {m['peak_rss_gb']:.2f} GB (largest process "
                  f"{m['largest_process_gb']:.2f} GB)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
