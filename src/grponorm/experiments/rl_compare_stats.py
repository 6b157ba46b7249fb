"""E6's verdicts: paired comparisons over seeds (``grponorm.stats.compare``) of Std vs No-Std at
the shared learning rate, at each normalizer's tuned learning rate, per optimizer, and by the
base pass rate of the prompts.

Every comparison pairs runs by seed: the same seed gives both arms the same problems in the same
order and the same LoRA init, so the per-seed difference removes the draw they share.

Tuned learning rate: for each (slice, normalizer, optimizer) the LR with the best mean held-out
accuracy at the end (``eval_end``) is chosen, and the arms are then compared on last-window
*training* sample accuracy -- other samples than the ones the choice was made on, which keeps the
winner's curse small (choosing and comparing on the same numbers would favour whichever arm had
the luckier draw).
"""

from __future__ import annotations

import numpy as np

from ..stats import compare, effect_reading
from .rows import effect_cell, entry

__all__ = ["EXPECTED", "PAPER", "PAPER_EFFECT", "bin_comparisons", "comparisons", "tuned_lr"]

#: The paper's Figure 2 (Qwen2.5-Math-1.5B, GSM8K; smoothed training sample accuracy, %).
PAPER = {"easy": {"group_std": 92, "none": 91}, "hard": {"group_std": 81, "none": 76}}
#: The paper's direction (Std ahead) and size of the effect (a fraction), per slice.
EXPECTED = +1
PAPER_EFFECT = {s: (p["group_std"] - p["none"]) / 100 for s, p in PAPER.items()}


#: The metrics compared at the shared LR: the pre-registered primary one (train accuracy over
#: the last ``primary_window`` steps, docs/e6-preregistration.md) first, then the secondary ones.
METRICS = ("acc_primary", "acc_end", "eval_end", "eval_mean")


def _key(slice_, norm, opt, lr) -> str:
    return f"{slice_}/{norm}/{opt}/lr{lr:g}"


def _paired(points: dict, ka: str, kb: str, metric: str):
    """Per-seed values of ``metric`` for the seeds both points ran (paired by seed)."""
    a = {r["seed"]: r[metric] for r in points.get(ka, []) if r.get(metric) is not None}
    b = {r["seed"]: r[metric] for r in points.get(kb, []) if r.get(metric) is not None}
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _row(what: str, slice_: str, metric: str, a: list, b: list, extra: dict) -> dict:
    """One comparison: its numbers, ``text`` (interval, n) and ``cell`` (the verdict column,
    with the seeds that would resolve the paper's effect), formatted as every experiment's are
    (``rows.entry``); ``verdict`` is the bare label."""
    c = compare(a, b, paired=True)
    effect = PAPER_EFFECT.get(slice_, 0.03)
    cells = entry(c, EXPECTED, effect)
    reading = effect_reading(np.subtract(a, b), EXPECTED * effect) if len(a) >= 1 else None
    largest = None if reading is None or not reading.resolvable else reading.largest
    smaller = bool(reading is not None and reading.smaller)
    return {"what": what, "slice": slice_, "metric": metric, **extra, "n": c.n,
            "mean_a": float(np.mean(a)) if a else None, "mean_b": float(np.mean(b)) if b else None,
            "diff": c.diff, "low": c.low, "high": c.high, "p": c.p,
            "verdict": c.verdict(EXPECTED), "paper_effect": effect,
            "seeds_needed": c.seeds_needed(effect) if c.n >= 2 else None,
            "largest_allowed": largest, "smaller_than_paper": smaller,
            "text": cells["text"],
            "cell": effect_cell(cells["verdict"], largest, EXPECTED * effect, smaller)}


def tuned_lr(points: dict, slice_: str, norm: str, opt: str, lrs: list) -> float | None:
    """The LR with the best mean ``eval_end`` (held-out) over seeds; None if none ran."""
    best, best_lr = -np.inf, None
    for lr in lrs:
        ev = [r["eval_end"] for r in points.get(_key(slice_, norm, opt, lr), [])
              if r.get("eval_end") is not None]
        if ev and np.mean(ev) > best:
            best, best_lr = float(np.mean(ev)), lr
    return best_lr


def comparisons(points: dict, slices: list, arms: tuple, shared: tuple,
                sweeps: dict[str, list], sweep_slices: list) -> list[dict]:
    """Std (``arms[0]``) minus No-Std (``arms[1]``), paired by seed.

    Args:
        points: ``slice/norm/opt/lrX`` -> per-seed run summaries.
        shared: ``(optimizer, lr)`` of the main grid.
        sweeps: optimizer -> the LRs swept with it, on ``sweep_slices``.
    """
    a, b = arms
    opt0, lr0 = shared
    rows = []
    for s in slices:
        for metric in METRICS:
            xa, xb = _paired(points, _key(s, a, opt0, lr0), _key(s, b, opt0, lr0), metric)
            if xa:
                rows.append(_row(f"shared LR ({opt0}, {lr0:g})", s, metric, xa, xb,
                                 {"optimizer": opt0, "lr_a": lr0, "lr_b": lr0}))
        for opt, lrs in (sweeps.items() if s in sweep_slices else ()):
            la, lb = tuned_lr(points, s, a, opt, lrs), tuned_lr(points, s, b, opt, lrs)
            if la is None or lb is None or len(lrs) < 2 and opt == opt0:
                continue
            xa, xb = _paired(points, _key(s, a, opt, la), _key(s, b, opt, lb), "acc_end")
            if xa:
                rows.append(_row(f"tuned LR ({opt}: {la:g} vs {lb:g})", s, "acc_end", xa, xb,
                                 {"optimizer": opt, "lr_a": la, "lr_b": lb}))
    return rows


def bin_comparisons(curves: dict, rates: dict[str, float], questions: dict[str, str],
                    slice_: str, arms: tuple, shared: tuple, edges: list[float]) -> list[dict]:
    """Std minus No-Std accuracy on the prompts of each base-pass-rate bin (second half of
    training), paired by seed: is the benefit smallest near 50% success?

    Args:
        curves: ``(point key, seed)`` -> the run's train records.
        rates: question text -> base pass rate. questions: problem id -> question text.
        edges: inner bin edges, e.g. ``[0.25, 0.5, 0.75]``.
    """
    bounds = [0.0, *edges, 1.0 + 1e-9]
    opt, lr = shared
    per_arm: dict[str, dict[int, list]] = {}
    for arm in arms:
        key = _key(slice_, arm, opt, lr)
        per_arm[arm] = {}
        for (k, seed), recs in curves.items():
            if k != key:
                continue
            late = recs[len(recs) // 2:]
            sums = np.zeros((len(bounds) - 1, 2))  # (bin, [sum of acc, count])
            for r in late:
                for pid, acc in zip(r["problems"], r.get("group_acc") or [], strict=False):
                    rate = rates.get(questions.get(pid, ""))
                    if rate is None:
                        continue
                    b = int(np.searchsorted(bounds, rate, side="right") - 1)
                    sums[b] += (acc, 1)
            per_arm[arm][seed] = sums
    rows = []
    seeds = sorted(set(per_arm[arms[0]]) & set(per_arm[arms[1]]))
    for b in range(len(bounds) - 1):
        xa, xb, count = [], [], 0
        for seed in seeds:
            sa, sb = per_arm[arms[0]][seed][b], per_arm[arms[1]][seed][b]
            if sa[1] and sb[1]:
                xa.append(sa[0] / sa[1])
                xb.append(sb[0] / sb[1])
                count += int(sa[1])
        if xa:
            label = f"base pass rate [{bounds[b]:.2f}, {min(bounds[b + 1], 1.0):.2f}]"
            rows.append(_row(label, slice_, "late group accuracy", xa, xb,
                             {"bin": [bounds[b], min(bounds[b + 1], 1.0)], "prompts": count}))
    return rows
