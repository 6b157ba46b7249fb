"""E3's ranked interval plot: every normalizer's final mean π* as one row (a dot and its 95%
interval), ranked, one panel per optimizer, LR mode and question set.

With 20+ normalizers a panel of learning curves is unreadable; a ranked row per normalizer is
not. Drawn from E3's summary alone (``shared`` / ``tuned`` tables), so a report rebuilt from
committed results draws it without re-running anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plotting

__all__ = ["CURVE_NORMALIZERS", "MAX_LINES", "ranked_figure", "ranked_rows"]

#: At most this many lines in one panel of any E3 figure.
MAX_LINES = 8
#: The normalizers E3's learning-curve panels keep (the Std/No-Std pair, the exact-theory
#: scale and the oracles of the mechanism rows), at most :data:`MAX_LINES`.
CURVE_NORMALIZERS = ("group_std", "none", "bernoulli_std", "rloo", "max_rl", "oracle_std",
                     "oracle_curvature", "oracle_hessian")
FINAL = "final mean π*"
HALF = "95% CI ±"
OPT_NAMES = {"sgd": "SGD", "adam": "Adam"}


def ranked_rows(table: dict, set_name: str) -> list[tuple[str, float, float]]:
    """``(normalizer, final mean π*, 95% half-width)`` of one set in a summary table
    (``summary[mode][optimizer]``: ``"set/normalizer"`` -> row), best first (ties by name)."""
    rows = [(key.split("/", 1)[1], float(r[FINAL]), float(r[HALF]))
            for key, r in table.items() if key.split("/", 1)[0] == set_name]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def ranked_figure(summary: dict, path: str | Path) -> Path:
    """``path``: rows = optimizers x LR modes (shared, tuned), columns = question sets; each
    panel ranks every normalizer by its final mean π* with its 95% interval (seeds from the
    summary); group_std and none are drawn in their colours, the others grey."""
    opts = list(summary["optimizers"])
    sets = sorted({k.split("/", 1)[0] for k in summary["shared"][opts[0]]})
    n_norm = len(ranked_rows(summary["shared"][opts[0]], sets[0]))
    fig, axes = plotting.subplots(2 * len(opts), len(sets), w=5.2, h=0.8 + 0.22 * n_norm)
    for i, o in enumerate(opts):
        for j, mode in enumerate(("shared", "tuned")):
            for k, s in enumerate(sets):
                ax = axes[2 * i + j][k]
                rows = ranked_rows(summary[mode][o], s)
                y = np.arange(len(rows))[::-1]  # best at the top
                for yy, (name, m, half) in zip(y, rows, strict=True):
                    c = plotting.color(name) if name in ("group_std", "none") else "0.35"
                    ax.errorbar([m], [yy], xerr=[[half], [half]], fmt="o", ms=4, capsize=2,
                                color=c or "0.35")
                ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
                lr = (f"LR {summary['shared_lr'][o]:g}" if mode == "shared"
                      else "LR tuned per normalizer (cross-fit)")
                ax.set_title(f"{OPT_NAMES.get(o, o)}, {s.capitalize()}: {lr}", fontsize=9)
                ax.set_xlabel(f"{FINAL} (95% CI, n={summary['seeds']} seeds)")
                ax.grid(axis="x", lw=0.4, alpha=0.5)
    return plotting.save(fig, path)
