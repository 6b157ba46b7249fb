"""E3: sampled-group normalizers on Easy and Hard synthetic question sets, with an LR sweep.

Reads top to bottom: features (by default questions share directions, cos = rho, so a large
learning rate interferes across questions as it does in a language model) -> Easy (high
initial pi*) and Hard (low initial pi*) question sets -> for every optimizer (SGD, Adam) x
normalizer x learning rate x set, run the sampled dynamics over seeds -> each normalizer's
cross-fitted best learning rate -> Std - No-Std over seeds with intervals and verdicts
(``grponorm.stats``) at the shared and the tuned learning rate -> tables -> figures.

Pairing. Seed s draws its samples from ``default_rng([s, 1])`` whatever the normalizer, learning
rate, optimizer or question set, and every step draws the same count of uniforms (n x G), so runs
of one seed share their random numbers (common random numbers): differences are paired by seed.

Tuned learning rate without the winner's curse. Picking each normalizer's best LR by the same
seeds' final pi* and reporting that final pi* biases the tuned result upwards (more so for a
noisier arm). Instead the seeds are split by index parity into two folds; a seed's tuned LR is
the one with the best mean final pi* over the *other* fold, and its value is that LR's final
pi* on the seed itself (2-fold cross-fitting). No value selected its own LR, and every seed
still counts. With one seed there is no other fold: its LR is picked in-sample (said so).

Optimizer study. The theory assumes SGD with one global step; LLMs train with Adam, which
rescales every coordinate of the update itself. ``optimizers=["sgd", "adam"]`` runs the whole
sweep with Adam on theta too (its own LR grid ``adam_lrs``); the rows ask whether Std's benefit
survives Adam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import plotting
from ..bandit.features import (
    initial_logits,
    orthogonal_features,
    overlap_features,
    theta_for_logits,
)
from ..bandit.sampled import simulate_sampled
from ..bandit.simulate import bandit_normalizers
from ..runs import Run, markdown_table
from ..stats import compare
from ..stats.crossfit import crossfit
from .bandit_sampled_ranked import (
    CURVE_NORMALIZERS,
    FINAL,
    MAX_LINES,
    OPT_NAMES,
    ranked_figure,
)
from .robust import rliable_rows
from .rows import entry

#: Column (and summary key) of the final mean pi* of a (set, normalizer) cell.


@dataclass
class SampledConfig:
    """E3 settings."""

    n: int = 64  # questions per set
    K: int = 10  # candidate outputs per question
    G: int = 8  # samples per question per step
    T: int = 100  # steps (every question is updated at every step)
    features: str = "overlap"  # "overlap" (cos = rho across questions) or "orthogonal"
    rho: float = 0.3  # overlap between questions' k-th features (features="overlap")
    seeds: int = 4  # seeds per (optimizer, normalizer, learning rate, set)
    normalizers: list = field(default_factory=bandit_normalizers)  # which (default: all it can run)
    lrs: list = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])  # SGD grid
    shared_lr: float = 1.0  # the SGD learning rate of the shared-LR comparison (in lrs)
    optimizers: list = field(default_factory=lambda: ["sgd"])  # "sgd" and/or "adam"
    adam_lrs: list = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])  # Adam LR grid
    adam_shared_lr: float = 0.1  # the Adam learning rate of the shared-LR comparison
    adam_betas: tuple = (0.9, 0.999)  # Adam's (beta1, beta2)
    adam_eps: float = 1e-8  # Adam's epsilon
    effect: float = 0.05  # Std gap to resolve when inconclusive (paper's Hard gap, 81% vs 76%)
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


def lr_grid(cfg: SampledConfig, optimizer: str) -> tuple[list, float]:
    """(learning-rate grid, shared learning rate) of one optimizer."""
    if optimizer == "sgd":
        return list(cfg.lrs), cfg.shared_lr
    if optimizer == "adam":
        return list(cfg.adam_lrs), cfg.adam_shared_lr
    raise ValueError(f"optimizers must be 'sgd' or 'adam', got {optimizer!r}")


#: The mechanism (docs/theory.md Lemma 2): (a, b, question) pairs of oracle normalizers, each
#: compared paired by seed on every set.
MECHANISM = (
    ("oracle_std", "group_std", "the exact std vs its G-sample estimate: does matching the "
     "curvature without sampling noise help?"),
    ("oracle_std", "none", "the exact std vs no scale"),
    ("oracle_curvature", "oracle_std", "curvature power 1 (Newton-like) vs 1/2 (Std)"),
    ("oracle_hessian", "oracle_std", "the exact Hessian norm vs the Bernoulli std"),
)


def _mechanism_entries(per_seed: dict, sets: dict, effect: float) -> dict:
    """Paired rows of :data:`MECHANISM` (those whose normalizers ran): ``"a − b"`` -> set ->
    entry (interval, n, and a direction verdict: positive / negative / no clear difference at
    ``effect``; no paper claim is read into these rows).

    Args:
        per_seed: normalizer -> set -> (S,) per-seed final mean pi* (one optimizer, one mode).
    """
    out = {}
    for a, b, what in MECHANISM:
        if a in per_seed and b in per_seed:
            out[f"{a} − {b}"] = {"question": what, **{
                s: entry(compare(per_seed[a][s], per_seed[b][s]), None, effect) for s in sets}}
    return out


def _gap_entries(std: dict, none: dict, effect: float) -> dict:
    """Std - No-Std on each set and the difference of differences, paired by seed.

    Args:
        std, none: set -> (S,) per-seed final mean pi* of group_std and of none.
    """
    hard_gap, easy_gap = std["hard"] - none["hard"], std["easy"] - none["easy"]  # (S,)
    return {
        "hard": entry(compare(std["hard"], none["hard"]), +1, effect),
        "easy": entry(compare(std["easy"], none["easy"]), None, effect),
        "hard-easy": entry(compare(hard_gap, easy_gap), +1, effect),
    }


def run(cfg: SampledConfig, progress: bool = True) -> dict:
    grids = {opt: lr_grid(cfg, opt) for opt in cfg.optimizers}
    for opt, (lrs, shared) in grids.items():
        if shared not in lrs:
            key = "shared_lr" if opt == "sgd" else "adam_shared_lr"
            raise ValueError(f"{key}={shared} must be one of its grid {lrs}")
    out = Run.create(cfg.out, "bandit_sampled", cfg)
    if cfg.features == "overlap":
        feats = overlap_features(cfg.n, cfg.K, cfg.rho, seed=cfg.seed)
    elif cfg.features == "orthogonal":
        feats = orthogonal_features(cfg.n, cfg.K, seed=cfg.seed, materialize=False)
    else:
        raise ValueError(f"features must be 'overlap' or 'orthogonal', got {cfg.features!r}")
    sets = question_sets(cfg)
    # One least-squares theta0 per set for the dense path (the simulator would solve per run).
    theta0 = {s: None if feats.X is None else theta_for_logits(feats, z0)
              for s, (_, z0) in sets.items()}
    pair = [m for m in ("group_std", "none") if m in cfg.normalizers]

    res = {}  # (opt, set, normalizer, lr) -> SampledRun
    jobs = [(o, s, m, lr) for o in cfg.optimizers for s in sets for m in cfg.normalizers
            for lr in grids[o][0]]
    for opt, set_name, norm, lr in tqdm(jobs, desc="E3 sampled sweep", disable=not progress):
        a, z0 = sets[set_name]
        r = simulate_sampled(feats, a, z0, normalizer=norm, eta=lr, T=cfg.T, G=cfg.G,
                             seeds=range(cfg.seeds), record_every=cfg.record_every,
                             theta0=theta0[set_name], optimizer=opt,
                             adam_betas=tuple(cfg.adam_betas), adam_eps=cfg.adam_eps)
        res[(opt, set_name, norm, lr)] = r
        out.log({"optimizer": opt, "set": set_name, "normalizer": norm, "lr": lr, "t": r.t,
                 "mean_pi": r.mean_pi.mean(0), "final_mean_pi": r.mean_pi[:, -1],
                 "collapsed": r.collapsed, "zero_var_frac": r.zero_var_frac[:, :-1].mean(0)})

    def finals(opt, s, m):  # lr -> (S,) final mean pi*
        return {lr: res[(opt, s, m, lr)].mean_pi[:, -1] for lr in grids[opt][0]}

    tuned = {o: {s: {m: crossfit(finals(o, s, m)) for m in cfg.normalizers} for s in sets}
             for o in cfg.optimizers}
    per_seed = {"shared": {}, "tuned": {}}  # mode -> opt -> normalizer -> set -> (S,)
    for o in cfg.optimizers:
        per_seed["shared"][o] = {m: {s: res[(o, s, m, grids[o][1])].mean_pi[:, -1]
                                     for s in sets} for m in cfg.normalizers}
        per_seed["tuned"][o] = {m: {s: tuned[o][s][m][1] for s in sets}
                                for m in cfg.normalizers}
    comparisons, gap_by_lr = {}, {}
    if len(pair) == 2:
        for o in cfg.optimizers:
            comparisons[o] = {mode: _gap_entries(per_seed[mode][o]["group_std"],
                                                 per_seed[mode][o]["none"], cfg.effect)
                              for mode in ("shared", "tuned")}
            gap_by_lr[o] = {s: {lr: entry(compare(res[(o, s, "group_std", lr)].mean_pi[:, -1],
                                                  res[(o, s, "none", lr)].mean_pi[:, -1]),
                                          +1, cfg.effect)
                                for lr in grids[o][0]} for s in sets}

    mechanism = {o: {mode: _mechanism_entries(per_seed[mode][o], sets, cfg.effect)
                     for mode in ("shared", "tuned")} for o in cfg.optimizers}
    # rliable's IQM and probability of improvement beside the paired means (secondary)
    robust = {o: {mode: rliable_rows({s: (per_seed[mode][o]["group_std"][s],
                                          per_seed[mode][o]["none"][s]) for s in sets},
                                     ("group_std", "none"), f"final mean π*, {mode} LR")
                  for mode in ("shared", "tuned")}
              for o in cfg.optimizers} if len(pair) == 2 else {}
    table, shared_rows, tuned_rows = _tables(cfg, feats.name, sets, grids, res, tuned,
                                             comparisons)
    out.write_text("table.md", table)
    figs = _figures(cfg, out, sets, grids, res, tuned, gap_by_lr, comparisons)

    header = ["lr", FINAL, "95% CI ±", "sd over seeds", "mean π* over training",
              "collapsed questions", "zero-variance groups"]
    summary = {
        "experiment": "E3", "features": feats.name, "seeds": cfg.seeds,
        "optimizers": list(cfg.optimizers),
        "shared_lr": {o: grids[o][1] for o in cfg.optimizers},
        "tuned_lr": {o: {s: {m: tuned[o][s][m][0] for m in cfg.normalizers} for s in sets}
                     for o in cfg.optimizers},
        "shared": {o: {f"{r[0]}/{r[1]}": dict(zip(header, r[2:])) for r in shared_rows[o]}
                   for o in cfg.optimizers},
        "tuned": {o: {f"{r[0]}/{r[1]}": dict(zip(header, r[2:])) for r in tuned_rows[o]}
                  for o in cfg.optimizers},
        "per_seed": {f"{o}/{s}/{m}/{lr}": res[(o, s, m, lr)].mean_pi[:, -1]
                     for (o, s, m, lr) in res},
        "comparisons": comparisons, "gap_by_lr": gap_by_lr, "rliable": robust,
        "mechanism": mechanism,
        "figures": figs, "run_dir": str(out.path),
    }
    ranked_figure(summary, out.file(RANKED))
    summary["figures"] = [RANKED, *figs]
    out.finish(summary)
    return summary


# ------------------------------------------------------------------------------ tables


def _row(set_name, norm, lr_cell, runs):
    """One table row; ``runs[i]`` is the run (at seed i's learning rate) whose row i is used."""
    fin = np.array([r.mean_pi[i, -1] for i, r in enumerate(runs)])  # (S,)
    half = float(plotting.ci_halfwidth(fin[:, None])[0])
    sd = float(fin.std(ddof=1)) if fin.size > 1 else float("nan")
    return [set_name, norm, lr_cell, float(fin.mean()), half, sd,
            float(np.mean([r.mean_pi[i].mean() for i, r in enumerate(runs)])),
            float(np.mean([r.collapsed[i] for i, r in enumerate(runs)])),
            float(np.mean([r.zero_var_frac[i, :-1].mean() for i, r in enumerate(runs)]))]


def _tables(cfg, feats_name, sets, grids, res, tuned, comparisons):
    header = ["set", "normalizer", "lr", FINAL, "95% CI ±", "sd over seeds",
              "mean π* over training", "collapsed questions", "zero-variance groups"]
    parts = [f"{feats_name}, G={cfg.G}, T={cfg.T}, {cfg.seeds} seeds (paired by seed: common "
             f"random numbers); Easy π0 ~ U{cfg.easy_pi0}, Hard π0 ~ logU{cfg.hard_pi0}. "
             "Tuned LR: 2-fold cross-fitted (a seed's LR is the best on the other half of "
             "the seeds; lr column: fold even / fold odd)."]
    shared_rows, tuned_rows = {}, {}
    for o in cfg.optimizers:
        lrs, shared = grids[o]
        shared_rows[o] = [_row(s, m, shared, [res[(o, s, m, shared)]] * cfg.seeds)
                          for s in sets for m in cfg.normalizers]
        tuned_rows[o] = []
        for s in sets:
            for m in cfg.normalizers:
                lr_seed = tuned[o][s][m][0]
                picks = " / ".join(f"{x:g}" for x in dict.fromkeys(lr_seed[:2].tolist()))
                tuned_rows[o].append(_row(s, m, picks, [res[(o, s, m, lr)] for lr in lr_seed]))
        name = OPT_NAMES.get(o, o)
        parts.append(f"### {name}\n\nShared learning rate ({shared}):\n\n"
                     + markdown_table(header, shared_rows[o])
                     + f"\n{name}, each normalizer at its cross-fitted best learning rate:\n\n"
                     + markdown_table(header, tuned_rows[o]))
        if o in comparisons:
            rows = [[mode, key, e["text"], e["verdict"]]
                    for mode, by in comparisons[o].items() for key, e in by.items()]
            parts.append(f"{name}: group_std − none, final mean π* (hard-easy: Hard gap − "
                         "Easy gap, paired by seed):\n\n"
                         + markdown_table(["LR", "set", "difference [95% CI], n", "verdict"],
                                          rows))
    return "\n\n".join(parts) + "\n", shared_rows, tuned_rows


# ------------------------------------------------------------------------------ figures


#: E3's ranked interval plot (``bandit_sampled_ranked``), the first figure of its section.
RANKED = "ranked_normalizers.png"


def curve_normalizers(normalizers: list[str]) -> list[str]:
    """The normalizers drawn as curves (at most :data:`MAX_LINES`): those of
    :data:`CURVE_NORMALIZERS` that ran, else the first ones that ran."""
    kept = [m for m in normalizers if m in CURVE_NORMALIZERS]
    return (kept or list(normalizers))[:MAX_LINES]


def figures_from_summary(summary: dict, out) -> list[str]:
    """The figures of a report rebuilt from a committed summary: the ranked plot drawn from
    the summary into ``out``, then the committed Std-gap figure (the committed curve figure of
    an older run may hold more than :data:`MAX_LINES` lines a panel: left out)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranked = ranked_figure(summary, out / RANKED).resolve()
    run_dir = Path(summary["run_dir"]).resolve()
    return [str(ranked), *(str(run_dir / f) for f in summary.get("figures", [])
                           if f == "std_gap.png" and (run_dir / f).is_file())]


def _figures(cfg, out, sets, grids, res, tuned, gap_by_lr, comparisons) -> list[str]:
    """Curves at the tuned LR and the LR sweep per optimizer (:func:`curve_normalizers`); the
    Std gap per LR."""
    opts = list(cfg.optimizers)
    drawn = curve_normalizers(cfg.normalizers)
    fig, axes = plotting.subplots(2 * len(opts), 2, w=4.8)
    for k, o in enumerate(opts):
        name, lrs = OPT_NAMES.get(o, o), grids[o][0]
        for col, set_name in enumerate(sets):
            ax = axes[2 * k][col]
            for m in drawn:
                lr_seed, _ = tuned[o][set_name][m]
                curves = np.stack([res[(o, set_name, m, lr)].mean_pi[i]
                                   for i, lr in enumerate(lr_seed)])  # (S, R)
                lr_txt = "/".join(f"{x:g}" for x in dict.fromkeys(lr_seed[:2].tolist()))
                plotting.band(ax, res[(o, set_name, m, lr_seed[0])].t, curves,
                              f"{m} (lr {lr_txt})", plotting.color(m), lo_hi="ci")
            ax.set_title(f"{name}, {set_name.capitalize()}: tuned LR (mean, 95% CI)",
                         fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("mean π*")
            ax.legend(fontsize=6)
            ax = axes[2 * k + 1][col]
            for m in drawn:
                fins = np.stack([res[(o, set_name, m, lr)].mean_pi[:, -1] for lr in lrs], 1)
                ax.errorbar(lrs, fins.mean(0), yerr=plotting.ci_halfwidth(fins), label=m,
                            color=plotting.color(m), marker="o", ms=3, capsize=2)
            ax.axvline(grids[o][1], color="k", ls=":", lw=0.8)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
            ax.set_xlabel(f"{name} learning rate")
            ax.set_ylabel(f"mean π* after {cfg.T} steps")
            ax.set_title(f"{name}, {set_name.capitalize()}: LR sweep (95% CI)", fontsize=9)
            ax.legend(fontsize=6)
    plotting.save(fig, out.file("sampled_normalizers.png"))
    names = ["sampled_normalizers.png"]
    if not gap_by_lr:
        return names

    fig, axes = plotting.subplots(1, len(opts), w=5.0)
    for ax, o in zip(axes[0], opts):
        lrs = grids[o][0]
        x_tuned = lrs[-1] * 3.0
        for j, (set_name, c) in enumerate((("easy", "tab:green"), ("hard", "tab:purple"))):
            es = [gap_by_lr[o][set_name][lr] for lr in lrs] + [comparisons[o]["tuned"][set_name]]
            d = np.array([e["diff"] for e in es])
            lo = np.array([np.nan if e["low"] is None else e["low"] for e in es])
            hi = np.array([np.nan if e["high"] is None else e["high"] for e in es])
            err = np.nan_to_num(np.stack([d - lo, hi - d]))
            xs = np.array([*lrs, x_tuned]) * (1.0 + 0.06 * j)  # small dodge
            ax.errorbar(xs[:-1], d[:-1], yerr=err[:, :-1], color=c, marker="o", ms=3,
                        capsize=2, label=f"{set_name.capitalize()}, at each LR")
            ax.errorbar(xs[-1:], d[-1:], yerr=err[:, -1:], color=c, marker="*", ms=9,
                        capsize=3, ls="none", label=f"{set_name.capitalize()}, tuned (cross-fit)")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(grids[o][1], color="k", ls=":", lw=0.8)
        ax.axvline(np.sqrt(lrs[-1] * x_tuned), color="0.6", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([*lrs, x_tuned], [*(f"{x:g}" for x in lrs), "tuned"])
        ax.set_xlabel(f"{OPT_NAMES.get(o, o)} learning rate (★ = each at its tuned LR)")
        ax.set_ylabel("group_std − none, final mean π*")
        ax.set_title(f"{OPT_NAMES.get(o, o)}: Std − No-Std with 95% CI, n={cfg.seeds}",
                     fontsize=9)
        ax.legend(fontsize=6)
    plotting.save(fig, out.file("std_gap.png"))
    return [*names, "std_gap.png"]


# ------------------------------------------------------------------------------ report

TITLE = 'Sampled normalizers on Easy/Hard synthetic tasks'
PAPER_LINE = 'Std helps most on high-variance (Hard) prompts'
PROFILES = {
    "quick": dict(n=32, seeds=3, T=80, optimizers=["sgd", "adam"]),
    "cpu": dict(seeds=8, optimizers=["sgd", "adam"]),
    "paper": dict(seeds=10, T=300, optimizers=["sgd", "adam"]),
}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows per optimizer and LR mode: Std - No-Std on Hard (expected > 0), on
    Easy (measured), and Hard gap - Easy gap (the paper's "helps most on Hard", expected > 0)."""
    rows = []
    for o, by_mode in s.get("comparisons", {}).items():
        name = OPT_NAMES.get(o, o)
        for mode, by in by_mode.items():
            label = (f"{name}, shared LR {s['shared_lr'][o]:g}" if mode == "shared"
                     else f"{name}, tuned LR (cross-fit)")
            rows += [
                [f"group_std − none, final mean π*, Hard ({label})", "Std helps (> 0)",
                 by["hard"]["text"], by["hard"]["verdict"]],
                [f"group_std − none, final mean π*, Easy ({label})", "smaller than on Hard",
                 by["easy"]["text"], f"measured: {by['easy']['verdict']}"],
                [f"Hard gap − Easy gap ({label})", "Std helps most on Hard (> 0)",
                 by["hard-easy"]["text"], by["hard-easy"]["verdict"]],
            ]
            for pair_name, by_set in s.get("mechanism", {}).get(o, {}).get(mode, {}).items():
                rows += [[f"mechanism: {pair_name}, final mean π*, {st.capitalize()} ({label})",
                          by_set["question"], e["text"], f"measured: {e['verdict']}"]
                         for st, e in by_set.items() if st != "question"]
            rows += [[f"{r['what']}, {r['slice'].capitalize()} ({label})", "(not reported)",
                      r["text"], r["cell"]] for r in s.get("rliable", {}).get(o, {}).get(mode, [])]
    return rows
