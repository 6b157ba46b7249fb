"""E2: exact REINFORCE vs GRPO convergence (Theorems 3-4, Appendix E).

Reads top to bottom: orthogonal instance -> for each initialization and step-size setting run
both methods over seeds -> pi* curves with 95% CI bands, steps to mean pi* >= 0.9 / 0.99 per
seed, speed-up over seeds, C(n, T) -> optional interference study (Assumption 2 violated) ->
summary.

Speed-up. Seed s draws the same question sequence for both methods (`selection_sequence`), so
the per-seed steps are paired: the speed-up is the geometric mean of REINFORCE/GRPO over seeds
with its t-interval on the log scale (`grponorm.stats.ratio_compare`), expected > 1. A seed that
never reaches the target within T is censored: it counts as T + 1 steps, a lower bound. Censored
REINFORCE seeds make the speed-up a lower bound (a "reproduced" stands); censored GRPO seeds
make it an upper bound, so a "reproduced" becomes inconclusive (and symmetrically for
"contradicted").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .. import plotting
from ..bandit.features import initial_logits, orthogonal_features, overlap_features
from ..bandit.simulate import simulate_exact
from ..runs import Run, markdown_table
from ..stats import ratio_compare
from .rows import fmt, ratio_entry


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
            "reached": int(ok.sum()), "of": int(steps.size), "per_seed": steps.tolist()}


def censored_steps(steps: np.ndarray, T: int) -> np.ndarray:
    """Per-seed steps (S,) as positive floats: never reached (-1) -> T + 1, 0 -> 1."""
    return np.where(steps < 0, T + 1, np.maximum(steps, 1)).astype(np.float64)


def speedup(reinforce: np.ndarray, grpo: np.ndarray, T: int) -> dict:
    """Paired geometric-mean speed-up REINFORCE/GRPO over seeds, censoring handled (docstring).

    Args:
        reinforce, grpo: (S,) first step with mean pi* >= target per seed, -1 if never.
    """
    r, g = censored_steps(reinforce, T), censored_steps(grpo, T)
    rc_, gc_ = int(np.sum(reinforce < 0)), int(np.sum(grpo < 0))
    S = int(r.size)
    if rc_ == S and gc_ == S:
        return {"speedup": None, "low": None, "high": None, "n": S, "censored": [rc_, gc_],
                "gm": [None, None], "text": f"neither reached within T={T}",
                "verdict": "inconclusive (not reached within T)"}
    e = ratio_entry(ratio_compare(r, g, paired=True), +1)
    e["speedup"] = e.pop("ratio")
    v = e["verdict"]
    if gc_ and v == "reproduced":
        v = f"inconclusive (GRPO censored in {gc_}/{S} seeds: the speed-up is an upper bound)"
    elif rc_ and v == "contradicted":
        v = (f"inconclusive (REINFORCE censored in {rc_}/{S} seeds: the speed-up is a lower "
             "bound)")
    elif rc_ and not gc_:
        v += f" (REINFORCE censored in {rc_}/{S} seeds at T: a lower bound)"
    elif rc_ or gc_:
        v += f" (censored at T: REINFORCE {rc_}/{S}, GRPO {gc_}/{S} seeds)"
    gm = [float(np.exp(np.log(x).mean())) for x in (r, g)]
    return {**e, "verdict": v, "censored": [rc_, gc_], "gm": gm}


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
            rs, gs = (results[(init, m)].steps_to[h] for m in ("reinforce", "grpo"))
            r, g = _steps_summary(rs), _steps_summary(gs)
            sp = speedup(rs, gs, cfg.T)
            speed[label][str(h)] = {"reinforce": r, "grpo": g, **sp}
            rows.append([label, h, r["median"] if r["median"] is not None else
                         f"not reached ({r['reached']}/{r['of']})",
                         g["median"] if g["median"] is not None else
                         f"not reached ({g['reached']}/{g['of']})",
                         sp["text"], sp["verdict"],
                         float(results[(init, "reinforce")].C.mean()),
                         float(results[(init, "grpo")].C.mean())])
    header = ["init", "target mean π*", "REINFORCE steps (median)", "GRPO steps (median)",
              "speed-up (geometric mean, 95% CI)", "verdict", "C(n,T) REINFORCE",
              "C(n,T) GRPO"]
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
                          plotting.color(method), lo_hi="ci")
        ax.axhline(0.9, color="k", lw=0.6, ls=":")
        ax.axhline(0.99, color="k", lw=0.6, ls=":")
        ax.set_xlabel("step")
        ax.set_ylabel(f"mean π* over questions (95% CI, {cfg.seeds} seeds)")
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
    """Paper-vs-ours rows: steps to each target and the speed-up over seeds, C(n,T)."""
    rows = []
    for init, per in s["speedup"].items():
        for h, d in per.items():
            if d.get("gm") is None:  # a summary from before per-seed speed-ups
                continue
            r, g = d["gm"]
            rc_, gc_ = d["censored"]
            steps = (f"REINFORCE {'≥' if rc_ else ''}{r:,.0f} / GRPO {'≥' if gc_ else ''}"
                     f"{g:,.0f} steps (geometric means) = speed-up {d['text']}" if r
                     else d["text"])
            rows.append([f"steps to mean π* ≥ {h}, {init}", "GRPO faster (> 1×)", steps,
                         d["verdict"]])
    for init, c in s["C"].items():
        rows.append([f"C(n,T), {init}", "→ 0 as prompts become easy",
                     f"GRPO {fmt(c['grpo'])}, REINFORCE {fmt(c['reinforce'])}", "measured"])
    return rows
