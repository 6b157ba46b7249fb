"""E6 by the base pass rate: where on the p̂ axis does Std act?

Each training problem's base pass rate p̂ (``rl_compare_spread``: k samples of the untrained
model, measured before training) puts it in a bin. Within a seed both arms draw the same
problems in the same order, so each (step, problem) of the primary window gives one paired
difference: Std's group accuracy on that problem minus No-Std's. Pooled over seeds per bin, with
a bootstrap clustered by seed (``stats.clustered``), this is Std − No-Std in the change of that
problem's success (the base rate is the same for both arms and cancels); each arm's own change
(accuracy − p̂) is shown beside it.

Two readings: at the shared learning rate, and at each arm's cross-fitted tuned learning rate
(the seed's LR of the tuned rows, ``rl_compare_stats.tuned_comparisons``). The theory
(docs/theory.md §3): Std's gain 1/σ is smallest at p̂ = ½ and grows toward 0 and 1.
"""

from __future__ import annotations

import numpy as np

from .. import plotting
from ..stats.clustered import cluster_bootstrap_mean
from ..stats.paired import Verdict
from .rl_compare_stats import _key  # the grid's point key, one definition
from .rows import VerdictCell, _num

__all__ = ["READINGS", "bin_rows", "bins_figure", "tuned_picks"]

#: The readings of the bins, in the order shown: label -> what the LR is.
READINGS = {"shared LR": "both arms at the shared learning rate",
            "tuned LR": "each arm at its cross-fitted tuned learning rate"}
#: What the theory expects of the bins (the report's "paper" column).
EXPECTATION = "theory: Std's gain 1/σ is smallest at p̂ = ½"


def tuned_picks(tuned_row: dict, arms: tuple) -> dict[int, tuple[float, float]]:
    """seed -> (arm a's LR, arm b's LR) of a cross-fitted tuned row: a seed's LR is its fold's
    choice (folds by the parity of the seed's position in ``tuned_row["seeds"]``)."""
    chosen = tuned_row["chosen"]
    return {int(seed): tuple(float(chosen[arm]["even" if i % 2 == 0 else "odd"])
                             for arm in arms)
            for i, seed in enumerate(tuned_row["seeds"])}


def _window(recs: list[dict], window: int) -> dict[tuple[int, str], float]:
    """(step, problem id) -> group accuracy over the last ``window`` train records."""
    out = {}
    for r in recs[-window:] if window else recs:
        for pid, acc in zip(r["problems"], r.get("group_acc") or [], strict=False):
            out[(int(r["step"]), pid)] = float(acc)
    return out


def bin_rows(curves: dict, rates: dict[str, float], questions: dict[str, str], slice_: str,
             arms: tuple, opt: str, picks: dict[int, tuple[float, float]], edges: list[float],
             window: int, reading: str, reps: int = 2000,
             interim: str | None = None) -> list[dict]:
    """Std − No-Std per base-pass-rate bin, pooled over the seeds of ``picks`` (module
    docstring).

    Args:
        curves: ``(point key, seed)`` -> the run's train records (each with ``problems`` and
            ``group_acc``).
        rates: question text -> base pass rate. questions: problem id -> question text.
        picks: seed -> (LR of arm a, LR of arm b) compared for that seed.
        edges: inner bin edges, e.g. ``[0.25, 0.5, 0.75]``. window: steps pooled (the primary
            window). reading: a key of :data:`READINGS`. interim: why no direction is read
            (e.g. the tuned rows' "interim, n = 8, ..."): the cell says so, the numbers stay.

    Returns:
        One row per bin with any paired (step, problem): ``diff``, ``low``, ``high`` (the
        cluster-bootstrap interval), ``n`` (seeds), ``prompts`` (paired prompt-steps),
        ``change_a`` / ``change_b`` (each arm's accuracy − p̂), ``text`` and ``cell``.
    """
    bounds = [0.0, *edges, 1.0 + 1e-9]
    nb = len(bounds) - 1
    diffs = [[[] for _ in picks] for _ in range(nb)]  # bin -> seed -> paired differences
    changes = [([], []) for _ in range(nb)]  # bin -> (arm a's acc − p̂, arm b's)
    for j, (seed, (lr_a, lr_b)) in enumerate(sorted(picks.items())):
        ka, kb = _key(slice_, arms[0], opt, lr_a), _key(slice_, arms[1], opt, lr_b)
        if (ka, seed) not in curves or (kb, seed) not in curves:
            continue
        a, b = _window(curves[(ka, seed)], window), _window(curves[(kb, seed)], window)
        for key in sorted(set(a) & set(b)):
            rate = rates.get(questions.get(key[1], ""))
            if rate is None:
                continue
            k = int(np.searchsorted(bounds, rate, side="right") - 1)
            diffs[k][j].append(a[key] - b[key])
            changes[k][0].append(a[key] - rate)
            changes[k][1].append(b[key] - rate)
    rows = []
    for k in range(nb):
        if not any(diffs[k]):
            continue
        m = cluster_bootstrap_mean(diffs[k], reps=reps, seed=k)
        lo, hi = bounds[k], min(bounds[k + 1], 1.0)
        if m.low is None:
            text = f"{_num(m.mean)}, n=1 seed, {m.values} prompt-steps"
            cell = VerdictCell(f"{Verdict.INCONCLUSIVE.value} (1 seed)", Verdict.INCONCLUSIVE)
        else:
            text = (f"{_num(m.mean)} [{_num(m.low)}, {_num(m.high)}], n={m.clusters} seeds "
                    f"(clustered bootstrap), {m.values} prompt-steps")
            v = (Verdict.POSITIVE if m.low > 0 else Verdict.NEGATIVE if m.high < 0
                 else Verdict.NO_CLEAR_DIFFERENCE)
            cell = (VerdictCell(f"{Verdict.INCONCLUSIVE.value} ({interim}: no verdict drawn)",
                                Verdict.INCONCLUSIVE) if interim else VerdictCell(v.value, v))
        rows.append({"what": f"Std − No-Std by base pass rate p̂ in [{lo:.2f}, {hi:.2f}], "
                             f"{reading}", "slice": slice_, "reading": reading,
                     "bin": [lo, hi], "n": m.clusters, "prompts": m.values, "diff": m.mean,
                     "low": m.low, "high": m.high,
                     "change_a": float(np.mean(changes[k][0])),
                     "change_b": float(np.mean(changes[k][1])), "text": text, "cell": cell})
    return rows


def bins_figure(rows: list[dict], slices: list[str], path) -> None:
    """``pass_rate_bins.png``: one panel per slice, Std − No-Std per p̂ bin with its interval,
    one series per reading (at most two lines a panel)."""
    fig, axes = plotting.subplots(1, len(slices), w=4.6, h=3.2)
    for ax, s in zip(axes[0], slices, strict=True):
        for j, (reading, colour) in enumerate(zip(READINGS, ("tab:blue", "tab:orange"),
                                                  strict=True)):
            rs = [r for r in rows if r["slice"] == s and r["reading"] == reading]
            if not rs:
                continue
            x = np.array([np.mean(r["bin"]) for r in rs]) + (j - 0.5) * 0.02  # small dodge
            d = np.array([r["diff"] for r in rs])
            err = np.array([[0.0 if r["low"] is None else r["diff"] - r["low"] for r in rs],
                            [0.0 if r["high"] is None else r["high"] - r["diff"] for r in rs]])
            ax.errorbar(x, d, yerr=err, color=colour, marker="o", ms=4, capsize=3,
                        label=f"{reading} (n={max(r['n'] for r in rs)} seeds)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlim(0, 1)
        ax.set_xlabel("base pass rate p̂ of the problem (bin centre)")
        ax.set_ylabel("Std − No-Std, group accuracy")
        ax.set_title(f"{s.capitalize()}: by p̂ (95% CI, clustered by seed)", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    plotting.save(fig, path)
