"""Per-prompt correlation statistics across steps (Table 1 of the paper), shared by the bandit
proxy validation and the language-model Fisher diagnostic.

Inputs are (T, n) arrays: one row per recorded step, one column per prompt. At each step the
correlation is taken across prompts; a lag L pairs x at step t with y at step t + L. The summary
over steps reports the mean coefficient and a p-value for "the mean correlation is zero": a
one-sample t-test on the Fisher z-transformed per-step coefficients (steps treated as
independent replicates). The fraction of steps whose own test gives p < 0.05 is reported too.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def correlation(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson and Spearman correlation of two (n,) samples, with two-sided p-values.

    Pairs where either value is non-finite are dropped (and counted). Constant inputs give NaN
    coefficients (a correlation is undefined), never an error.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(x.size), "dropped": int((~ok).sum())}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, "pearson": np.nan, "pearson_p": np.nan, "spearman": np.nan,
                "spearman_p": np.nan}
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    return {**out, "pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue)}


def per_step(x: np.ndarray, y: np.ndarray, lag: int = 0) -> list[dict]:
    """Correlation across prompts of x[t] with y[t + lag], for every valid t.

    Args:
        x, y: (T, n) per-step, per-prompt values.
        lag: step offset (>= 0); 0 compares the same step.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be (T, n) arrays of one shape, got {x.shape}, {y.shape}")
    if lag < 0 or lag >= x.shape[0]:
        raise ValueError(f"lag must be in [0, T) = [0, {x.shape[0]}), got {lag}")
    return [correlation(x[t], y[t + lag]) for t in range(x.shape[0] - lag)]


def summarize(rows: list[dict], key: str = "pearson") -> dict:
    """Mean coefficient over steps, the t-test p-value on Fisher z, and the share of steps
    that are individually significant (p < 0.05)."""
    r = np.array([row[key] for row in rows], dtype=np.float64)
    p = np.array([row[f"{key}_p"] for row in rows], dtype=np.float64)
    r, p = r[np.isfinite(r)], p[np.isfinite(p)]
    if r.size == 0:
        return {"mean": np.nan, "p": np.nan, "frac_significant": np.nan, "steps": 0}
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    pval = float(stats.ttest_1samp(z, 0.0).pvalue) if r.size > 1 and np.ptp(z) > 0 else np.nan
    return {"mean": float(r.mean()), "p": pval, "frac_significant": float(np.mean(p < 0.05)),
            "steps": int(r.size)}


def lag_table(x: np.ndarray, y: np.ndarray, lags=(0, 1, 2, 5)) -> dict[int, dict]:
    """Pearson and Spearman summaries of x[t] vs y[t + lag] for each lag that fits."""
    out = {}
    for lag in lags:
        if lag >= np.asarray(x).shape[0]:
            continue
        rows = per_step(x, y, lag)
        out[int(lag)] = {"pearson": summarize(rows, "pearson"),
                         "spearman": summarize(rows, "spearman")}
    return out
