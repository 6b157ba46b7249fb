"""Wall time of ``grponorm reproduce --profile quick`` with ``dtype="auto"`` against a forced
dtype, measured in one run on this CPU (each arm in a fresh process with its own cache folder,
so the model conversion and the dtype probe count in both).

    python benchmarks/bench_quick.py                    # auto vs forced bf16 vs forced fp32
    python benchmarks/bench_quick.py --only E5 --dtypes auto,bfloat16
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_quick.py --only E5
        # a CPU without native bf16 kernels, emulated on this one

Prints each arm's wall time per experiment and its ratio to the first arm. The experiments that
load a model (E4, E5, E6) get the dtype; E1-E3 and E5b do not use one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_EXPERIMENTS = ("E4", "E5", "E6")
ARM = """
import json, sys
from grponorm.report.reproduce import reproduce
dtype, only, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
over = {e: {"dtype": dtype} for e in {model} if e in only}
reproduce("quick", only, out, progress=False, overrides=over)
"""


def cpu_line() -> str:
    import torch

    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
           if k in os.environ}
    return (f"{name}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"torch {torch.__version__}, {os.cpu_count()} cores" + (f", env {env}" if env else ""))


def run_arm(dtype: str, only: list[str], root: Path) -> dict[str, float]:
    out, cache = root / f"out-{dtype}", root / f"cache-{dtype}"
    env = {**os.environ, "GRPONORM_CACHE": str(cache)}
    code = ARM.replace("{model}", repr(MODEL_EXPERIMENTS))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, dtype, ",".join(only), str(out)], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    times = {"total": total}
    for e in only:
        done = json.loads((out / "reproduce-quick" / e / "done.json").read_text())
        times[e] = float(done["wall_time_s"])
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="E1,E2,E3,E4,E5,E5b,E6")
    ap.add_argument("--dtypes", default="auto,bfloat16,float32")
    args = ap.parse_args()
    only = [x for x in args.only.split(",") if x]
    dtypes = [x for x in args.dtypes.split(",") if x]
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        results = {d: run_arm(d, only, Path(tmp)) for d in dtypes}
    base = results[dtypes[0]]
    print(f"{'dtype':<10}" + "".join(f"{k:>9}" for k in base) + "   (seconds; x = vs "
          f"{dtypes[0]} total)")
    for d, t in results.items():
        print(f"{d:<10}" + "".join(f"{t[k]:>9.1f}" for k in base)
              + f"   {t['total'] / base['total']:.2f}x")


if __name__ == "__main__":
    main()
