"""Small matplotlib helpers shared by the experiments (headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {
    "reinforce": "tab:blue", "grpo": "tab:red",
    "group_std": "tab:red", "none": "tab:blue", "batch_std": "tab:green", "rloo": "tab:purple",
    "bernoulli_std": "tab:orange", "bernoulli_smoothed": "tab:brown",
    "bnpo": "tab:pink", "mapo": "tab:olive", "gpg": "tab:cyan", "grpo_passk": "tab:gray",
}


def color(name: str) -> str | None:
    return COLORS.get(name)


def ci_halfwidth(ys, axis: int = 0, confidence: float = 0.95) -> np.ndarray:
    """Half-width of the t-interval of the mean along ``axis``: t_{S-1} sd / sqrt(S).

    ``sd`` with Bessel's correction over the finite entries; 0 where fewer than 2 are finite
    (one seed has no interval; the band then collapses onto the mean).
    """
    from scipy import stats

    ys = np.asarray(ys, dtype=float)
    S = np.sum(np.isfinite(ys), axis=axis)
    ok = S >= 2
    Sd = np.where(ok, S, 2)
    dev = ys - np.nanmean(ys, axis=axis, keepdims=True)
    var = np.nansum(dev * dev, axis=axis) / (Sd - 1)  # guarded: Sd >= 2
    half = stats.t.ppf(0.5 + confidence / 2, Sd - 1) * np.sqrt(var / Sd)
    return np.where(ok, half, 0.0)


def band(ax, x, ys, label: str, c: str | None = None, lo_hi: str = "minmax") -> None:
    """Plot the mean over the first axis of ys (S, R) with a band: min-max (default), +-1 sd
    (``"sd"``) or the 95% t-interval of the mean over the S seeds (``"ci"``)."""
    ys = np.asarray(ys, dtype=float)
    m = np.nanmean(ys, axis=0)
    if lo_hi == "sd":
        s = np.nanstd(ys, axis=0)
        lo, hi = m - s, m + s
    elif lo_hi == "ci":
        h = ci_halfwidth(ys, axis=0)
        lo, hi = m - h, m + h
    else:
        lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    (line,) = ax.plot(x, m, label=label, color=c, lw=1.6)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def subplots(nrows: int = 1, ncols: int = 1, w: float = 5.0, h: float = 3.6):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
