"""E3: sampled-group normalizers on Easy and Hard synthetic question sets, with an LR sweep.

Reads top to bottom: features (by default questions share directions, cos = rho, so a large
learning rate interferes across questions as it does in a language model) -> Easy (high
initial pi*) and Hard (low initial pi*)
question sets -> for every normalizer x learning rate x set, run the sampled dynamics over
seeds -> pick each normalizer's best learning rate per set -> tables at a shared learning rate
and at the tuned ones (final pi*, spread across seeds, collapsed questions) -> figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .. import plotting
from ..bandit.features import initial_logits, orthogonal_features, overlap_features
from ..bandit.simulate import simulate_sampled
from ..normalizers import available_normalizers
from ..runs import Run, markdown_table

#: Column (and summary key) of the final mean pi* of a (set, normalizer) cell.
FINAL = "final mean π*"


@dataclass
class SampledConfig:
    """E3 settings."""

    n: int = 64  # questions per set
    K: int = 10  # candidate outputs per question
    G: int = 8  # samples per question per step
    T: int = 100  # steps (every question is updated at every step)
    features: str = "overlap"  # "overlap" (cos = rho across questions) or "orthogonal"
    rho: float = 0.3  # overlap between questions' k-th features (features="overlap")
    seeds: int = 4  # seeds per (normalizer, learning rate, set)
    normalizers: list = field(default_factory=available_normalizers)  # which to compare
    lrs: list = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0, 30.0])  # LR grid
    shared_lr: float = 1.0  # the learning rate of the shared-LR comparison (must be in lrs)
    easy_pi0: tuple = (0.3, 0.7)  # Easy: initial pi* uniform in this range
    hard_pi0: tuple = (0.01, 0.08)  # Hard: initial pi* log-uniform in this range
    record_every: int = 5  # stride of the stored curves
    seed: int = 0  # instance seed
    out: str = "runs"  # root folder for run outputs


def question_sets(cfg: SampledConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Easy and Hard sets: (correct indices (n,), initial logits (n, K))."""
    rng = np.random.default_rng(cfg.seed)
    a = rng.integers(0, cfg.K, size=cfg.n)
    easy = rng.uniform(*cfg.easy_pi0, size=cfg.n)
    lo, hi = np.log(cfg.hard_pi0[0]), np.log(cfg.hard_pi0[1])
    hard = np.exp(rng.uniform(lo, hi, size=cfg.n))
    return {"easy": (a, initial_logits(cfg.n, cfg.K, a, easy)),
            "hard": (a, initial_logits(cfg.n, cfg.K, a, hard))}


def run(cfg: SampledConfig, progress: bool = True) -> dict:
    if cfg.shared_lr not in cfg.lrs:
        raise ValueError(f"shared_lr={cfg.shared_lr} must be one of lrs={cfg.lrs}")
    out = Run.create(cfg.out, "bandit_sampled", cfg)
    if cfg.features == "overlap":
        feats = overlap_features(cfg.n, cfg.K, cfg.rho, seed=cfg.seed)
    elif cfg.features == "orthogonal":
        feats = orthogonal_features(cfg.n, cfg.K, seed=cfg.seed, materialize=False)
    else:
        raise ValueError(f"features must be 'overlap' or 'orthogonal', got {cfg.features!r}")
    sets = question_sets(cfg)

    res = {}
    jobs = [(s, m, lr) for s in sets for m in cfg.normalizers for lr in cfg.lrs]
    for set_name, norm, lr in tqdm(jobs, desc="E3 sampled sweep", disable=not progress):
        a, z0 = sets[set_name]
        r = simulate_sampled(feats, a, z0, normalizer=norm, eta=lr, T=cfg.T, G=cfg.G,
                             seeds=range(cfg.seeds), record_every=cfg.record_every)
        res[(set_name, norm, lr)] = r
        out.log({"set": set_name, "normalizer": norm, "lr": lr, "t": r.t,
                 "mean_pi": r.mean_pi.mean(0), "final_mean_pi": r.mean_pi[:, -1],
                 "collapsed": r.collapsed, "zero_var_frac": r.zero_var_frac[:, :-1].mean(0)})

    def score(r):  # final mean pi*, averaged over seeds
        return float(r.mean_pi[:, -1].mean())

    def row_for(set_name, norm, lr):
        r = res[(set_name, norm, lr)]
        fin = r.mean_pi[:, -1]
        return [set_name, norm, lr, float(fin.mean()), float(fin.std()),
                float(r.mean_pi.mean()), float(r.collapsed.mean()),
                float(r.zero_var_frac[:, :-1].mean())]

    tuned = {s: {m: max(cfg.lrs, key=lambda lr, s=s, m=m: score(res[(s, m, lr)]))
                 for m in cfg.normalizers} for s in sets}
    header = ["set", "normalizer", "lr", FINAL, "sd over seeds",
              "mean π* over training", "collapsed questions", "zero-variance groups"]
    shared_rows = [row_for(s, m, cfg.shared_lr) for s in sets for m in cfg.normalizers]
    tuned_rows = [row_for(s, m, tuned[s][m]) for s in sets for m in cfg.normalizers]
    table = (f"{feats.name}, G={cfg.G}, T={cfg.T}, {cfg.seeds} seeds; "
             f"Easy π0 ~ U{cfg.easy_pi0}, Hard π0 ~ logU{cfg.hard_pi0}\n\n"
             f"Shared learning rate ({cfg.shared_lr}):\n\n" + markdown_table(header, shared_rows)
             + "\nEach normalizer at its best learning rate (by final mean π*):\n\n"
             + markdown_table(header, tuned_rows))
    out.write_text("table.md", table)

    # Figures: tuned curves per set, and the LR sweep ------------------------------------
    fig, axes = plotting.subplots(2, 2, w=4.8)
    for col, set_name in enumerate(sets):
        ax = axes[0][col]
        for m in cfg.normalizers:
            r = res[(set_name, m, tuned[set_name][m])]
            plotting.band(ax, r.t, r.mean_pi, f"{m} (lr {tuned[set_name][m]:g})",
                         plotting.color(m))
        ax.set_title(f"{set_name.capitalize()}: each normalizer at its best LR", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("mean π*")
        ax.legend(fontsize=6)
        ax = axes[1][col]
        for m in cfg.normalizers:
            finals = [res[(set_name, m, lr)].mean_pi[:, -1] for lr in cfg.lrs]
            ax.errorbar(cfg.lrs, [f.mean() for f in finals], yerr=[f.std() for f in finals],
                        label=m, color=plotting.color(m), marker="o", ms=3, capsize=2)
        ax.axvline(cfg.shared_lr, color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"mean π* after {cfg.T} steps")
        ax.set_title(f"{set_name.capitalize()}: learning-rate sweep", fontsize=9)
        ax.legend(fontsize=6)
    plotting.save(fig, out.file("sampled_normalizers.png"))

    summary = {
        "experiment": "E3", "tuned_lr": tuned,
        "features": feats.name, "shared_lr": cfg.shared_lr,
        "shared": {f"{r[0]}/{r[1]}": dict(zip(header[2:], r[2:])) for r in shared_rows},
        "tuned": {f"{r[0]}/{r[1]}": dict(zip(header[2:], r[2:])) for r in tuned_rows},
        "figures": ["sampled_normalizers.png"], "run_dir": str(out.path),
    }
    out.finish(summary)
    return summary


# ------------------------------------------------------------------------------ report

TITLE = 'Sampled normalizers on Easy/Hard synthetic tasks'
PAPER_LINE = 'Std helps most on high-variance (Hard) prompts'
PROFILES = {"quick": dict(n=32, seeds=3, T=80), "cpu": {}, "paper": dict(seeds=10, T=300)}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: the Std gap on Easy and Hard at the shared and the tuned LR."""
    def gap(table, split):
        return table[f"{split}/group_std"][FINAL] - table[f"{split}/none"][FINAL]

    rows = []
    for label, table in (("shared LR", s["shared"]), ("tuned LR", s["tuned"])):
        he, ea = gap(table, "hard"), gap(table, "easy")
        verdict = ("reproduced (gain larger on Hard)" if he > ea and he > 0 else
                   f"differs (Hard gap {he:+.3f}, Easy gap {ea:+.3f})")
        rows.append([f"group_std − none, final mean π* ({label})", "Std helps most on Hard",
                     f"Easy {ea:+.3f}, Hard {he:+.3f}", verdict])
    return rows
