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

Cost: the trainer times each diagnostic (``time_diag``, of which ``time_diag_fisher`` is the
backward passes); the summary gives seconds per step with and without it and their ratio.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..diagnostics.correlation import lag_table, per_step, summarize
from ..report import figures
from ..runs import Run, markdown_table, to_jsonable

PAIRS = {  # name -> (x, y): correlate x[t] with y[t + lag] across prompts
    "fisher_trace vs sampled variance (paper's Table 1)": ("fisher_trace", "reward_var"),
    "fisher_trace vs completion length (confound)": ("fisher_trace", "completion_len"),
    "completion length vs sampled variance": ("completion_len", "reward_var"),
}
MAIN = next(iter(PAIRS))
PAPER = {
    "same step": {"pearson": 0.342, "p": 0.008},
    "across steps": {"pearson": -0.028, "p": 0.18},
}
KEYS = ("fisher_trace", "reward_var", "p_hat", "completion_len")


@dataclass
class FisherConfig:
    """Fisher-vs-variance diagnostic settings (E5 on a language model)."""

    model: str = "embedded"  # HF id, local model folder, .gguf file, or embedded (SmolLM2-135M)
    dtype: str = "bfloat16"  # parameter dtype (LoRA adapters stay fp32)
    levels: list = field(default_factory=lambda: ["add1", "mul1"])  # arithmetic presets pooled
    n_train: int = 256  # training problems per level
    normalizer: str = "group_std"  # advantage normalizer of the training run
    steps: int = 12  # training steps
    G: int = 8  # completions per prompt (also the Fisher estimate's B)
    prompts_per_step: int = 4  # training prompts (groups) per step
    lr: float = 5e-4  # AdamW learning rate
    lora_r: int = 16  # LoRA rank (the Fisher is over the adapters)
    max_new_tokens: int = 12  # completion length limit
    temperature: float = 0.7  # sampling temperature (the Fisher is of this sampling policy)
    probe: int = 12  # fixed probe-set size (0 = each step's training groups, same step only)
    every: int = 2  # measure every k training steps
    lags: list = field(default_factory=lambda: [0, 1, 2, 3])  # lags in measurements (k steps)
    checkpoints: str = ""  # trainer run folder: measure its saved weights instead of training
    repeats: int = 3  # checkpoints mode: independent sample draws per saved state
    seed: int = 0  # training / sampling seed
    data_seed: int = 0  # problem-pool and probe-set seed
    threads: int = 0  # torch CPU threads (0 = torch's default)
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    cache_dir: str = ""  # model cache ("" = $GRPONORM_CACHE or ~/.cache/grponorm)
    out: str = "runs"  # root folder for run outputs


def run(cfg: FisherConfig, progress: bool = True) -> dict:
    if cfg.G < 2:
        raise ValueError(f"G must be >= 2 (a reward variance needs two samples); got {cfg.G}")
    if cfg.every < 1 or cfg.probe < 0 or cfg.repeats < 1:
        raise ValueError("need every >= 1, probe >= 0 and repeats >= 1")
    if cfg.checkpoints:
        return _run_checkpoints(cfg, progress)
    return _run_training(cfg, progress)


# ------------------------------------------------------------------------------ training mode


def train_config(cfg: FisherConfig, run_dir: str | Path):
    """The ``TrainConfig`` of the default mode (diagnostics on, no eval, final checkpoint)."""
    from ..rl.trainer import TrainConfig

    return TrainConfig(
        model=cfg.model,
        dtype=cfg.dtype,
        lora_r=cfg.lora_r,
        lora_alpha=2.0 * cfg.lora_r,
        levels=list(cfg.levels),
        n_train=cfg.n_train,
        data_seed=cfg.data_seed,
        normalizer=cfg.normalizer,
        G=cfg.G,
        prompts_per_step=cfg.prompts_per_step,
        steps=cfg.steps,
        lr=cfg.lr,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        eval_every=0,
        checkpoint_every=0,
        seed=cfg.seed,
        threads=cfg.threads,
        device=cfg.device,
        cache_dir=cfg.cache_dir,
        run_dir=str(run_dir),
        diagnostics="fisher",
        diag_every=cfg.every,
        diag_probe=cfg.probe,
    )


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
    from ..rl import trainer

    out = Run.create(cfg.out, "diag_fisher", cfg)
    tcfg = train_config(cfg, out.path / "train")
    tsum = trainer.run(tcfg, progress=progress)
    records = trainer.read_metrics(out.path / "train")
    steps, data, same = matrices(records)
    T, n = data["fisher_trace"].shape
    lags = [g for g in cfg.lags if g < T] if same else [0]
    results = {name: lag_table(data[x], data[y], lags) for name, (x, y) in PAIRS.items()}
    c = cost(records, n, cfg.prompts_per_step)
    where = (f"fixed probe set of {n} training problems, fresh samples every {cfg.every} steps"
             if cfg.probe else f"each step's {n} training groups (same samples as the update)")
    head = (
        f"{cfg.model} ({cfg.dtype}), levels {', '.join(cfg.levels)}, {cfg.normalizer} lr={cfg.lr}, "
        f"{cfg.steps} steps; Fisher trace over LoRA r={cfg.lora_r} adapters, B=G={cfg.G}, "
        f"T={cfg.temperature}; {where}; {T} measurements (steps {steps[0]}..{steps[-1]}). "
        f"Lag L = {cfg.every}·L training steps."
    )
    across = min((g for g in lags if g > 0), default=None)
    rows = [["same step (lag 0)", *_paper_cells("same step"), *_cells(results[MAIN].get(0))]]
    if across is not None:
        rows.append([f"across steps (lag {across} = {across * cfg.every} steps)",
                     *_paper_cells("across steps"), *_cells(results[MAIN][across])])
    table = _tables(head, rows, results, cfg.every, c)
    out.write_text("table.md", table)
    figs = _figures(out, data, steps, results, cfg.every)
    summary = {
        "experiment": "E5-LM",
        "mode": "train",
        "probe": cfg.probe,
        "n_prompts": n,
        "measurements": T,
        "steps_measured": steps,
        "paper": PAPER,
        "correlations": results,
        "cost": c,
        "train": {k: tsum.get(k) for k in ("acc_start", "acc_end", "time_step_s", "train_time_s",
                                           "frac_zero_variance")},
        "mean_fisher_trace": float(np.mean(data["fisher_trace"])),
        "mean_reward_var": float(np.mean(data["reward_var"])),
        "frac_zero_variance": float(np.mean(data["reward_var"] == 0)),
        "figures": figs,
        "train_dir": str(out.path / "train"),
        "run_dir": str(out.path),
    }
    out.finish(summary)
    return to_jsonable(summary)


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
    import torch

    if file is None:
        return
    if label == "adapter":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(file / "adapter_model.safetensors")))
        return
    state = torch.load(file, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in state["trainable"].items():
            params[name].copy_(t)


def _run_checkpoints(cfg: FisherConfig, progress: bool) -> dict:
    import time

    import torch
    from tqdm.auto import tqdm

    from ..diagnostics.fisher import group_fisher_traces, reward_stats
    from ..rl import data as rl_data
    from ..rl import trainer
    from ..rl.models import ModelConfig, apply_lora, chat_prompt, load_model
    from ..rl.rewards import batch_rewards
    from ..rl.rollout import make_engine

    src = Path(cfg.checkpoints).expanduser()
    tcfg = trainer._load_saved_config(src)
    if tcfg.lora_r <= 0:
        raise ValueError("checkpoints mode needs a LoRA run (lora_r > 0)")
    states = saved_states(src)
    out = Run.create(cfg.out, "diag_fisher", cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool, _ = trainer.build_problems(tcfg)
    if tcfg.slice != "all" and tcfg.slice_by != "pass_rate":
        labels = trainer.slice_labels(tcfg, pool, None)
        pool = [p for p in pool if labels[p.id] == tcfg.slice]
    probes = trainer.probe_problems(replace(tcfg, diag_probe=cfg.probe or 12), pool)
    mcfg = ModelConfig(model=tcfg.model, dtype=tcfg.dtype, lora_r=tcfg.lora_r,
                       lora_alpha=tcfg.lora_alpha, lora_targets=tuple(tcfg.lora_targets),
                       device=tcfg.device if cfg.device == "auto" else cfg.device,
                       **({"cache_dir": tcfg.cache_dir} if tcfg.cache_dir else {}))
    model, tok = load_model(mcfg)
    torch.manual_seed(tcfg.seed)
    model = apply_lora(model, mcfg)
    engine = make_engine(tcfg.rollout, model, tok, share_prompt=tcfg.share_prompt,
                         share_prefix=tcfg.share_prefix,
                         gqa_attention=trainer.gqa_wanted(tcfg, model))
    prompts = [chat_prompt(tok, rl_data.problem_messages(p)) for p in probes]
    refs = [p.answer for p in probes for _ in range(tcfg.G)]
    G = tcfg.G
    rec = {k: [] for k in KEYS}
    times = {"generate": [], "fisher": []}
    bar = tqdm(total=len(states) * cfg.repeats, desc="E5 checkpoints", disable=not progress)
    for si, (label, _step, file) in enumerate(states):
        _load_state(model, label, file)
        for r in range(cfg.repeats):
            t0 = time.perf_counter()
            batch = engine.generate(
                prompts, G, max_new_tokens=tcfg.max_new_tokens, temperature=tcfg.temperature,
                top_p=tcfg.top_p,
                generator_seed=int(np.random.default_rng([cfg.seed, 5, si, r]).integers(2**31 - 1)),
            )
            times["generate"].append(time.perf_counter() - t0)
            rewards = np.array(batch_rewards(batch.texts, refs), dtype=float).reshape(-1, G)
            est = group_fisher_traces(model, batch, temperature=tcfg.temperature,
                                      share_prompt=tcfg.share_prompt)
            times["fisher"].append(est["seconds"])
            st = reward_stats(rewards)
            rec["fisher_trace"].append(est["fisher_trace"])
            rec["reward_var"].append(st["reward_var"])
            rec["p_hat"].append(st["p_hat"])
            rec["completion_len"].append(
                batch.completion_lengths.view(-1, G).float().mean(1).numpy())
            out.log({"state": label, "step": _step, "repeat": r,
                     "problems": [p.id for p in probes],
                     **{k: v[-1] for k, v in rec.items()}})
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
            rows_ = per_step(x, y, 0)
            results[name][cname] = {"pearson": summarize(rows_, "pearson"),
                                    "spearman": summarize(rows_, "spearman")}
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


def _cells(res: dict | None) -> list:
    if res is None:
        return [math.nan] * 5
    pe, sp = res["pearson"], res["spearman"]
    return [pe["mean"], pe["p"], sp["mean"], sp["p"], pe["steps"]]


def _tables(head: str, paper_rows: list, results: dict, every: int | None, c: dict) -> str:
    t1 = markdown_table(["comparison", "paper Pearson", "paper p", "our mean Pearson", "p",
                         "our mean Spearman", "p", "steps"], paper_rows)
    rows = []
    for name, by in results.items():
        for key, res in by.items():
            pe, sp = res["pearson"], res["spearman"]
            lag = key if every is None else f"{key} ({key * every} steps)"
            rows.append([name, lag, pe["mean"], pe["p"], sp["mean"], sp["p"],
                         pe["frac_significant"]])
    t2 = markdown_table(["pair", "lag" if every else "comparison", "mean Pearson", "p",
                         "mean Spearman", "p", "steps with p<0.05 (Pearson)"], rows)
    t3 = markdown_table(["cost", "value"], [[k, v] for k, v in c.items()])
    return (f"{head}\n\nPaper (Table 1): Fisher vs variance mean Pearson 0.342 (p=0.008) same "
            f"step, -0.028 (p=0.18) across steps.\n\n{t1}\n{t2}\n{t3}")


def _figures(out: Run, data: dict, steps, results: dict, every: int | None) -> list[str]:
    rng = np.random.default_rng(0)
    fig, axes = figures.subplots(1, 1, w=5.0)
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
    figures.save(fig, out.file("fisher_scatter.png"))

    fig, axes = figures.subplots(1, 1, w=5.0)
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
    figures.save(fig, out.file("fisher_lags.png"))
    return ["fisher_scatter.png", "fisher_lags.png"]
