"""E5 on a language model: does a per-prompt curvature proxy track the reward variance?

Per prompt, the Sophia-style diagonal-Fisher trace ``G * ||grad mean_g log pi(o_g | q)||^2`` over
the trainable (LoRA) parameters, from G responses sampled from the current policy, next to the
reward variance ``p_hat (1 - p_hat)`` of the same G samples (``grponorm.diagnostics.fisher``).
Correlated across prompts (Pearson and Spearman, ``grponorm.diagnostics.correlation``) at the
same step and across lags -- the paper's Table 1 (mean Pearson 0.342, p = 0.008, same step;
-0.028, p = 0.18, across steps).

Which prompts. A correlation across prompts needs the same prompts at every measurement to be
lagged (Fisher of prompt i at step t vs the variance of prompt i at step t + lag). The training
batch holds different problems at every step, so the default measures a fixed **probe set**: the
first ``probe`` problems of a ``data_seed``-seeded permutation of the training pool (both levels
mixed), sampled afresh (G per prompt, seeded by the step) every ``every`` steps, on the policy
before that step's update. Training itself is not changed by this (the trainer's diagnostics draw
no global random numbers). ``probe=0`` measures the step's own training groups instead (the
samples the update uses; same-step correlations only, across ``prompts_per_step`` prompts).
Lags are counted in measurements: lag L compares steps ``L * every`` apart.

Two modes:

- default: train with ``TrainConfig(diagnostics="fisher", diag_every=every, diag_probe=probe)``
  (the run is kept in ``<run>/train``) and read the per-step matrices from its metrics;
- ``checkpoints=RUN_DIR`` (a ``grponorm rl train`` run folder): measure saved weights. A trainer
  run keeps only two states: its base model (step 0; fresh LoRA adapters are exactly the base
  because LoRA's B matrices start at zero) and its latest ``checkpoint.pt`` (the final step when
  the run finished; ``adapter/`` holds the same final weights and is used when ``checkpoint.pt``
  is absent). Each is measured ``repeats`` times on fresh samples of the probe set. Reported:
  the same-draw correlation (the paper's same step), Fisher from one draw vs the variance of an
  independent draw of the same weights (is the agreement more than shared sampling noise?), and
  the base Fisher vs the final variance (across training).

Pooled estimate (``pooled_analysis``, in every training-mode summary; ``reanalyze`` adds it to
a run saved without it): the mean of the per-step correlations at each lag -- the pooled
correlation of within-step standardized Fisher trace and reward variance -- with a circular block
bootstrap over measurements, read against the paper's 0.342 (same step) and against "≈ 0" with
Holm's correction over the lags (``table1.pooled_entry``, ``grponorm.stats.pooled``).

Cost: the trainer times each diagnostic (``time_diag``, of which ``time_diag_fisher`` is the
backward passes); the summary gives seconds per step with and without it and their ratio.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import plotting
from ..diagnostics.correlation import per_step, summarize
from ..diagnostics.fisher import fisher_record, trainer_diagnostic
from ..rl import trainer
from ..rl.checkpoint import restore_trainable
from ..rl.config import TrainConfig, load_saved_config
from ..rl.policy import load_policy
from ..rl.problems import build_problems, probe_problems, slice_labels
from ..rl.rewards import batch_rewards
from ..rl.session import run_threads
from ..rl.summary import read_metrics
from ..runs import Run, markdown_table, to_jsonable
from . import table1
from .table1 import (
    PAPER,
    PAPER_TABLE1,
    correlation_entry,
    lag_intervals,
    pooled_entry,
    pooled_rows,
    table1_rows,
)

PAIRS = {  # name -> (x, y): correlate x[t] with y[t + lag] across prompts
    "fisher_trace vs sampled variance (paper's Table 1)": ("fisher_trace", "reward_var"),
    "fisher_trace vs completion length (confound)": ("fisher_trace", "completion_len"),
    "completion length vs sampled variance": ("completion_len", "reward_var"),
}
MAIN = next(iter(PAIRS))
KEYS = ("fisher_trace", "reward_var", "p_hat", "completion_len")


@dataclass
class FisherConfig(TrainConfig):
    """E5 settings: a training run with the Fisher diagnostic on (every ``rl train`` setting
    applies), the lags to correlate, or saved checkpoints to measure instead."""

    HIDDEN: ClassVar[tuple[str, ...]] = ("diagnostics", "run_dir", "resume")
    steps: int = 12  # training steps
    eval_every: int = 0  # held-out eval every N steps (0 = never: E5 measures a probe set)
    checkpoint_every: int = 0  # checkpoint every N steps (0 = only at the end)
    diagnostics: str = "fisher"  # the step diagnostic (always fisher here)
    diag_every: int = 2  # measure every k training steps
    diag_probe: int = 64  # fixed probe-set size, the paper's 64 (0 = each step's training
    # groups, same step only)
    lags: list = field(default_factory=lambda: [0, 1, 2, 3])  # lags in measurements (k steps)
    checkpoints: str = ""  # trainer run folder: measure its saved weights instead of training
    repeats: int = 3  # checkpoints mode: independent sample draws per saved state


def run(cfg: FisherConfig, progress: bool = True) -> dict:
    """Train with the diagnostic on (or measure ``checkpoints``); correlate; write the tables."""
    if cfg.backend != "native":  # refused, never silently trained natively
        raise ValueError(f"diag fisher: backend={cfg.backend!r} cannot run the Fisher "
                         "diagnostic (it needs the native trainer's rollout batch); use "
                         "--backend native")
    if cfg.resume:
        raise ValueError("diag fisher does not resume a run (resume is set per training run); "
                         "measure a finished run's saved weights with --checkpoints instead")
    if cfg.G < 2:
        raise ValueError(f"G must be >= 2 (a reward variance needs two samples); got {cfg.G}")
    if cfg.diag_every < 1 or cfg.diag_probe < 0 or cfg.repeats < 1:
        raise ValueError("need diag_every >= 1, diag_probe >= 0 and repeats >= 1")
    if cfg.checkpoints:
        return _run_checkpoints(cfg, progress)
    return _run_training(cfg, progress)


# ------------------------------------------------------------------------------ training mode


def train_config(cfg: FisherConfig, run_dir: str | Path) -> TrainConfig:
    """The ``TrainConfig`` of the default mode: this config's training fields, diagnostics on."""
    return TrainConfig(**{**cfg.train_fields(), "run_dir": str(run_dir), "resume": "",
                          "diagnostics": "fisher"})


def matrices(records: list[dict]) -> tuple[list[int], dict[str, np.ndarray], bool]:
    """Per-measurement (T, n) arrays from the trainer's diagnostic records.

    Returns ``(steps, arrays, same_prompts)``; ``same_prompts`` is True when every measurement
    holds the same problems in the same order (a probe set), which lagged comparisons need.
    """
    recs = [r for r in records if "fisher_trace" in r]
    if not recs:
        raise ValueError("no diagnostic records (was the run trained with diagnostics=fisher?)")
    ids = recs[0]["diag_problems"]
    same = all(r["diag_problems"] == ids for r in recs)
    data = {
        k: np.array([r["diag_completion_len" if k == "completion_len" else k] for r in recs],
                    dtype=np.float64)
        for k in KEYS
    }
    return [r["step"] for r in recs], data, same


def cost(records: list[dict], n_measured: int, prompts_per_step: int) -> dict:
    """Seconds per step with and without the diagnostic, from the trainer's timings."""
    diag = [r for r in records if "time_diag" in r]
    plain = [r for r in records if "time_diag" not in r]
    with_s = float(np.mean([r["time_step"] for r in diag]))
    without_s = float(np.mean([r["time_step"] - r["time_diag"] for r in diag]))
    fisher_pp = float(np.mean([r["time_diag_fisher"] for r in diag])) / max(1, n_measured)
    out = {
        "step_with_diag_s": with_s,
        "step_without_diag_s": without_s,
        "ratio": with_s / without_s,
        "diag_s": float(np.mean([r["time_diag"] for r in diag])),
        "fisher_backward_s_per_prompt": fisher_pp,
        "ratio_on_training_batch_est": (without_s + fisher_pp * prompts_per_step) / without_s,
        "steps_with": len(diag),
        "steps_without": len(plain),
    }
    if plain:
        out["step_plain_measured_s"] = float(np.mean([r["time_step"] for r in plain]))
    return out


def _run_training(cfg: FisherConfig, progress: bool) -> dict:
    out = Run.create(cfg.out, "diag_fisher", cfg)
    tcfg = train_config(cfg, out.path / "train")
    tsum = trainer.run(tcfg, progress=progress, diagnostic=trainer_diagnostic)
    records = read_metrics(out.path / "train")
    steps, data, same = matrices(records)
    T, n = data["fisher_trace"].shape
    lags = [g for g in cfg.lags if g < T] if same else [0]
    # One run: the measurements are the replicates of the intervals (table1's docstring).
    results = {name: lag_intervals([data[x]], [data[y]], lags) for name, (x, y) in PAIRS.items()}
    pooled = pooled_analysis(data, lags)
    c = cost(records, n, cfg.prompts_per_step)
    where = (f"fixed probe set of {n} training problems, fresh samples every {cfg.diag_every} steps"
             if cfg.diag_probe else f"each step's {n} training groups (same samples as the update)")
    head = (
        f"{cfg.model} ({cfg.dtype}), levels {', '.join(cfg.levels)}, {cfg.normalizer} lr={cfg.lr}, "
        f"{cfg.steps} steps; Fisher trace over LoRA r={cfg.lora_r} adapters, B=G={cfg.G}, "
        f"T={cfg.temperature}; {where}; {T} measurements (steps {steps[0]}..{steps[-1]}). "
        f"Lag L = {cfg.diag_every}·L training steps."
    )
    across = min((g for g in lags if g > 0), default=None)
    rows = [["same step (lag 0)", *_paper_cells("same step"), *_cells(results[MAIN].get(0))]]
    if across is not None:
        rows.append([f"across steps (lag {across} = {across * cfg.diag_every} steps)",
                     *_paper_cells("across steps"), *_cells(results[MAIN][across])])
    table = _tables(head, rows, results, cfg.diag_every, c)
    table += "\n" + pooled_table(pooled, cfg.diag_every)
    out.write_text("table.md", table)
    figs = _figures(out, data, steps, results, cfg.diag_every)
    summary = {
        "experiment": "E5-LM",
        "mode": "train",
        "probe": cfg.diag_probe,
        "n_prompts": n,
        "measurements": T,
        "steps_measured": steps,
        "paper": PAPER,
        "correlations": results,
        "pooled": pooled,
        "cost": c,
        "train": {k: tsum.get(k) for k in ("acc_start", "acc_end", "time_step_s", "train_time_s",
                                           "frac_flat", "frac_zero_adv")},
        "mean_fisher_trace": float(np.mean(data["fisher_trace"])),
        "mean_reward_var": float(np.mean(data["reward_var"])),
        "frac_zero_variance": float(np.mean(data["reward_var"] == 0)),
        "figures": figs,
        "train_dir": str(out.path / "train"),
        "run_dir": str(out.path),
    }
    out.finish(summary)
    return to_jsonable(summary)


def pooled_analysis(data: dict[str, np.ndarray], lags) -> dict:
    """The pooled Table 1 of one run (``table1.pooled_entry``): the mean of per-step Pearson
    (and Spearman) correlations of Fisher trace and reward variance at each lag, its circular
    block-bootstrap interval over measurements and reading, Holm over the lags > 0, and the
    same-step estimate on the measurements where several prompts have reward spread.

    Args:
        data: :func:`matrices`' arrays ((T, n) ``fisher_trace`` and ``reward_var``).
        lags: lags in measurements (the probe set's: the same prompts at every measurement).
    """
    x, y = data["fisher_trace"], data["reward_var"]
    return pooled_entry(x, y, lags, spread=y)


def reanalyze(run_dir: str | Path) -> dict:
    """The summary of a finished E5 training-mode run with :func:`pooled_analysis` computed
    from its per-step matrices (``<run_dir>/train/metrics.jsonl``), e.g. a committed result
    written before the pooled estimate existed. Reads ``summary.json``, ``config.json`` and the
    metrics; writes nothing; the other fields are the saved summary's.

    Raises:
        ValueError: for a checkpoints-mode run (its draws are not a series of measurements).
        FileNotFoundError: when a file is missing.
    """
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("mode") != "train":
        raise ValueError(f"{run_dir}: only a training-mode E5 run has a series of measurements "
                         f"to pool (mode {summary.get('mode')!r})")
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    _, data, same = matrices(read_metrics(run_dir / "train"))
    T = data["fisher_trace"].shape[0]
    lags = [int(g) for g in cfg.get("lags", [0]) if int(g) < T] if same else [0]
    return {**summary, "pooled": pooled_analysis(data, lags)}


# ------------------------------------------------------------------------------ checkpoint mode


def saved_states(run_dir: Path) -> list[tuple[str, int, Path | None]]:
    """``(label, step, file)`` of the states a trainer run keeps: the base model (step 0, no
    file) and the latest ``checkpoint.pt`` -- or ``adapter/`` when that is absent."""
    states: list[tuple[str, int, Path | None]] = [("base", 0, None)]
    info = run_dir / "checkpoint.json"
    if (run_dir / "checkpoint.pt").is_file():
        step = json.loads(info.read_text())["step"] if info.is_file() else -1
        states.append(("checkpoint.pt", int(step), run_dir / "checkpoint.pt"))
    elif (run_dir / "adapter").is_dir():
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        states.append(("adapter", int(cfg.get("steps", -1)), run_dir / "adapter"))
    if len(states) < 2:
        raise FileNotFoundError(f"{run_dir} holds neither checkpoint.pt nor adapter/")
    return states


def _load_state(model, label: str, file: Path | None) -> None:
    if file is None:
        return
    if label == "adapter":
        from peft import set_peft_model_state_dict  # peft: only for runs saved as adapters
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(file / "adapter_model.safetensors")))
        return
    restore_trainable(model, torch.load(file, map_location="cpu", weights_only=False)["trainable"])


def _run_checkpoints(cfg: FisherConfig, progress: bool) -> dict:
    src = Path(cfg.checkpoints).expanduser()
    tcfg = load_saved_config(src)
    if tcfg.lora_r <= 0:
        raise ValueError("checkpoints mode needs a LoRA run (lora_r > 0)")
    states = saved_states(src)
    out = Run.create(cfg.out, "diag_fisher", cfg)
    torch.set_num_threads(run_threads(cfg.threads)[0])
    pool, _ = build_problems(tcfg)
    if tcfg.slice != "all" and tcfg.slice_by != "pass_rate":
        labels = slice_labels(tcfg, pool, None)
        pool = [p for p in pool if labels[p.id] == tcfg.slice]
    probes = probe_problems(replace(tcfg, diag_probe=cfg.diag_probe or 64), pool)
    if cfg.device != "auto":
        tcfg = replace(tcfg, device=cfg.device)
    policy = load_policy(tcfg)
    torch.manual_seed(tcfg.seed)
    model = policy.attach_lora()
    prompts = policy.prompts(probes)
    refs = [p.answer for p in probes for _ in range(tcfg.G)]
    G = tcfg.G
    rec = {k: [] for k in KEYS}
    times = {"generate": [], "fisher": []}
    bar = tqdm(total=len(states) * cfg.repeats, desc="E5 checkpoints", disable=not progress)
    for si, (label, _step, file) in enumerate(states):
        _load_state(model, label, file)
        for r in range(cfg.repeats):
            t0 = time.perf_counter()
            batch = policy.engine.generate(
                prompts, G, max_new_tokens=tcfg.max_new_tokens, temperature=tcfg.temperature,
                top_p=tcfg.top_p,
                generator_seed=int(np.random.default_rng([cfg.seed, 5, si, r]).integers(2**31 - 1)),
            )
            times["generate"].append(time.perf_counter() - t0)
            rewards = np.array(batch_rewards(batch.texts, refs), dtype=float).reshape(-1, G)
            one = fisher_record(model, batch, rewards, [p.id for p in probes],
                                temperature=tcfg.temperature, share_prompt=tcfg.share_prompt)
            times["fisher"].append(one["time_diag_fisher"])
            for k in KEYS:
                rec[k].append(np.asarray(one["diag_completion_len" if k == "completion_len"
                                             else k]))
            out.log({"state": label, "step": _step, "repeat": r, **one})
            bar.update(1)
    bar.close()
    data = {k: np.stack(v) for k, v in rec.items()}  # (S * R, n), state-major
    S, R, n = len(states), cfg.repeats, len(probes)

    def idx(s, r):
        return s * R + r

    comparisons = {  # name -> list of (row of x, row of y)
        "same draw (same step)": [(idx(s, r), idx(s, r)) for s in range(S) for r in range(R)],
        "independent draws, same weights": [(idx(s, r), idx(s, r2)) for s in range(S)
                                            for r in range(R) for r2 in range(R) if r != r2],
        f"across training ({states[0][0]} -> {states[-1][0]})":
            [(idx(0, r), idx(S - 1, r)) for r in range(R)],
    }
    results = {}
    for name, (xk, yk) in PAIRS.items():
        results[name] = {}
        for cname, pairs in comparisons.items():
            x = np.stack([data[xk][a] for a, _ in pairs])
            y = np.stack([data[yk][b] for _, b in pairs])
            rows_ = per_step(x, y, 0)  # draws reused across pairs: intervals are optimistic
            results[name][cname] = {k: {**summarize(rows_, k),
                                        "interval": correlation_entry([rows_], k)}
                                    for k in ("pearson", "spearman")}
    head = (
        f"{tcfg.model} ({tcfg.dtype}) run {src}: states "
        + ", ".join(f"{lb} (step {st})" for lb, st, _ in states)
        + f"; fixed probe set of {n} training problems, {R} fresh draws of B=G={G} samples per "
        f"state, T={tcfg.temperature}; Fisher trace over LoRA r={tcfg.lora_r} adapters."
    )
    main = results[MAIN]
    rows = [["same step (same draw)", *_paper_cells("same step"),
             *_cells(main["same draw (same step)"])],
            [list(comparisons)[-1], *_paper_cells("across steps"),
             *_cells(main[list(comparisons)[-1]])]]
    gen_s, fis_s = float(np.mean(times["generate"])), float(np.mean(times["fisher"]))
    c = {"generate_s_per_draw": gen_s, "fisher_s_per_draw": fis_s,
         "fisher_backward_s_per_prompt": fis_s / n, "ratio_vs_generation": (gen_s + fis_s) / gen_s}
    out.write_text("table.md", _tables(head, rows, results, None, c))
    figs = _figures(out, data, [s for s in range(S) for _ in range(R)], results, None)
    summary = {
        "experiment": "E5-LM", "mode": "checkpoints", "source_run": str(src),
        "states": [{"label": lb, "step": st} for lb, st, _ in states], "repeats": R,
        "n_prompts": n, "paper": PAPER, "correlations": results, "cost": c,
        "mean_fisher_trace": float(np.mean(data["fisher_trace"])),
        "mean_reward_var": float(np.mean(data["reward_var"])),
        "figures": figs, "run_dir": str(out.path),
    }
    out.finish(summary)
    return to_jsonable(summary)


# ------------------------------------------------------------------------------ report


def _paper_cells(which: str) -> list:
    return [PAPER[which]["pearson"], PAPER[which]["p"]]


def _ci(pe: dict) -> str:
    iv = pe.get("interval") or {}
    return "-" if iv.get("low") is None else f"[{iv['low']:+.3f}, {iv['high']:+.3f}]"


def _cells(res: dict | None) -> list:
    if res is None:
        return [math.nan] * 6
    pe, sp = res["pearson"], res["spearman"]
    return [pe["mean"], _ci(pe), pe["interval"]["p"], sp["mean"], sp["p"], pe["steps"]]


def _tables(head: str, paper_rows: list, results: dict, every: int | None, c: dict) -> str:
    t1 = markdown_table(["comparison", "paper Pearson", "paper p", "our mean Pearson",
                         "95% CI (t over measurements, Fisher z)", "p", "our mean Spearman",
                         "p", "measurements"], paper_rows)
    rows = []
    for name, by in results.items():
        for key, res in by.items():
            pe, sp = res["pearson"], res["spearman"]
            lag = key if every is None else f"{key} ({key * every} steps)"
            rows.append([name, lag, pe["mean"], _ci(pe), pe["interval"]["p"], sp["mean"],
                         sp["p"], pe["frac_significant"]])
    t2 = markdown_table(["pair", "lag" if every else "comparison", "mean Pearson", "95% CI",
                         "p", "mean Spearman", "p", "steps with p<0.05 (Pearson)"], rows)
    t3 = markdown_table(["cost", "value"], [[k, v] for k, v in c.items()])
    return f"{head}\n\n{PAPER_TABLE1}.\n\n{t1}\n{t2}\n{t3}"


def pooled_table(pooled: dict, every: int) -> str:
    """Markdown of :func:`pooled_analysis`: per lag and method the mean per-step correlation,
    its interval, the one-sided bound, p (and Holm's p for lags > 0) and the reading."""
    rows = []
    for g, by in pooled["lags"].items():
        for key in ("pearson", "spearman"):
            rd = by[key]
            rows.append([f"{g} ({int(g) * every} steps)", key, rd["estimate"],
                         "-" if rd["low"] is None else f"[{rd['low']:+.3f}, {rd['high']:+.3f}]",
                         rd["largest"], rd["p"], rd.get("p_holm", "-"), rd["n"], rd["n_eff"],
                         rd["block"], rd["verdict"]])
    head = ("Pooled over measurements: mean of per-step correlations (= correlation of "
            "within-step standardized values over all (measurement, prompt) pairs), 95% "
            "circular block bootstrap over measurements (t form); one-sided 95% bound on the "
            "paper's side; lags > 0: Holm over lags "
            f"{', '.join(map(str, pooled['multiplicity']['lags'])) or '-'} per method.")
    t = markdown_table(["lag", "method", "mean r", "95% CI", "one-sided bound", "p", "Holm p",
                        "measurements", "n_eff", "block", "reading"], rows)
    sens = pooled.get("sensitivity")
    if sens:
        t += (f"\nSensitivity, {sens['what']}: {sens['kept']} of {sens['of']} measurements, "
              f"{sens['pearson']['description']}\n")
    return f"{head}\n\n{t}"


def _figures(out: Run, data: dict, steps, results: dict, every: int | None) -> list[str]:
    rng = np.random.default_rng(0)
    fig, axes = plotting.subplots(1, 1, w=5.0)
    ax = axes[0][0]
    v = data["reward_var"].ravel()
    f = data["fisher_trace"].ravel()
    c = np.repeat(np.asarray(steps, dtype=float), data["reward_var"].shape[1])
    sc = ax.scatter(v + rng.uniform(-0.004, 0.004, v.size), f, c=c, s=10, alpha=0.7,
                    cmap="viridis")
    fig.colorbar(sc, ax=ax, label="step" if every else "state")
    if np.all(f > 0):
        ax.set_yscale("log")
    ax.set_xlabel("p̂(1-p̂) from G samples (jittered)")
    ax.set_ylabel("Fisher trace B·||ĝ||²")
    ax.set_title("Fisher trace vs reward variance, per prompt", fontsize=9)
    plotting.save(fig, out.file("fisher_scatter.png"))

    fig, axes = plotting.subplots(1, 1, w=5.0)
    ax = axes[0][0]
    for i, (name, by) in enumerate(results.items()):
        keys = list(by)
        xs = np.arange(len(keys)) if every is None else np.array(keys) * every
        short = name.replace(" (paper's Table 1)", "")
        for meth, ls in (("pearson", "-"), ("spearman", ":")):
            ax.plot(xs, [by[k][meth]["mean"] for k in keys], ls, marker="o", ms=3,
                    color=f"C{i}", label=f"{short} ({meth})")
        if every is None:
            ax.set_xticks(xs, keys, fontsize=6, rotation=15)
    ax.axhline(0, color="k", lw=0.6)
    if every is not None:
        ax.scatter([0], [PAPER["same step"]["pearson"]], marker="*", s=80, color="k", zorder=5,
                   label="paper, same step")
        ax.set_xlabel("lag (training steps)")
    ax.set_ylabel("mean correlation across prompts")
    ax.legend(fontsize=6)
    ax.set_title("Same step vs across steps", fontsize=9)
    plotting.save(fig, out.file("fisher_lags.png"))
    return ["fisher_scatter.png", "fisher_lags.png"]


# ------------------------------------------------------------------------------ report

TITLE = "Curvature proxy (diagonal Fisher) vs reward variance on a language model"
PAPER_LINE = table1.PAPER_LINE
PROFILES = {
    "quick": dict(steps=6, diag_probe=4, diag_every=2, lags=[0, 1, 2]),
    # 24 measurements (every 2 of 48 steps) of the paper's 64 probe prompts: the pooled
    # interval (table1.pooled_entry) is then about ±0.11 wide on each side, from the spread
    # of the per-step r at 64 prompts and the autocorrelation of the 12-prompt run (docs/
    # results.md, E5 sizing); about 105-140 s of one core per measurement
    "cpu": dict(steps=48, diag_every=2, diag_probe=64),
    "paper": dict(model="Qwen/Qwen2.5-Math-1.5B", device="cuda", steps=100, diag_probe=64,
                  diag_every=5, max_new_tokens=256),
}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: Table 1 (same step, across steps) and the diagnostic's cost.

    A training-mode summary with ``pooled`` (:func:`pooled_analysis`; :func:`reanalyze` adds
    it to a run saved without it) gives the pooled rows; one without it the mean-Fisher-z rows
    of ``table1.table1_rows`` it was written with."""
    main = s["correlations"][MAIN]
    if s.get("mode") == "checkpoints":  # keys: same draw, independent draws, across training
        keys = list(main)
        return table1_rows(main[keys[0]], [(keys[-1], main[keys[-1]])], "language model")
    lags = sorted(main, key=int)
    every = s.get("steps_measured", [0, 0])
    every = every[1] - every[0] if len(every) > 1 else 1
    cost_row = ["cost of the diagnostic", "-", f"{s['cost']['ratio']:.2f}x a plain step "
                f"(probe of {s['probe']} prompts)", "measured"]
    if s.get("pooled"):
        return pooled_rows(s["pooled"], every) + [cost_row]
    return table1_rows(main[lags[0]], [(f"lag {g} ({int(g) * every} steps)", main[g])
                                       for g in lags[1:]], "language model") + [cost_row]
