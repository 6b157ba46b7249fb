"""E4: |cos| between prompt embeddings of random question pairs (the paper's Figure 1).

Reads top to bottom: distinct questions of the task -> ``n_pairs`` random distinct pairs ->
the texts of the questions involved -> pooled penultimate-layer hidden states (the token prefix
all chat prompts share run once, ``share_prefix``; cached on disk) -> |cos| of every pair, raw
and mean-centered -> table beside the paper's numbers, histogram, inverse-CDF figure,
summary.json.

What is embedded (``use_chat_template``):

- True (default): the question as the policy sees it in training, i.e. the trainer's prompt
  ``chat_prompt(tokenizer, problem_messages(problem))`` -- chat template, the task's system
  message and its worked example, then the question and the generation prompt. Every such
  prompt starts with the same ~130-token prefix (for GSM8K on SmolLM2), whose hidden states are
  identical across prompts (causal attention), so mean pooling over the whole prompt mostly
  measures the shared template. With ``pool_tokens="question"`` (default) mean pooling
  therefore averages only the question's own tokens, read in that full context;
  ``pool_tokens="prompt"`` averages every token. ``"last"`` pooling takes the final prompt
  token (the one the first answer token is predicted from) either way.
- False: the bare question text, tokenized as plain text (a sentence embedding in the usual
  sense, closest to the paper's wording).

Which variant is the paper's. The paper reports the "cosine similarity of sentence embeddings
from the penultimate layer": raw, uncentered hidden states. That is the ``raw`` row. The
``centered`` row subtracts the mean embedding of the questions embedded here first; it removes
the direction every prompt shares (large in raw residual-stream states, see
``grponorm.diagnostics.orthogonality``) and asks whether the prompt-specific parts are
orthogonal, which is what the theory's X_i^T X_j = 0 is about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import plotting
from ..diagnostics import orthogonality as orth
from ..runs import Run, markdown_table

#: The paper's Figure 1 (Qwen2.5-Math-1.5B, GSM8K, 1,000 random question pairs).
PAPER = {
    "model": "Qwen2.5-Math-1.5B",
    "data": "GSM8K",
    "n_pairs": 1000,
    "mean": 0.088,
    "sd": 0.064,
    "frac_below": 0.90,  # "over 90% of pairs below 0.15": a lower bound
    "threshold": 0.15,
}
ARITHMETIC_POOL = 5000  # arithmetic questions generated when pool_size is 0
TEXT_KINDS = ("question", "prompt")


@dataclass
class OrthogonalityConfig:
    """E4 settings (see the module docstring for what is embedded and pooled)."""

    model: str = "embedded"  # HF id, local model folder, .gguf file, or embedded (SmolLM2-135M)
    dtype: str = "auto"  # auto (bf16 on CUDA and native-bf16 CPUs, else fp32), bfloat16, float32
    task: str = "gsm8k"  # gsm8k or arithmetic
    gsm8k_dir: str = ""  # local GSM8K folder ("" = $GRPONORM_GSM8K_DIR, else the hub)
    split: str = "train"  # GSM8K split the questions come from
    level: str = "ops3"  # arithmetic preset (task=arithmetic)
    pool_size: int = 0  # distinct questions to pair up (0 = whole split; arithmetic: 5000 made)
    n_pairs: int = 1000  # random distinct unordered question pairs
    seed: int = 0  # seed of the pairs (and of generated arithmetic questions)
    pooling: str = "mean"  # mean over tokens, or last (final real token)
    layer: int = -2  # hidden_states index; -2 = output of the penultimate block (pre-norm)
    use_chat_template: bool = True  # embed the training chat prompt; no: the bare question text
    pool_tokens: str = "question"  # mean pooling of a chat prompt: question (its tokens) or prompt
    batch_size: int = 16  # prompts per forward pass
    share_prefix: bool = True  # run the token prefix all prompts share (template) only once
    threads: int = 0  # torch CPU threads (0 = auto: the cores this process may use, at most 8)
    device: str = "auto"  # auto (CUDA GPU when present, else CPU), cpu, cuda or cuda:N
    cache_dir: str = ""  # model/embedding cache ("" = $GRPONORM_CACHE or ~/.cache/grponorm)
    out: str = "runs"  # root folder for run outputs

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work (before anything is loaded)."""
        from ..rl import data as rl_data

        if self.task not in ("gsm8k", "arithmetic"):
            raise ValueError(f"task must be gsm8k or arithmetic, got {self.task!r}")
        if self.task == "arithmetic" and self.level not in rl_data.ARITHMETIC_LEVELS:
            raise ValueError(f"unknown arithmetic level {self.level!r}; known: "
                             f"{', '.join(sorted(rl_data.ARITHMETIC_LEVELS))}")
        if self.pooling not in orth.POOLINGS:
            raise ValueError(f"pooling must be one of {orth.POOLINGS}, got {self.pooling!r}")
        if self.pool_tokens not in TEXT_KINDS:
            raise ValueError(f"pool_tokens must be one of {TEXT_KINDS}, got {self.pool_tokens!r}")
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1, got {self.n_pairs}")
        if self.pool_size < 0 or self.pool_size == 1:
            raise ValueError(f"pool_size must be 0 or >= 2, got {self.pool_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _questions(cfg: OrthogonalityConfig) -> list:
    """Distinct questions (first occurrence of each text), in data order."""
    from ..rl import data as rl_data

    if cfg.task == "gsm8k":
        problems = rl_data.load_gsm8k(cfg.split, cfg.gsm8k_dir or None)
    else:
        problems = rl_data.arithmetic_level(cfg.level, cfg.pool_size or ARITHMETIC_POOL,
                                            seed=cfg.seed)
    seen, distinct = set(), []
    for p in problems:
        if p.question not in seen:
            seen.add(p.question)
            distinct.append(p)
    if cfg.pool_size:
        distinct = distinct[: cfg.pool_size]
    return distinct


def _texts(cfg: OrthogonalityConfig, tokenizer, problems) -> tuple[list[str], list | None, str]:
    """Texts to embed, optional pooled character spans, and a one-line description."""
    from ..rl import data as rl_data
    from ..rl.models import chat_prompt

    if not cfg.use_chat_template:
        return [p.question for p in problems], None, "the bare question text"
    texts = [chat_prompt(tokenizer, rl_data.problem_messages(p)) for p in problems]
    if cfg.pooling == "last":
        return texts, None, "the training chat prompt, last token (generation prompt)"
    if cfg.pool_tokens == "prompt":
        return texts, None, "the training chat prompt, mean over all its tokens"
    spans = []
    for text, prob in zip(texts, problems):
        start = text.rfind(prob.question)  # the question is the last user turn
        if start < 0:
            raise ValueError(f"question of {prob.id!r} not found verbatim in its chat prompt; "
                             "use --pool-tokens prompt or --no-use-chat-template")
        spans.append((start, start + len(prob.question)))
    return texts, spans, "the training chat prompt, mean over the question's tokens in context"


def _hist(raw, cen, path, title: str) -> Path:
    fig, axes = plotting.subplots(1, 1, w=6.0, h=3.8)
    ax = axes[0][0]
    bins = np.linspace(0.0, 1.0, 51)
    for c, label, color in ((raw, "raw (paper's definition)", "tab:blue"),
                            (cen, "mean-centered", "tab:orange")):
        ax.hist(c, bins=bins, weights=np.full(len(c), 1.0 / len(c)), alpha=0.55, color=color,
                label=f"{label}: mean {np.mean(c):.3f}")
    ax.axvline(PAPER["threshold"], color="k", ls="--", lw=1, label="0.15")
    ax.axvline(PAPER["mean"], color="tab:red", ls=":", lw=1.2,
               label=f"paper mean {PAPER['mean']} ({PAPER['model']})")
    ax.set_xlabel("|cos| between prompt embeddings")
    ax.set_ylabel("fraction of pairs")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return plotting.save(fig, path)


def _cdf(raw, cen, path, title: str) -> Path:
    fig, axes = plotting.subplots(1, 1, w=6.0, h=3.8)
    ax = axes[0][0]
    for c, label, color in ((raw, "raw (paper's definition)", "tab:blue"),
                            (cen, "mean-centered", "tab:orange")):
        x = np.sort(c)
        y = np.arange(1, len(x) + 1) / len(x)
        ax.step(np.concatenate([[0.0], x, [1.0]]), np.concatenate([[0.0], y, [1.0]]),
                where="post", color=color, label=label)
    ax.axvline(PAPER["threshold"], color="k", ls="--", lw=1)
    ax.plot([PAPER["threshold"]], [PAPER["frac_below"]], marker="^", color="tab:red", ms=8,
            ls="none", label=f"paper: >{PAPER['frac_below']:.0%} of pairs below 0.15")
    ax.axvline(PAPER["mean"], color="tab:red", ls=":", lw=1.2, label="paper mean 0.088")
    ax.set_xlabel("|cos| threshold x")
    ax.set_ylabel("fraction of pairs with |cos| <= x")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return plotting.save(fig, path)


def run(cfg: OrthogonalityConfig, progress: bool = True) -> dict:
    """Run E4 and write table.md, summary.json, pairs.npz and the two figures."""
    cfg.validate()
    import torch

    from ..rl.models import ModelConfig, default_cache_dir, load_model, resolved_dtype
    from ..rl.session import run_threads

    torch.set_num_threads(run_threads(cfg.threads)[0])
    out = Run.create(cfg.out, "diag_orthogonality", cfg)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()

    # 1. questions and pairs --------------------------------------------------------------
    problems = _questions(cfg)
    pairs = orth.random_pairs(len(problems), cfg.n_pairs, cfg.seed)  # (P, 2) into problems
    involved, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(pairs.shape)  # (P, 2) into `involved`
    chosen = [problems[k] for k in involved.tolist()]

    # 2. embeddings -------------------------------------------------------------------------
    t0 = time.perf_counter()
    mcfg = ModelConfig(model=cfg.model, dtype=cfg.dtype, cache_dir=str(cache), device=cfg.device)
    dtype, dtype_reason = resolved_dtype(mcfg)
    model, tok = load_model(mcfg)
    load_s = time.perf_counter() - t0
    texts, spans, what = _texts(cfg, tok, chosen)
    stats: dict = {}
    t0 = time.perf_counter()
    E = orth.prompt_embeddings(
        model, tok, texts, layer=cfg.layer, pooling=cfg.pooling, spans=spans,
        add_special_tokens=not cfg.use_chat_template, batch_size=cfg.batch_size,
        share_prefix=cfg.share_prefix, cache_dir=cache, progress=progress,
        stats=stats)  # (Q, hidden)
    embed_s = time.perf_counter() - t0
    n_layers = getattr(model.config, "num_hidden_layers", None)
    del model

    # 3. cosines ----------------------------------------------------------------------------
    raw = orth.abs_cosines(E, local)  # (P,)
    cen = orth.abs_cosines(orth.center(E), local)  # (P,)
    s_raw, s_cen = orth.cosine_summary(raw), orth.cosine_summary(cen)
    E64 = E.astype(np.float64)
    common = float(np.linalg.norm(E64.mean(0)) / np.linalg.norm(E64, axis=1).mean())

    # 4. table, figures, summary ------------------------------------------------------------
    source = f"GSM8K {cfg.split}" if cfg.task == "gsm8k" else f"arithmetic {cfg.level}"
    blocks = f" of {n_layers} blocks" if n_layers else ""
    layer_txt = (f"hidden_states[{cfg.layer}]" + (
        f" (output of block {n_layers - 1}{blocks}, before the final norm)"
        if cfg.layer == -2 and n_layers else ""))
    header = ["", "mean \\|cos\\|", "sd", "q05", "median", "q95", "frac < 0.15", "pairs"]
    rows = [
        [f"paper ({PAPER['model']}, GSM8K)", PAPER["mean"], PAPER["sd"], "", "", "",
         f">{PAPER['frac_below']}", PAPER["n_pairs"]],
        *[[name, s["mean"], s["sd"], s["q05"], s["q50"], s["q95"], s["frac_below"], s["n"]]
          for name, s in (("ours, raw (paper's definition)", s_raw),
                          ("ours, mean-centered", s_cen))],
    ]
    rate = len(texts) / embed_s if embed_s > 0 else float("nan")
    shared = stats.get("shared_prefix_tokens", 0)
    timing = ("read from the embedding cache" if stats.get("cache_hit") else
              f"{embed_s:.1f} s, {rate:.2f} questions/s, "
              f"{stats['n_tokens'] / max(embed_s, 1e-9):.0f} tokens/s run"
              + (f" (a {shared}-token common prefix run once)" if shared else ""))
    table = (
        f"E4 orthogonality: {cfg.model} ({dtype}), {len(chosen)} distinct questions of "
        f"{len(problems)} ({source}), {cfg.n_pairs} random pairs (seed {cfg.seed}); "
        f"{layer_txt}, {cfg.pooling} pooling over {what}.\n\n"
        + markdown_table(header, rows)
        + "\nThe paper's definition (cosine similarity of penultimate-layer sentence embeddings) "
        "is the raw row. Centering subtracts the mean embedding of these questions, removing "
        f"the direction all prompts share (its norm is {common:.2f} of the mean embedding "
        "norm here).\n"
        f"Embedding {len(texts)} questions: {timing}; model load {load_s:.1f} s.\n")
    out.write_text("table.md", table)
    title = f"{cfg.model}, {source}, {cfg.n_pairs} pairs, {cfg.pooling} pooling"
    hist = _hist(raw, cen, out.file("orthogonality_hist.png"), title)
    cdf = _cdf(raw, cen, out.file("orthogonality_cdf.png"), title)
    np.savez_compressed(out.file("pairs.npz"), pairs=pairs, raw=raw, centered=cen,
                        ids=np.array([p.id for p in chosen]))

    summary = {
        "experiment": "E4",
        "model": cfg.model,
        "dtype": dtype,
        "dtype_reason": dtype_reason,
        "source": source,
        "embedded_text": what,
        "layer": cfg.layer,
        "n_layers": n_layers,
        "pooling": cfg.pooling,
        "n_questions_pool": len(problems),
        "n_questions_embedded": len(texts),
        "n_pairs": cfg.n_pairs,
        "raw": s_raw,
        "centered": s_cen,
        "paper": PAPER,
        "paper_definition": "raw",
        "common_direction_share": common,
        "hidden_size": int(E.shape[1]),
        "embed_seconds": round(embed_s, 3),
        "questions_per_s": rate,
        "tokens": stats.get("n_tokens", 0),
        "shared_prefix_tokens": stats.get("shared_prefix_tokens", 0),
        "cache_hit": bool(stats.get("cache_hit")),
        "cache_path": stats.get("cache_path"),
        "load_seconds": round(load_s, 3),
        "figures": [hist.name, cdf.name],
        "run_dir": str(out.path),
    }
    out.finish(summary)
    return summary


# ------------------------------------------------------------------------------ report

TITLE = "Orthogonality of prompt representations"
PAPER_LINE = (f"mean |cos| {PAPER['mean']}, sd {PAPER['sd']}, >{PAPER['frac_below']:.0%} below "
              f"{PAPER['threshold']} ({PAPER['model']})")
PROFILES = {
    "quick": dict(n_pairs=100),
    "cpu": {},
    "paper": dict(model="Qwen/Qwen2.5-Math-1.5B"),
}


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: |cos| mean / sd / share below the threshold, raw and centered."""
    rows = []
    paper = f"{PAPER['mean']} / {PAPER['sd']} / > {PAPER['frac_below']:.2f}"
    for variant in ("raw", "centered"):
        st = s[variant]
        diff = st["mean"] - PAPER["mean"]
        verdict = ("reproduced" if abs(diff) < 0.03 and st["frac_below"] > PAPER["frac_below"]
                   else f"differs (mean {diff:+.3f}, {100 * st['frac_below']:.0f}% below "
                   f"{PAPER['threshold']})")
        label = "raw (paper's definition)" if variant == s.get("paper_definition") else variant
        rows.append([f"|cos| {label}: mean / sd / share < {PAPER['threshold']}", paper,
                     f"{st['mean']:.3f} / {st['sd']:.3f} / {st['frac_below']:.2f}", verdict])
    return rows
