"""E2: exact REINFORCE vs GRPO convergence (Theorems 3-4, Appendix E).

Reads top to bottom: orthogonal instance -> for each initialization and step-size setting run
both methods over seeds -> pi* curves with seed bands, steps to mean pi* >= 0.9 / 0.99,
speed-up table, C(n, T) -> optional interference study (Assumption 2 violated) -> summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .. import plotting
from ..bandit.features import initial_logits, orthogonal_features, overlap_features
from ..bandit.simulate import simulate_exact
from ..runs import Run, markdown_table
from .rows import fmt


@dataclass
class ExactConfig:
    """E2 settings."""

    n: int = 100  # questions
    K: int = 10  # candidate outputs per question
    T: int = 400_000  # steps (one uniformly drawn question per step)
    seeds: int = 10  # seeds (question-selection sequences)
    inits: list = field(default_factory=lambda: [None, 1e-3])  # initial pi*; None = uniform
    eta_reinforce: float | None = None  # None: the paper's 1/X_max^2
    eta_grpo: float | None = None  # None: the paper's 1/(2 X_max^2)
    overlaps: list = field(default_factory=lambda: [0.0, 0.1, 0.3])  # interference rhos ([] skips)
    overlap_n: int = 30  # questions in the interference study (dense path)
    overlap_K: int = 5  # candidates in the interference study
    overlap_T: int = 6000  # steps in the interference study
    record_every: int = 200  # stride of the stored pi* curves
    seed: int = 0  # instance seed
    out: str = "runs"  # root folder for run outputs


def _steps_summary(steps: np.ndarray) -> dict:
    ok = steps >= 0
    return {"median": float(np.median(steps[ok])) if ok.all() else None,
            "mean": float(steps[ok].mean()) if ok.any() else None,
            "reached": int(ok.sum()), "of": int(steps.size)}


def run(cfg: ExactConfig, progress: bool = True) -> dict:
    out = Run.create(cfg.out, "bandit_exact", cfg)
    feats = orthogonal_features(cfg.n, cfg.K, seed=cfg.seed, materialize=False)
    a = np.random.default_rng(cfg.seed).integers(0, cfg.K, size=cfg.n)
    etas = {"reinforce": cfg.eta_reinforce or 1.0 / feats.xmax2,
            "grpo": cfg.eta_grpo or 0.5 / feats.xmax2}

    results, rows = {}, []
    jobs = [(init, m) for init in cfg.inits for m in ("reinforce", "grpo")]
    for init, method in tqdm(jobs, desc="E2 exact runs", disable=not progress):
        z0 = initial_logits(cfg.n, cfg.K, a, init)
        res = simulate_exact(feats, a, z0, method=method, eta=etas[method], T=cfg.T,
                             seeds=range(cfg.seeds), record_every=cfg.record_every)
        results[(init, method)] = res
        for s in range(cfg.seeds):
            out.log({"init": init, "method": method, "seed": s, "t": res.t,
                     "mean_pi": res.mean_pi[s]})

    speed = {}
    for init in cfg.inits:
        label = "uniform" if init is None else f"pi0={init:g}"
        speed[label] = {}
        for h in (0.9, 0.99):
            r = _steps_summary(results[(init, "reinforce")].steps_to[h])
            g = _steps_summary(results[(init, "grpo")].steps_to[h])
            ratio = r["median"] / g["median"] if r["median"] and g["median"] else None
            speed[label][str(h)] = {"reinforce": r, "grpo": g, "speedup": ratio}
            rows.append([label, h, r["median"] if r["median"] is not None else
                         f"not reached ({r['reached']}/{r['of']})",
                         g["median"] if g["median"] is not None else
                         f"not reached ({g['reached']}/{g['of']})",
                         f"{ratio:.2f}x" if ratio else "-",
                         float(results[(init, "reinforce")].C.mean()),
                         float(results[(init, "grpo")].C.mean())])
    header = ["init", "target mean π*", "REINFORCE steps (median)", "GRPO steps (median)",
              "speed-up", "C(n,T) REINFORCE", "C(n,T) GRPO"]
    table = (f"n={cfg.n}, K={cfg.K}, T={cfg.T}, {cfg.seeds} seeds, "
             f"eta_reinforce={etas['reinforce']:.4g}, eta_grpo={etas['grpo']:.4g}\n\n"
             + markdown_table(header, rows))

    # Interference: what violating Assumption 2 costs (dense path) ------------------------
    overlap = []
    for rho in tqdm(cfg.overlaps, desc="E2 overlap study", disable=not progress):
        f = overlap_features(cfg.overlap_n, cfg.overlap_K, rho, seed=cfg.seed)
        ao = np.random.default_rng(cfg.seed + 1).integers(0, cfg.overlap_K, size=cfg.overlap_n)
        z0 = np.zeros((cfg.overlap_n, cfg.overlap_K))
        row = {"rho": rho}
        for method in ("reinforce", "grpo"):
            eta = (1.0 if method == "reinforce" else 0.5) / f.xmax2
            res = simulate_exact(f, ao, z0, method=method, eta=eta, T=cfg.overlap_T,
                                 seeds=range(min(cfg.seeds, 3)), path="dense",
                                 theta0=np.zeros(f.X.shape[2]), record_every=cfg.overlap_T)
            row[method] = {"final_mean_pi": float(res.mean_pi[:, -1].mean()),
                           "steps_to_0.9": _steps_summary(res.steps_to[0.9])}
        overlap.append(row)
    if overlap:
        table += "\n\nInterference (x_{i,k}·x_{j,k} = ρ, dense path, "
        table += f"n={cfg.overlap_n}, K={cfg.overlap_K}, T={cfg.overlap_T}):\n\n"
        table += markdown_table(
            ["ρ", "REINFORCE final mean π*", "GRPO final mean π*"],
            [[o["rho"], o["reinforce"]["final_mean_pi"], o["grpo"]["final_mean_pi"]]
             for o in overlap])
    out.write_text("table.md", table)

    # Figure: pi* curves with seed bands, one panel per initialization -------------------
    fig, axes = plotting.subplots(1, len(cfg.inits), w=4.6)
    for ax, init in zip(axes[0], cfg.inits):
        for method in ("reinforce", "grpo"):
            res = results[(init, method)]
            plotting.band(ax, res.t, res.mean_pi, f"{method} (η={etas[method]:.3g})",
                         plotting.color(method))
        ax.axhline(0.9, color="k", lw=0.6, ls=":")
        ax.axhline(0.99, color="k", lw=0.6, ls=":")
        ax.set_xlabel("step")
        ax.set_ylabel("mean π* over questions")
        ax.set_title("uniform init" if init is None else f"initial π* = {init:g}", fontsize=9)
        ax.set_xscale("symlog", linthresh=cfg.n)
        ax.set_xlim(0, cfg.T)
        ax.legend(fontsize=7)
    plotting.save(fig, out.file("exact_convergence.png"))

    summary = {"experiment": "E2", "etas": etas, "speedup": speed,
               "C": {("uniform" if i is None else f"pi0={i:g}"):
                     {m: float(results[(i, m)].C.mean()) for m in ("reinforce", "grpo")}
                     for i in cfg.inits},
               "overlap": overlap, "figures": ["exact_convergence.png"],
               "run_dir": str(out.path)}
    out.finish(summary)
    return summary


# ------------------------------------------------------------------------------ report

TITLE = 'Exact REINFORCE vs GRPO convergence'
PAPER_LINE = 'GRPO provably faster; C(n,T) → 0'
PROFILES = {
    "quick": dict(seeds=5, overlap_T=3000),
    "cpu": {},
    "paper": dict(n=1000, K=50, T=5_000_000, seeds=20),
}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: steps to each target, speed-up, C(n,T)."""
    rows = []
    for init, per in s["speedup"].items():
        for h, d in per.items():
            sp = d["speedup"]
            verdict = ("reproduced (GRPO faster)" if sp and sp > 1 else
                       "differs (GRPO not faster)" if sp else "not reached within T")
            rows.append([f"steps to mean π* ≥ {h}, {init}", "GRPO faster",
                         f"REINFORCE {fmt(d['reinforce']['median'])} / GRPO "
                         f"{fmt(d['grpo']['median'])} = {fmt(sp)}×", verdict])
    for init, c in s["C"].items():
        rows.append([f"C(n,T), {init}", "→ 0 as prompts become easy",
                     f"GRPO {fmt(c['grpo'])}, REINFORCE {fmt(c['reinforce'])}", "measured"])
    return rows
