"""E6's base-model pass rates: how much within-group variance each slice (and each candidate
level) offers before training, and every training question's base pass rate for the "benefit by
difficulty" bins.

A one-digit level holds at most 100 distinct questions, so rates are per distinct question
(``k = pass_rate_k`` samples each, the trainer's prompt, temperature and token limit), cached on
disk by ``rl.problems.measure_pass_rates``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .. import plotting
from ..rl.config import TrainConfig
from ..rl.policy import Policy, load_policy
from ..rl.problems import (
    build_problems,
    difficulty_scores,
    distinct_questions,
    measure_pass_rates,
    pass_rate_cache,
    slice_labels,
)
from ..rl.session import run_threads
from ..runs import Run

__all__ = ["histogram_entry", "histogram_figure", "measure_spread"]

#: Questions per candidate level when spread_n is 0 (all questions are measured for the slices).
CANDIDATE_QUESTIONS = 64


def _rates(base: TrainConfig, policy: Policy, problems: list, progress: bool) -> dict[str, float]:
    """Base pass rate of each distinct question in ``problems`` (question text -> rate)."""
    probs = distinct_questions(problems, len(problems))
    prompts = policy.prompts(probs)
    rates = measure_pass_rates(
        policy.engine, prompts, probs, k=base.pass_rate_k, temperature=base.temperature,
        max_new_tokens=base.max_new_tokens, seed=base.data_seed,
        cache_file=pass_rate_cache(base, prompts, probs), progress=progress)
    return {p.question: rates[p.id] for p in probs}


def histogram_entry(rates: list[float], k: int) -> dict:
    """Questions, per-sample accuracy, histogram of correct-of-k counts, zero-variance share."""
    counts = [round(r * k) for r in rates]
    return {
        "n": len(counts),
        "per_sample_acc": float(np.mean(counts)) / k if counts else None,
        "hist": [counts.count(j) for j in range(k + 1)],
        "frac_zero_variance_groups": (float(np.mean([c in (0, k) for c in counts]))
                                      if counts else None),
    }


def measure_spread(base: TrainConfig, slices: list[str], levels: list[str], spread_n: int,
                   out: Run, progress: bool) -> dict:
    """Histograms for each slice (its first ``spread_n`` distinct questions, 0 = all) and each
    candidate arithmetic level in ``levels``, plus ``question -> base pass rate`` of every
    distinct training question of the slices (``"rates"``); a candidate level gets
    ``spread_n`` (or :data:`CANDIDATE_QUESTIONS`) questions. Draws ``success_hist.png``."""
    torch.set_num_threads(run_threads(base.threads)[0])
    pool, _ = build_problems(base)
    policy = load_policy(base)
    labels = slice_labels(base, pool, difficulty_scores(base, pool, policy, progress))
    k = base.pass_rate_k
    result: dict = {"slices": {}, "levels": {}, "rates": {}}
    for s in slices:
        probs = [p for p in pool if s == "all" or labels[p.id] == s]
        rates = _rates(base, policy, probs, progress)
        result["rates"].update(rates)
        shown = list(rates.values())[: spread_n or None]
        result["slices"][s] = histogram_entry(shown, k)
    for lv in levels:  # candidates: a histogram only, so spread_n (or 64) questions suffice
        lv_pool, _ = build_problems(replace(base, levels=[lv]))
        lv_pool = distinct_questions(lv_pool, spread_n or CANDIDATE_QUESTIONS)
        rates = _rates(base, policy, lv_pool, progress)
        result["levels"][lv] = histogram_entry(list(rates.values()), k)
    histogram_figure(result, k, out)
    return result


def histogram_figure(result: dict, k: int, out: Run) -> None:
    """``success_hist.png``: one panel per slice and candidate level (4 per row)."""
    panels = [(f"slice {s}", v) for s, v in result["slices"].items()]
    panels += [(f"level {lv}", v) for lv, v in result["levels"].items()]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plotting.subplots(nrows, ncols, w=3.4, h=3.0)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, v) in zip(axes.flat, panels, strict=False):
        ax.bar(range(k + 1), v["hist"], color="tab:gray")
        ax.set_xlabel(f"correct of {k} samples")
        ax.set_ylabel("questions")
        acc = v["per_sample_acc"] or 0.0
        ax.set_title(f"{name}: {v['n']} q, {100 * acc:.0f}%/sample, "
                     f"{100 * (v['frac_zero_variance_groups'] or 0):.0f}% zero-var", fontsize=8)
    plotting.save(fig, out.file("success_hist.png"))
