"""E6's report rows: every comparison of an ``rl compare`` summary in reading order (the
pre-registered reading first), rliable's estimates, the base-rate caveat and the pass-rate
bins, as the report's paper-vs-ours rows."""

from __future__ import annotations

from ..stats.paired import Verdict
from .rl_compare_bins import EXPECTATION
from .rl_compare_stats import INTERACTION, METRICS, PAPER
from .rows import VerdictCell, _num

__all__ = ["METRIC_LABELS", "READINGS", "ordered", "report_rows"]

READINGS = ("confirmatory", "shared", "all seeds", "extension", "tuned", "interaction",
            "fixed LR")


def ordered(rows: list[dict]) -> list[dict]:
    """``rows`` in :data:`READINGS` order, the primary metric first (stable otherwise)."""
    def rank(r):
        reading = r.get("reading")
        return (r.get("metric") not in (METRICS[0], None) and reading != "interaction",
                READINGS.index(reading) if reading in READINGS else len(READINGS))
    return sorted(rows, key=rank)



#: Report labels of the compared metrics (the primary one first: docs/e6-preregistration.md).
METRIC_LABELS = {
    "acc_primary": "PRIMARY: train sample accuracy, last {window} steps",
    "acc_end": "train sample accuracy, last window",
    "eval_end": "held-out greedy accuracy, end",
    "eval_mean": "held-out greedy accuracy, mean of the evals",
}


#: How far (a fraction) a slice's training accuracy may sit outside the paper's range before
#: the base-rate row says it differs (the regimes are then not comparable).
BASE_RATE_TOLERANCE = 0.10


def _slice_label(s: str) -> str:
    return "Hard − Easy" if s == INTERACTION else s.capitalize()


def report_rows(s: dict) -> list[list]:
    """Paper-vs-ours rows: every comparison of the summary, with its interval, n and verdict
    (the pre-registered reading first), rliable's estimates, the training accuracy level
    against the paper's (the base-rate caveat) and the pass-rate bins."""
    rows = []
    for c in ordered(s.get("comparisons", [])):
        paper = PAPER.get(c["slice"])
        ref = f"≈{paper['group_std']}% vs {paper['none']}%" if paper else "-"
        if c["metric"].startswith("eval"):
            ref = "(not reported)"
        label = METRIC_LABELS.get(c["metric"], c["metric"]).format(
            window=s.get("primary_window", 10))
        if c.get("reading") == "interaction":
            ours = (f"Hard gap {c['mean_a']:+.3f} vs Easy gap {c['mean_b']:+.3f}; difference "
                    f"{c['text']}" if c["mean_a"] is not None else c["text"])
        else:
            ours = (f"{c['mean_a']:.3f} vs {c['mean_b']:.3f}; Std − No-Std {c['text']}"
                    if c["mean_a"] is not None else c["text"])
        rows.append([f"{_slice_label(c['slice'])}: {label}, {c['what']}", ref, ours, c["cell"]])
    for c in s.get("rliable", []):
        rows.append([f"{_slice_label(c['slice'])}: {c['what']}", "(not reported)", c["text"],
                     c["cell"]])
    for sl, b in (s.get("base_rates") or {}).items():
        if not b.get("paper"):
            continue
        lo, hi = b["paper"][0] / 100, b["paper"][-1] / 100
        off = b["acc_primary"] < lo - BASE_RATE_TOLERANCE or b["acc_primary"] > hi + \
            BASE_RATE_TOLERANCE
        cell = (f"{Verdict.DIFFERS.value}: a different regime from the paper's (more than "
                f"{100 * BASE_RATE_TOLERANCE:.0f} pp outside its range), which bounds what "
                "this slice can say about the paper's gap" if off
                else f"{Verdict.MEASURED.value} (within {100 * BASE_RATE_TOLERANCE:.0f} pp of "
                     "the paper's range)")
        rows.append([f"{sl.capitalize()}: training accuracy level (base-rate caveat)",
                     f"≈{b['paper'][0]}–{b['paper'][-1]}%",
                     f"{b['acc_start']:.3f} over the first steps, {b['acc_primary']:.3f} over "
                     f"the primary window ({b['runs']} runs, both arms)",
                     VerdictCell(cell, Verdict.DIFFERS if off else Verdict.MEASURED)])
    for c in s.get("bins", []):
        rows.append([f"{c['slice'].capitalize()}: {c['what']}", EXPECTATION,
                     f"{c['text']}; change in success vs p̂: Std {_num(c['change_a'])}, "
                     f"No-Std {_num(c['change_b'])}", c["cell"]])
    return rows
