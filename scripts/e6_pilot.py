"""E6 pilot: where the paired variance of Std - No-Std comes from, and which metric to make primary.

    python scripts/e6_pilot.py runs/e6/rl_compare/<stamp> [--seeds 0-7]

For every candidate metric (all read from the same runs, so at the same compute) and slice it
prints the paired difference over seeds, its sd, the 95% half-width, and how much of the
paired variance the sampling noise of the metric alone would explain: the binomial variance of
each arm's mean over its samples (train windows: prompts x G samples per step; held-out eval:
the eval questions, greedy, so only the finite question set), the rest being the training
trajectory and which problems were drawn (both arms of a seed see the same problems in the same
order, so the draw is paired out as far as the arms respond alike). The candidate with the
smallest paired sd is the primary metric; seeds needed for a target half-width follow from it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps


def _runs(folder: Path, seeds: set[int] | None):
    for sub in sorted((folder / "runs").glob("*-s*")):
        if not (sub / "summary.json").is_file():
            continue
        s = json.loads((sub / "summary.json").read_text())
        if seeds is not None and s["seed"] not in seeds:
            continue
        recs = [json.loads(x) for x in (sub / "metrics.jsonl").read_text().splitlines()]
        yield s, recs


def candidates(recs: list[dict], G: int, prompts: int, steps: int) -> dict[str, tuple]:
    """metric -> (value, samples behind it) of one run."""
    train = [r for r in recs if r["kind"] == "train"]
    evals = {r["step"]: r for r in recs if r["kind"] == "eval"}
    out = {}
    for w in (5, 10):
        xs = [r["acc"] for r in train[-w:]]
        out[f"train acc, last {w} steps"] = (float(np.mean(xs)), w * prompts * G)
    end = evals.get(steps)
    if end is not None:
        out["held-out greedy acc, end"] = (end["eval_acc"], end["eval_n"])
    mids = [evals[s]["eval_acc"] for s in sorted(evals) if s > 0]
    if len(mids) >= 2:
        out["held-out greedy acc, mean of evals after step 0"] = (
            float(np.mean(mids)), len(mids) * evals[steps]["eval_n"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seeds", default="", help="e.g. 0-7 (default: all finished)")
    ap.add_argument("--a", default="group_std")
    ap.add_argument("--b", default="none")
    ap.add_argument("--target", default="hard:0.03,easy:0.02", help="half-widths to reach")
    args = ap.parse_args()
    seeds = None
    if args.seeds:
        lo, _, hi = args.seeds.partition("-")
        seeds = set(range(int(lo), int(hi or lo) + 1))
    cfg = json.loads((args.folder / "config.json").read_text())["config"]
    G, prompts, steps = cfg["G"], cfg["prompts_per_step"], cfg["steps"]
    table: dict = {}
    for s, recs in _runs(args.folder, seeds):
        for metric, (v, n) in candidates(recs, G, prompts, steps).items():
            table.setdefault((s["slice"], metric), {}).setdefault(s["seed"], {})[
                s["normalizer"]] = (v, n)
    targets = dict(x.split(":") for x in args.target.split(","))
    print(f"pilot: {args.folder}  (G={G}, {prompts} prompts/step, {steps} steps)")
    print("slice | metric | n | Std - No-Std | paired sd | 95% half-width | sampling share "
          "| seeds for target")
    for (slice_, metric), by_seed in sorted(table.items()):
        pairs = [(d[args.a], d[args.b]) for d in by_seed.values() if args.a in d and args.b in d]
        if len(pairs) < 2:
            continue
        d = np.array([a[0] - b[0] for a, b in pairs])
        sd = float(d.std(ddof=1))
        n = len(d)
        half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        noise = np.mean([a[0] * (1 - a[0]) / a[1] + b[0] * (1 - b[0]) / b[1] for a, b in pairs])
        share = noise / sd**2 if sd > 0 else float("nan")
        target = float(targets.get(slice_, "nan"))
        need = math.ceil((1.96 * sd / target) ** 2) if target == target and sd > 0 else None
        print(f"{slice_} | {metric} | {n} | {d.mean():+.3f} | {sd:.3f} | ±{half:.3f} | "
              f"{min(share, 9.99):.2f} | {need}")


if __name__ == "__main__":
    main()
