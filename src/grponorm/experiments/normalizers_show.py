"""``grponorm normalizers show``: what each registered normalizer does to the step.

For binary rewards and a group size G, the effective gain ``||A|| / ||r - mean||`` of every
normalizer at each success count k = 0..G (``grponorm.diagnostics.gain``): the factor by which it
rescales ``none``'s (Dr. GRPO's) advantage on a prompt with success rate ``p̂ = k/G``. A tool,
not a paper experiment: it has no paper numbers and ``reproduce`` does not run it.

Reads top to bottom: one gain curve per normalizer (or the reason it cannot be measured) ->
table.md -> figure -> summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .. import normalizers as nz
from .. import plotting
from ..diagnostics.gain import REFERENCES, gain_curve
from ..runs import Run, markdown_table

FIGURE = "normalizers_gain.png"
_FOCUS = ("group_std", "none", "bernoulli_std")  # drawn thicker: the paper's comparison
_EXTRA_STYLES = [  # (color, linestyle) for names without a color in grponorm.plotting
    ("black", "--"), ("gold", "--"), ("teal", "--"), ("navy", "--"), ("magenta", "--"),
    ("lime", "--"), ("salmon", "--"), ("indigo", "--"), ("sienna", "-."), ("slategray", "-."),
]


@dataclass
class ShowConfig:
    """Settings of ``grponorm normalizers show``."""

    G: int = 8  # responses per prompt (group size)
    normalizers: list = field(default_factory=nz.available_normalizers)  # which to show
    reference: str = "ladder"  # batch for batch-level ones: "ladder" (k=0..G) or "alone"
    log_y: bool = True  # log-scale gain axis
    out: str = "runs"  # root folder for run outputs


# --------------------------------------------------------------------------------------------
# Measuring one normalizer
# --------------------------------------------------------------------------------------------


def measure(method: str, G: int, reference: str) -> tuple[object | None, str]:
    """The :class:`~grponorm.diagnostics.gain.GainCurve` of ``method``, or None and the reason
    it cannot be measured from rewards alone.

    A normalizer that needs context this tool cannot give (the registry's
    ``MissingContextError``: completion lengths, prompt ids, reward components) reads
    ``"needs context: <fields>"``; one that rejects the binary ladder for another reason reads
    ``"not measured: ..."``. A stateful normalizer gets a fresh state (``make_state``) for every
    batch, i.e. its first step; the note says "fresh state".

    Returns:
        ``(curve, note)``; ``note`` is "" for a plain measurement.
    """
    try:
        curve = gain_curve(method, G, reference=reference)
    except nz.MissingContextError as exc:
        needs = nz.get_spec(method).needs({})
        return None, f"needs context: {', '.join(needs) if needs else exc}"
    except (TypeError, ValueError) as exc:
        return None, f"not measured: {exc}"
    return curve, "fresh state" if nz.make_state(method) is not None else ""


def _gain_cells(curve) -> list:
    """Table cells of one gain curve; a flat group that the normalizer moves shows its step."""
    return [f"∞ (‖A‖ {n:.3g})" if np.isinf(g) else float(g)
            for g, n in zip(curve.gain, curve.norm)]


def _plain_log_ticks(ax, values: list[np.ndarray]) -> None:
    """Log-axis ticks at 1, 2, 3, 5 per decade, labelled as plain numbers (no minor-tick labels)."""
    v = np.concatenate(values)
    v = v[v > 0]
    if v.size == 0:
        return
    lo, hi = v.min(), v.max()
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    steps = [m * 10.0**e for e in decades for m in (1, 2, 3, 5)]
    ticks = [t for t in steps if lo / 1.2 <= t <= hi * 1.2]
    ax.minorticks_off()
    ax.set_yticks(ticks, labels=[f"{t:g}" for t in ticks])


def _min_cos(curve) -> float | str:
    """Smallest ``cos(A, r - mean)`` over the groups with spread whose advantage is not zero
    ("–": none)."""
    inner = slice(1, curve.group_size)  # groups with spread; a moved flat group has no cos
    moving = curve.cos[inner][curve.gain[inner] > 0]  # (n_moving,)
    return float(moving.min()) if moving.size else "–"


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


def run(cfg: ShowConfig, progress: bool = True) -> dict:
    if cfg.reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}; got {cfg.reference!r}")
    if cfg.G < 2:
        raise ValueError(f"G must be >= 2; got {cfg.G}")
    for m in cfg.normalizers:
        nz.get_normalizer(m)  # an unknown name fails here, before any output
    out = Run.create(cfg.out, "normalizers_show", cfg)
    G = cfg.G
    k = np.arange(G + 1)

    # 1. One gain curve per normalizer ---------------------------------------------------
    curves, notes = {}, {}
    for m in tqdm(cfg.normalizers, desc="normalizers", disable=not progress):
        curve, note = measure(m, G, cfg.reference)
        notes[m] = note
        if curve is not None:
            curves[m] = curve

    # 2. Table: gain at each k --------------------------------------------------------------
    header = ["normalizer", "scope", *[f"k={i} (p̂={i / G:.3g})" for i in k], "min cos"]
    rows = []
    for m in cfg.normalizers:
        c = curves.get(m)
        if c is None:
            rows.append([m, notes[m], *["–"] * (G + 1), "–"])
            continue
        scope = f"batch ({cfg.reference})" if c.batch_level else "group"
        if notes[m]:
            scope += f", {notes[m]}"
        rows.append([m, scope, *_gain_cells(c), _min_cos(c)])
    intro = (
        f"Effective gain ||A|| / ||r - mean|| on a binary group of G = {G} with k successes "
        f"(1 = none's step; flat groups k = 0, {G} get zero advantage, gain 0, unless the "
        f"normalizer moves them: ∞ with its ||A||). Batch-level "
        + (f"normalizers: each group inside the batch of the {G + 1} groups k = 0..{G}"
           if cfg.reference == "ladder" else "normalizers: each group as a batch of one")
        + ". min cos: smallest cos(A, r - mean) over the groups with spread that move (A != 0; "
        "1 = a pure rescaling of none's step).\n\n"
    )
    out.write_text("table.md", intro + markdown_table(header, rows))

    # 3. Figure: gain and ||A|| against p̂ ---------------------------------------------------
    fig, axes = plotting.subplots(1, 2, w=4.4, h=3.6)
    ax_gain, ax_norm = axes[0]
    inner = slice(1, G)  # flat groups (k = 0, G) have gain 0 by definition: not drawn
    extra = iter(_EXTRA_STYLES * (1 + len(curves) // len(_EXTRA_STYLES)))
    for m, c in curves.items():
        col, ls = (plotting.color(m), "-") if plotting.color(m) else next(extra)
        style = dict(marker="o", ms=2.5, ls=ls, color=col, label=m,
                     lw=2.4 if m in _FOCUS else 1.0, alpha=1.0 if m in _FOCUS else 0.75,
                     zorder=3 if m in _FOCUS else 2)
        g = np.where(c.gain > 0, c.gain, np.nan)[inner]  # zeros cannot sit on a log axis
        ax_gain.plot(c.p_hat[inner], g, **style)
        ax_norm.plot(c.p_hat, c.norm, **style)
    if cfg.log_y and curves:
        ax_gain.set_yscale("log")
        _plain_log_ticks(ax_gain, [c.gain[inner][np.isfinite(c.gain[inner])]
                                   for c in curves.values()])
    ax_gain.axhline(1.0, color="k", lw=0.6)
    ax_gain.set_xlabel("p̂ = k / G")
    ax_gain.set_ylabel("gain ||A|| / ||r − mean||" + (" (log)" if cfg.log_y else ""))
    ax_gain.set_title(f"Effective gain, G = {G} (0 < k < G)", fontsize=9)
    ax_norm.set_xlabel("p̂ = k / G")
    ax_norm.set_ylabel("||A||  (size of the step on the prompt)")
    ax_norm.set_title("Advantage norm per group", fontsize=9)
    ax_norm.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    plotting.save(fig, out.file(FIGURE))

    summary = {
        "experiment": "normalizers_show",
        "G": G,
        "reference": cfg.reference,
        "k": k.tolist(),
        "gain": {m: c.gain.tolist() for m, c in curves.items()},
        "adv_norm": {m: c.norm.tolist() for m, c in curves.items()},
        "min_cos": {m: _min_cos(c) for m, c in curves.items()},
        "batch_level": {m: bool(c.batch_level) for m, c in curves.items()},
        "notes": {m: n for m, n in notes.items() if n},
        "not_measured": [m for m in cfg.normalizers if m not in curves],
        "figures": [FIGURE],
        "run_dir": str(out.path),
    }
    out.finish(summary)
    return summary
