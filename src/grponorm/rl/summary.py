"""Run summaries: read ``metrics.jsonl``, summarize a run (the averaging window recorded with
it) and format table rows -- shared by ``rl train``, ``rl compare`` and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..runs import markdown_table
from .choices import DIFFICULTIES

__all__ = [
    "LEGACY_FIELDS",
    "SUMMARY_WINDOW",
    "TIMING_FIELDS",
    "read_metrics",
    "read_summary",
    "reward_fields",
    "summarize",
    "summary_cells",
    "summary_table",
    "summary_window",
    "upgrade_fields",
]

#: Metric fields that depend on wall-clock time (excluded when comparing runs for equality).
TIMING_FIELDS = (
    "time_generate",
    "time_forward",
    "time_backward",
    "time_train",
    "time_other",
    "time_step",
    "tokens_per_s",
    "time_eval",
    "time_diag",
    "time_diag_fisher",
)
#: Steps averaged for the start/end training accuracy of a summary.
SUMMARY_WINDOW = 5
#: Field names of records and summaries written by earlier versions -> today's names. Their
#: ``n_zero_variance`` / ``frac_zero_variance`` counted the groups whose rewards were all equal,
#: i.e. today's flat groups (``normalizers.AdvantageStats.n_flat``); the groups left with
#: all-zero advantages (``n_zero_adv``) were not recorded.
LEGACY_FIELDS = {"n_zero_variance": "n_flat", "frac_zero_variance": "frac_flat"}


def upgrade_fields(rec: dict) -> dict:
    """``rec`` with the :data:`LEGACY_FIELDS` names replaced by today's, in place of the old
    key (order kept); a record that already has today's name is returned as it is."""
    renames = {old: new for old, new in LEGACY_FIELDS.items() if old in rec and new not in rec}
    if not renames:
        return rec
    return {renames.get(k, k): v for k, v in rec.items()}


def reward_fields(rewards, problem_ids: list[str], labels: dict[str, str]) -> dict:
    """The reward part of a ``kind="train"`` record (native and TRL backends alike):
    ``reward_mean``, ``acc`` and the accuracy of each slice's prompts (``acc_easy``,
    ``acc_hard``; None when the step drew none). ``rewards``: ``(prompts, G)`` tensor."""
    per_prompt = rewards.mean(dim=1).tolist()  # (prompts,)
    rec = {"reward_mean": float(rewards.mean()), "acc": float((rewards == 1).float().mean())}
    for name in DIFFICULTIES:
        accs = [a for a, pid in zip(per_prompt, problem_ids, strict=True) if labels[pid] == name]
        rec[f"acc_{name}"] = float(np.mean(accs)) if accs else None
    return rec


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> list[dict]:
    """The records of ``metrics.jsonl`` (only ``kind`` ones unless kind is None), with the
    field names of earlier versions read as today's (:func:`upgrade_fields`)."""
    file = Path(run_dir) / "metrics.jsonl"
    recs = [upgrade_fields(json.loads(x)) for x in file.read_text().splitlines() if x.strip()]
    return [r for r in recs if kind is None or r.get("kind") == kind]


def read_summary(run_dir: str | Path) -> dict:
    """A run's ``summary.json``, with the field names of earlier versions read as today's
    (:func:`upgrade_fields`)."""
    return upgrade_fields(json.loads((Path(run_dir) / "summary.json").read_text()))


def summarize(run_dir: str | Path, cfg, window: int = SUMMARY_WINDOW) -> dict:
    """Start/end training accuracy (mean of the first/last ``w`` steps, recorded as
    ``"window"``: ``window``, or half the steps when a run is shorter), evals, the mean shares
    of flat groups and of groups with all-zero advantages (``frac_flat``, ``frac_zero_adv``;
    NaN for a run recorded before the latter was), timing."""
    train = read_metrics(run_dir, "train")
    evals = read_metrics(run_dir, "eval")
    acc = [r["acc"] for r in train]
    w = max(1, min(window, len(acc) // 2 or 1))

    def avg(key, recs=train):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    tok = sum(r["tokens"] for r in train)
    gen = sum(r["time_generate"] for r in train)
    return {
        "normalizer": cfg.normalizer,
        "slice": cfg.slice,
        "seed": cfg.seed,
        "steps": len(train),
        "acc_start": float(np.mean(acc[:w])) if acc else math.nan,
        "acc_end": float(np.mean(acc[-w:])) if acc else math.nan,
        "window": w,
        "eval_start": evals[0]["eval_acc"] if evals else None,
        "eval_end": evals[-1]["eval_acc"] if evals else None,
        "frac_flat": avg("frac_flat"),
        "frac_zero_adv": avg("frac_zero_adv"),
        "time_generate_s": avg("time_generate"),
        "time_train_s": avg("time_train"),
        "time_forward_s": avg("time_forward"),
        "time_backward_s": avg("time_backward"),
        "time_other_s": avg("time_other"),
        "time_step_s": avg("time_step"),
        "tokens_per_s": tok / gen if gen else math.nan,
        "completion_len_mean": avg("completion_len_mean"),
    }


def summary_window(s: dict) -> int:
    """The steps averaged for a summary's start/end accuracy (``"window"``; computed the same
    way for summaries written before it was recorded)."""
    if "window" in s:
        return int(s["window"])
    return max(1, min(SUMMARY_WINDOW, int(s["steps"]) // 2 or 1))


def summary_cells(s: dict) -> list:
    """Table cells of a run summary (or a mean of summaries): train accuracy start/end, eval
    start/end, share of flat groups (``frac_flat``, or the same count under its earlier name
    ``frac_zero_variance``), the time split and completion tokens/s. The time split ends with
    ``/ other`` when the summary has ``time_other_s``."""
    s = upgrade_fields(s)
    split = [s["time_generate_s"], s["time_forward_s"], s["time_backward_s"]]
    times = " / ".join(f"{t:.1f}" for t in split)
    if "time_other_s" in s:
        times += f" / {s['time_other_s']:.2f}"
    return [
        s["acc_start"],
        s["acc_end"],
        "-" if s["eval_start"] is None else f"{s['eval_start']:.3f}",
        "-" if s["eval_end"] is None else f"{s['eval_end']:.3f}",
        s["frac_flat"],
        f"{s['time_step_s']:.1f} ({times})",
        s["tokens_per_s"],
    ]


def summary_table(s: dict) -> str:
    """The one-row markdown table of a run summary (``table.md``)."""
    header = [
        "normalizer",
        "slice",
        "steps",
        f"train acc first {summary_window(s)}",
        f"train acc last {summary_window(s)}",
        "eval start",
        "eval end",
        "flat groups",
        "s/step (gen / fwd / bwd / other)",
        "tok/s",
    ]
    row = [s["normalizer"], s["slice"], s["steps"], *summary_cells(s)]
    return markdown_table(header, [row])
