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
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..report import figures
from ..rl import trainer
from ..runs import Run, environment, markdown_table

#: CompareConfig fields that are not TrainConfig fields.
OWN_FIELDS = (
    "normalizers",
    "slices",
    "seeds",
    "smooth",
    "measure_spread",
    "spread_n",
    "out",
    "resume",
)


@dataclass
class CompareConfig:
    """E6 settings: the comparison grid, then the training settings shared by every run."""

    normalizers: list = field(default_factory=lambda: ["group_std", "none"])  # compared
    slices: list = field(default_factory=lambda: ["easy", "hard"])  # difficulty slices (panels)
    seeds: list = field(default_factory=lambda: [0])  # training seeds (same for every run)
    smooth: int = 5  # moving-average window of the accuracy curves (steps)
    measure_spread: bool = True  # measure base per-prompt success rates and plot a histogram
    spread_n: int = 32  # problems per slice for that histogram
    model: str = "embedded"  # HF id, local model folder, .gguf file, or embedded (SmolLM2-135M)
    dtype: str = "bfloat16"  # parameter dtype: float32 or bfloat16
    lora_r: int = 16  # LoRA rank (0 = full fine-tuning)
    lora_alpha: float = 32.0  # LoRA alpha (update scaled by alpha / r)
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")  # modules given adapters
    task: str = "arithmetic"  # arithmetic or gsm8k
    levels: list = field(default_factory=lambda: ["add1", "mul1"])  # arithmetic presets pooled
    gsm8k_dir: str = ""  # local GSM8K folder ("" = $GRPONORM_GSM8K_DIR, else the hub)
    slice_by: str = "level"  # level (first level easy), steps, pass_rate (base model) or judge
    judge_model: str = "embedded"  # slice_by=judge: model asked "Easy or Hard?" (paper: Qwen2-7B)
    easy_max_steps: int = 3  # slice_by=steps: easy = at most this many reasoning steps
    pass_rate_threshold: float = 0.5  # slice_by=pass_rate: easy = base pass rate >= this
    pass_rate_k: int = 8  # slice_by=pass_rate: samples per problem to measure it (cached)
    n_train: int = 256  # training problems (per level for arithmetic; 0 = all of GSM8K train)
    n_eval: int = 32  # held-out eval questions never trained on (per arithmetic level; 0 = none)
    data_seed: int = 0  # seed of the problem pool (fixed across training seeds)
    normalizer_options: str = ""  # options for every normalizer, e.g. eps=1e-4
    G: int = 8  # completions sampled per prompt
    prompts_per_step: int = 4  # prompts (groups) per step
    steps: int = 25  # training steps per run
    lr: float = 5e-4  # AdamW learning rate (constant)
    max_grad_norm: float = 1.0  # gradient clipping threshold (0 = none)
    max_new_tokens: int = 12  # completion length limit
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts
    loss_agg: str = "seq_mean"  # seq_mean (GRPO) or token_sum (Dr. GRPO)
    kl_coef: float = 0.0  # k3 KL penalty to the base model (0 = none)
    clip_eps: float = 0.2  # PPO clip range (0 = none)
    updates_per_batch: int = 1  # optimizer updates per sampled batch
    micro_batch: int = 0  # rows per forward/backward chunk (0 = whole batch)
    rollout: str = "decode"  # rollout engine: decode (own loop), generate (transformers) or vllm
    share_prompt: bool = True  # run each prompt once per group (KV cache shared; same math)
    share_prefix: bool = True  # run the token prefix common to a batch's prompts once (same math)
    old_logprobs: str = "auto"  # updates_per_batch>1: auto (engine's if given), rollout, recompute
    attention: str = "auto"  # rollout/log-prob attention: gqa (no KV copy), model, auto (CPU: gqa)
    eval_every: int = 10  # held-out eval every N steps (and at start and end; 0 = never)
    eval_temperature: float = 0.0  # eval sampling temperature (0 = greedy)
    checkpoint_every: int = 5  # checkpoint every N steps of each run
    threads: int = 0  # torch CPU threads (0 = torch's default)
    device: str = "auto"  # auto (CUDA GPU when present, else CPU), cpu, cuda or cuda:N
    cache_dir: str = ""  # model/pass-rate cache ("" = $GRPONORM_CACHE or ~/.cache/grponorm)
    out: str = "runs"  # root folder for run outputs
    resume: str = ""  # compare folder to continue (finished runs are skipped)


def train_config(
    cfg: CompareConfig, normalizer: str, slice_: str, seed: int, run_dir: Path
) -> trainer.TrainConfig:
    """The TrainConfig of one sub-run: the shared settings plus this grid point."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in OWN_FIELDS}
    return trainer.TrainConfig(
        **shared,
        normalizer=normalizer,
        slice=slice_,
        seed=int(seed),
        run_dir=str(run_dir),
        out=cfg.out,
    )


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
    import torch

    from ..rl import data as rl_data
    from ..rl.models import ModelConfig, chat_prompt, load_model
    from ..rl.rollout import make_engine

    base = train_config(cfg, cfg.normalizers[0], "all", cfg.seeds[0], out.path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pool, _ = trainer.build_problems(base)
    mcfg = ModelConfig(
        model=cfg.model, dtype=cfg.dtype, device=cfg.device,
        **({"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}),
    )
    model, tok = load_model(mcfg)
    engine = make_engine(cfg.rollout, model, tok, share_prefix=cfg.share_prefix,
                         gqa_attention=trainer.gqa_wanted(base, model))

    def prompt_of(p):
        return chat_prompt(tok, rl_data.problem_messages(p))

    prompts = [prompt_of(p) for p in pool]
    scores = trainer.difficulty_scores(base, pool, prompt_of, (model, tok, engine), progress)
    labels = trainer.slice_labels(base, pool, scores)
    result = {}
    for s in cfg.slices:
        # distinct questions only: one-digit levels repeat questions within the pool
        seen, chosen = set(), []
        for p, text in zip(pool, prompts, strict=True):
            if labels[p.id] == s and p.question not in seen:
                seen.add(p.question)
                chosen.append((p, text))
            if len(chosen) == cfg.spread_n:
                break
        probs = [p for p, _ in chosen]
        key = trainer._pass_rate_cache(base, [t for _, t in chosen], probs)
        rates = trainer.measure_pass_rates(
            engine,
            [t for _, t in chosen],
            probs,
            k=cfg.pass_rate_k,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.data_seed,
            cache_file=key,
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
    fig, axes = figures.subplots(1, len(cfg.slices), w=4.2, h=3.2)
    for ax, s in zip(axes[0], cfg.slices, strict=True):
        h = result[s]["hist"]
        ax.bar(range(len(h)), h, color="tab:gray")
        ax.set_xlabel(f"correct of {cfg.pass_rate_k} samples")
        ax.set_ylabel("questions")
        acc = result[s]["per_sample_acc"]
        ax.set_title(f"{s}: {result[s]['n']} questions, {100 * (acc or 0):.0f}% per sample")
    figures.save(fig, out.file("success_hist.png"))
    return result


def _figure(cfg: CompareConfig, curves: dict, path: Path) -> None:
    fig, axes = figures.subplots(1, len(cfg.slices), w=4.8, h=3.4)
    for ax, s in zip(axes[0], cfg.slices, strict=True):
        for norm in cfg.normalizers:
            ys = [c for (sl, nm, _), c in curves.items() if sl == s and nm == norm]
            if not ys:
                continue
            n = min(len(y) for y in ys)
            ys = np.array([smooth(y[:n], cfg.smooth) for y in ys])
            figures.band(ax, np.arange(1, n + 1), ys, label=norm, c=figures.color(norm))
        ax.set_title(f"{s.capitalize()} (smoothed, window {cfg.smooth})")
        ax.set_xlabel("step")
        ax.set_ylabel("training sample accuracy")
        ax.legend()
    figures.save(fig, path)


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
        saved = json.loads((path / "config.json").read_text())["config"]
        names = {f.name for f in fields(CompareConfig)}
        cfg = CompareConfig(**{k: v for k, v in saved.items() if k in names})
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
                tcfg = trainer.TrainConfig(resume=str(sub))
            summary = trainer.run(tcfg, progress=progress)
        results.append(summary)
        curves[(s, norm, seed)] = [r["acc"] for r in trainer.read_metrics(sub)]
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
            rows.append([s, norm, len(rs), *trainer.summary_cells(entry)])
    header = [
        "slice",
        "normalizer",
        "seeds",
        f"train acc first {trainer.SUMMARY_WINDOW}",
        f"train acc last {trainer.SUMMARY_WINDOW}",
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
