"""E6: every normalizer on every difficulty slice with the same seeds (Figure 2 analogue).

Reads top to bottom: (optionally) measure the base model's per-prompt success rates on each
slice and draw their histogram (is there any within-group variance to learn from?) -> train
one run per (slice, normalizer, seed), sequentially, each in its own sub-folder
``runs/<slice>-<normalizer>-s<seed>/`` -> smoothed training sample-accuracy curves (Easy and Hard
panels) -> table of start/end accuracy, held-out accuracy, zero-variance groups and speed.

Resumable: ``resume=DIR`` skips finished sub-runs (those with ``summary.json``) and resumes
interrupted ones from their last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .. import plotting
from ..rl.config import TrainConfig, load_saved_config
from ..rl.policy import load_policy
from ..rl.problems import (
    build_problems,
    difficulty_scores,
    distinct_questions,
    measure_pass_rates,
    pass_rate_cache,
    slice_labels,
)
from ..rl.summary import read_metrics, summary_cells, summary_window
from ..runs import Run, environment, markdown_table
from . import rl_train
from .rows import fmt


@dataclass
class CompareConfig(TrainConfig):
    """E6 settings: the comparison grid; every other field is a ``rl train`` setting shared by
    all runs of the grid (``normalizer``, ``slice``, ``seed`` and ``run_dir`` are set per run)."""

    HIDDEN: ClassVar[tuple[str, ...]] = ("normalizer", "slice", "seed", "run_dir")
    normalizers: list = field(default_factory=lambda: ["group_std", "none"])  # compared
    slices: list = field(default_factory=lambda: ["easy", "hard"])  # difficulty slices (panels)
    seeds: list = field(default_factory=lambda: [0])  # training seeds (same for every run)
    smooth: int = 5  # moving-average window of the accuracy curves (steps)
    measure_spread: bool = True  # measure base per-prompt success rates and plot a histogram
    spread_n: int = 32  # problems per slice for that histogram
    steps: int = 25  # training steps per run
    checkpoint_every: int = 5  # checkpoint every N steps of each run
    resume: str = ""  # compare folder to continue (finished runs are skipped)


def train_config(
    cfg: CompareConfig, normalizer: str, slice_: str, seed: int, run_dir: Path
) -> TrainConfig:
    """The TrainConfig of one sub-run: the shared settings plus this grid point."""
    return TrainConfig(**{**cfg.train_fields(), "normalizer": normalizer, "slice": slice_,
                          "seed": int(seed), "run_dir": str(run_dir), "resume": ""})


def smooth(y, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _spread(cfg: CompareConfig, out: Run, progress: bool) -> dict:
    """Base model per-prompt success counts (of pass_rate_k samples) on each slice."""
    base = train_config(cfg, cfg.normalizers[0], "all", cfg.seeds[0], out.path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool, _ = build_problems(base)
    policy = load_policy(base)
    labels = slice_labels(base, pool, difficulty_scores(base, pool, policy, progress))
    result = {}
    for s in cfg.slices:
        # distinct questions only: one-digit levels repeat questions within the pool
        probs = distinct_questions([p for p in pool if labels[p.id] == s], cfg.spread_n)
        prompts = policy.prompts(probs)
        rates = measure_pass_rates(
            policy.engine,
            prompts,
            probs,
            k=cfg.pass_rate_k,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.data_seed,
            cache_file=pass_rate_cache(base, prompts, probs),
            progress=progress,
        )
        counts = [round(rates[p.id] * cfg.pass_rate_k) for p in probs]
        result[s] = {
            "n": len(probs),
            "per_sample_acc": float(np.mean(counts)) / cfg.pass_rate_k if counts else None,
            "hist": [counts.count(k) for k in range(cfg.pass_rate_k + 1)],
            "frac_zero_variance_groups": float(np.mean([c in (0, cfg.pass_rate_k) for c in counts]))
            if counts
            else None,
        }
    fig, axes = plotting.subplots(1, len(cfg.slices), w=4.2, h=3.2)
    for ax, s in zip(axes[0], cfg.slices, strict=True):
        h = result[s]["hist"]
        ax.bar(range(len(h)), h, color="tab:gray")
        ax.set_xlabel(f"correct of {cfg.pass_rate_k} samples")
        ax.set_ylabel("questions")
        acc = result[s]["per_sample_acc"]
        ax.set_title(f"{s}: {result[s]['n']} questions, {100 * (acc or 0):.0f}% per sample")
    plotting.save(fig, out.file("success_hist.png"))
    return result


def _figure(cfg: CompareConfig, curves: dict, path: Path) -> None:
    fig, axes = plotting.subplots(1, len(cfg.slices), w=4.8, h=3.4)
    for ax, s in zip(axes[0], cfg.slices, strict=True):
        for norm in cfg.normalizers:
            ys = [c for (sl, nm, _), c in curves.items() if sl == s and nm == norm]
            if not ys:
                continue
            n = min(len(y) for y in ys)
            ys = np.array([smooth(y[:n], cfg.smooth) for y in ys])
            plotting.band(ax, np.arange(1, n + 1), ys, label=norm, c=plotting.color(norm))
        ax.set_title(f"{s.capitalize()} (smoothed, window {cfg.smooth})")
        ax.set_xlabel("step")
        ax.set_ylabel("training sample accuracy")
        ax.legend()
    plotting.save(fig, path)


def run(cfg: CompareConfig, progress: bool = True) -> dict:
    """Train the grid (skipping finished runs), then write the figure, table and summary."""
    if not cfg.normalizers or not cfg.slices or not cfg.seeds:
        raise ValueError("normalizers, slices and seeds must each name at least one value")
    bad = [s for s in cfg.slices if s not in ("easy", "hard", "all")]
    if bad:
        raise ValueError(f"slices must be easy, hard or all; got {bad}")
    for norm in cfg.normalizers:  # fail fast, before any training
        train_config(cfg, norm, cfg.slices[0], cfg.seeds[0], Path(".")).validate()
    if cfg.resume:
        path = Path(cfg.resume).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"cannot resume: {path / 'config.json'} not found")
        out = Run(path)
        cfg = load_saved_config(path, CompareConfig)
        cfg.resume = str(path)
    else:
        out = Run.create(cfg.out, "rl_compare", cfg)
    spread = None
    if cfg.measure_spread:
        spread_file = out.file("spread.json")
        if spread_file.is_file():
            spread = json.loads(spread_file.read_text())
        else:
            spread = _spread(cfg, out, progress)
            out.write_json("spread.json", spread)

    results, curves = [], {}
    grid = [(s, n, seed) for s in cfg.slices for n in cfg.normalizers for seed in cfg.seeds]
    for k, (s, norm, seed) in enumerate(grid, 1):
        sub = out.path / "runs" / f"{s}-{norm}-s{seed}"
        if (sub / "summary.json").is_file():
            summary = json.loads((sub / "summary.json").read_text())
        else:
            if progress:
                print(f"[{k}/{len(grid)}] {s} / {norm} / seed {seed}", flush=True)
            tcfg = train_config(cfg, norm, s, seed, sub)
            if (sub / "config.json").is_file():  # interrupted earlier: continue it
                tcfg = TrainConfig(resume=str(sub))
            summary = rl_train.run(tcfg, progress=progress)
        results.append(summary)
        curves[(s, norm, seed)] = [r["acc"] for r in read_metrics(sub)]
        out.write_json("progress.json", {"done": k, "total": len(grid)})

    _figure(cfg, curves, out.file("accuracy.png"))
    rows, table = [], {}
    for s in cfg.slices:
        for norm in cfg.normalizers:
            rs = [r for r in results if r["slice"] == s and r["normalizer"] == norm]
            cs = [curves[(s, norm, seed)] for seed in cfg.seeds]
            n = min(len(c) for c in cs)
            sm = np.mean([smooth(c[:n], cfg.smooth) for c in cs], axis=0)
            ev0 = [r["eval_start"] for r in rs if r.get("eval_start") is not None]
            ev1 = [r["eval_end"] for r in rs if r.get("eval_end") is not None]
            entry = {
                "acc_start": float(np.mean([r["acc_start"] for r in rs])),
                "acc_end": float(np.mean([r["acc_end"] for r in rs])),
                "window": summary_window(rs[0]),
                "smoothed_first": float(sm[0]),
                "smoothed_last": float(sm[-1]),
                "eval_start": float(np.mean(ev0)) if ev0 else None,
                "eval_end": float(np.mean(ev1)) if ev1 else None,
                "frac_zero_variance": float(np.mean([r["frac_zero_variance"] for r in rs])),
                "time_step_s": float(np.mean([r["time_step_s"] for r in rs])),
                "time_generate_s": float(np.mean([r["time_generate_s"] for r in rs])),
                "time_train_s": float(np.mean([r["time_train_s"] for r in rs])),
                "time_forward_s": float(np.mean([r["time_forward_s"] for r in rs])),
                "time_backward_s": float(np.mean([r["time_backward_s"] for r in rs])),
                "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rs])),
                "train_time_s": float(np.mean([r["train_time_s"] for r in rs])),
            }
            table[f"{s}/{norm}"] = entry
            rows.append([s, norm, len(rs), *summary_cells(entry)])
    window = summary_window(results[0])
    header = [
        "slice",
        "normalizer",
        "seeds",
        f"train acc first {window}",
        f"train acc last {window}",
        "eval start",
        "eval end",
        "zero-var groups",
        "s/step (gen / fwd / bwd)",
        "tok/s",
    ]
    text = markdown_table(header, rows)
    if spread:
        text += "\nBase model per-prompt success (before training):\n\n" + markdown_table(
            ["slice", "questions", "per-sample acc", "histogram (0..k correct)", "zero-var groups"],
            [
                [
                    s,
                    v["n"],
                    v["per_sample_acc"],
                    " ".join(map(str, v["hist"])),
                    v["frac_zero_variance_groups"],
                ]
                for s, v in spread.items()
            ],
        )
    out.write_text("table.md", text)
    summary = {
        "run_dir": str(out.path),
        "figures": ["accuracy.png"] + (["success_hist.png"] if spread else []),
        "results": table,
        "spread": spread,
        "environment": environment(),
    }
    out.finish(summary)
    return summary


# ------------------------------------------------------------------------------ report

TITLE = "LLM RLVR: GRPO-Std vs No-Std on Easy/Hard"
#: The paper's Figure 2 (Qwen2.5-Math-1.5B, GSM8K; smoothed training sample accuracy, %).
PAPER = {"easy": {"group_std": 92, "none": 91}, "hard": {"group_std": 81, "none": 76}}
PAPER_LINE = "; ".join(f"{sl.capitalize()} ≈{p['group_std']}% vs {p['none']}%"
                       for sl, p in PAPER.items())
PROFILES = {
    "quick": dict(steps=8, spread_n=16, n_eval=16, eval_every=4, checkpoint_every=4),
    "cpu": dict(seeds=[0, 1]),
    "paper": dict(model="Qwen/Qwen2.5-Math-1.5B", device="cuda", task="gsm8k", slice_by="steps",
                  n_train=0, n_eval=200, max_new_tokens=512, temperature=1.0, lr=1e-5,
                  prompts_per_step=16, steps=500, eval_every=50, checkpoint_every=25,
                  seeds=[0, 1, 2], measure_spread=False),
}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: last-window training accuracy and held-out accuracy per slice."""
    rows = []
    res = s["results"]
    for sl, paper in PAPER.items():
        a, b = res.get(f"{sl}/group_std"), res.get(f"{sl}/none")
        if a is None or b is None:
            continue
        w = a.get("window", "?")
        gap = a["acc_end"] - b["acc_end"]
        verdict = "same direction (Std ahead)" if gap > 0 else f"differs (Std {gap:+.3f})"
        rows.append([f"{sl.capitalize()}: train sample accuracy, last {w} steps, Std vs No-Std",
                     f"≈{paper['group_std']}% vs {paper['none']}%",
                     f"{a['acc_end']:.3f} vs {b['acc_end']:.3f} "
                     f"(first {w} steps: {a['acc_start']:.2f} / {b['acc_start']:.2f})", verdict])
        if a.get("eval_end") is not None and b.get("eval_end") is not None:
            rows.append([f"{sl.capitalize()}: held-out greedy accuracy, start -> end",
                         "(not reported)", f"Std {fmt(a['eval_start'])} -> {fmt(a['eval_end'])}; "
                         f"No-Std {fmt(b['eval_start'])} -> {fmt(b['eval_end'])}", "measured"])
    return rows
