"""The paper's Table 1 (Fisher proxy vs reward variance): its numbers, the intervals of our mean
correlations and the report rows that E5 (language model) and E5b (bandit) both draw.

Intervals: which n. Table 1's numbers are correlations across prompts at one step, averaged over
steps. The pooled Fisher-z interval ``correlation_interval(r, n)`` with n = all (prompt, step)
pairs would treat every pair as independent and ignore how much the correlation moves from step
to step, so it is far too narrow. Instead each per-step coefficient is Fisher-z transformed and
the replicate is:

- a seed (an independent run) when there are two or more: its value is the mean z over its
  steps (steps of one run share prompts and a slowly moving policy, so they are not
  independent); unit "seeds";
- a measurement step when there is a single run (the language model): unit "measurements".
  Measurements of one run are autocorrelated (a slowly moving policy; lagged correlations
  overlap: x[t] vs y[t + L] and x[t + 1] vs y[t + 1 + L] share data), so the interval uses the
  effective sample size of the z series (``grponorm.stats.autocorr_mean_interval``: Geyer's
  initial monotone sequence; 91-93% coverage at nominal 95% on AR(1) series with phi = 0.6,
  where the plain t-interval covers 66-68%), reported as ``n_eff`` beside ``n``.

The interval is the t-interval of the mean z over replicates (``grponorm.stats.compare`` against
zero; for measurements with ``n_eff - 1`` degrees of freedom and standard error
``sd / sqrt(n_eff)``), shown back on the r scale as ``tanh``; its p-value is the t-test on z
with the same degrees of freedom.

Verdicts. Same step: the paper's r = 0.342 > 0, so ``reproduced`` when the interval excludes 0
upwards (``inconclusive`` says how many replicates would resolve 0.342 at the observed spread).
Across steps the paper's claim is "≈ 0" (-0.028, p = 0.18): ``reproduced`` when the whole
interval lies within ±0.15 (a correlation explaining < 2.3% of the variance; the paper's
-0.028 is well inside), ``contradicted`` when it excludes 0 and is not within that bound,
``inconclusive`` otherwise -- with the replicates that would bring it within ±0.15 at the
observed spread (or, when the mean itself is beyond 0.15, that would resolve it from 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..diagnostics.correlation import per_step, summarize
from ..stats import Comparison, autocorr_mean_interval, compare, mean_correlation_reading
from .rows import effect_cell, verdict_cell

__all__ = ["ACROSS_BOUND", "PAPER", "PAPER_LINE", "PAPER_TABLE1", "correlation_entry",
           "lag_intervals", "table1_rows"]

PAPER = {
    "same step": {"pearson": 0.342, "p": 0.008},
    "across steps": {"pearson": -0.028, "p": 0.18},
}
PAPER_SAME = f"{PAPER['same step']['pearson']} (p={PAPER['same step']['p']})"
PAPER_ACROSS = f"{PAPER['across steps']['pearson']} (p={PAPER['across steps']['p']})"
PAPER_LINE = f"mean Pearson {PAPER_SAME} same step; {PAPER_ACROSS} across steps"
PAPER_TABLE1 = f"Paper (Table 1): Fisher vs variance {PAPER_LINE}"
ACROSS_BOUND = 0.15  # |r| below this counts as "≈ 0" across steps


def _none(x: float | None) -> float | None:
    """NaN -> None (summaries are read back from JSON, where NaN is null)."""
    return None if x is None or math.isnan(x) else float(x)


def correlation_entry(groups: list[list[dict]], key: str = "pearson",
                      confidence: float = 0.95) -> dict:
    """Interval of the mean correlation on the Fisher-z scale (module docstring).

    Args:
        groups: per independent run (seed), its per-step correlation records
            (``grponorm.diagnostics.correlation.per_step``).
        key: ``"pearson"`` or ``"spearman"``.

    Returns:
        JSON-ready dict: unit, n, z / z_low / z_high / sd_z / p (z scale), r / low / high
        (``tanh`` of those); None where undefined (no finite coefficient, or one replicate).
    """
    zs = []
    for rows in groups:
        r = np.array([row[key] for row in rows], dtype=np.float64)
        r = r[np.isfinite(r)]
        if r.size:
            zs.append(np.arctanh(np.clip(r, -0.999999, 0.999999)))  # (steps,)
    unit = "seeds" if len(zs) >= 2 else "measurements"
    units = np.array([z.mean() for z in zs]) if len(zs) >= 2 else (zs[0] if zs else np.zeros(0))
    if units.size == 0:
        return {"unit": unit, "n": 0, "n_eff": None, "largest": None, "smaller": False,
                "z": None, "z_low": None, "z_high": None,
                "sd_z": None, "p": None, "r": None, "low": None, "high": None}
    c = compare(units, np.zeros_like(units), confidence=confidence)
    low, high, p, n_eff = c.low, c.high, c.p, float(c.n)
    if unit == "measurements" and units.size >= 2:  # autocorrelated: effective sample size
        iv = autocorr_mean_interval(units, confidence=confidence)
        low, high, n_eff = iv.low, iv.high, iv.n_eff
        sd = float(units.std(ddof=1))
        if n_eff >= 2 and sd > 0:
            t = c.diff / (sd / math.sqrt(n_eff))
            p = float(2 * sps.t.sf(abs(t), n_eff - 1))
        elif sd > 0:
            p = math.nan
    reading = mean_correlation_reading(  # against the paper's same-step r, on the r scale
        np.tanh(units), PAPER["same step"]["pearson"], confidence=confidence,
        n_eff=n_eff if unit == "measurements" else None)
    return {"unit": unit, "n": c.n, "n_eff": _none(n_eff), "z": c.diff, "z_low": _none(low),
            "largest": _none(reading.largest), "smaller": bool(reading.smaller),
            "z_high": _none(high), "sd_z": _none(c.sd), "p": _none(p), "r": math.tanh(c.diff),
            "low": None if _none(low) is None else math.tanh(low),
            "high": None if _none(high) is None else math.tanh(high)}


def lag_intervals(xs: list[np.ndarray], ys: list[np.ndarray], lags) -> dict[int, dict]:
    """``diagnostics.correlation.lag_table`` over one or more independent runs, with intervals.

    Args:
        xs, ys: one (T, n) array per run (seed): x[t] is correlated with y[t + lag] across the
            n prompts.
        lags: step offsets; those >= T are skipped.

    Returns:
        lag -> {"pearson": {...summarize over all steps of all runs, "interval": ...},
        "spearman": {...}}.
    """
    out = {}
    for lag in lags:
        if lag >= np.asarray(xs[0]).shape[0]:
            continue
        groups = [per_step(x, y, lag) for x, y in zip(xs, ys)]
        flat = [r for g in groups for r in g]
        out[int(lag)] = {k: {**summarize(flat, k), "interval": correlation_entry(groups, k)}
                         for k in ("pearson", "spearman")}
    return out


def _comparison(iv: dict) -> Comparison:
    """The interval as a Comparison; with autocorrelated measurements its n is ``n_eff``
    (rounded down), so the replicates still needed are counted in effective measurements."""
    nan = math.nan
    n = iv["n"] if iv.get("n_eff") is None else max(1, int(iv["n_eff"]))
    return Comparison(iv["z"], nan if iv["z_low"] is None else iv["z_low"],
                      nan if iv["z_high"] is None else iv["z_high"],
                      nan if iv["p"] is None else iv["p"], n,
                      nan if iv["sd_z"] is None else iv["sd_z"], "t", 0.95)


def across_verdict(c: Comparison, unit: str = "measurements", bound: float = ACROSS_BOUND) -> str:
    """Verdict of the paper's "≈ 0 across steps" for a mean-z comparison (module docstring)."""
    if not c.resolvable:
        return f"inconclusive ({c.n} {unit[:-1] if c.n == 1 else unit})"
    bz = math.atanh(bound)
    if -bz < c.low and c.high < bz:
        return f"reproduced (≈ 0: interval within ±{bound})"
    if c.low > 0 or c.high < 0:
        return "contradicted (lagged correlation ≠ 0)"
    m = abs(c.diff)
    if m < bz:
        k = c.seeds_needed(bz - m)
        return f"inconclusive (≈{k} {unit} would put it within ±{bound})" if k else "inconclusive"
    k = c.seeds_needed(m)
    return f"inconclusive (≈{k} {unit} would resolve it from 0)" if k else "inconclusive"


def _text(entry: dict) -> str:
    """``+0.398 (tanh mean z +0.410 [+0.050, +0.680], n=6 measurements, p=0.06)``."""
    iv = entry.get("interval")
    mean = "nan" if _none(entry["mean"]) is None else f"{entry['mean']:+.3f}"
    if not iv or iv["n"] == 0:
        return f"{mean} (p={entry.get('p')})"
    n_eff = iv.get("n_eff")
    n = f"n={iv['n']} {iv['unit']}" + (
        f" (n_eff≈{n_eff:.1f})" if n_eff is not None and n_eff < iv["n"] else "")
    if iv["low"] is None:
        return f"{mean} ({n}: no interval)"
    p = "-" if iv["p"] is None else f"{iv['p']:.2g}"
    return (f"{mean} (tanh mean z {iv['r']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}], "
            f"{n}, p={p})").replace("-", "\N{MINUS SIGN}")


def table1_rows(same: dict, across: list[tuple[str, dict]], where: str) -> list[list]:
    """Paper's Table 1 rows: Fisher proxy vs reward variance, same step and across steps.

    Args:
        same: the same-step entry (``{"pearson": {..., "interval": ...}, ...}``).
        across: (label, entry) per lag (or across-training comparison).
        where: "language model" or "bandit".
    """
    undefined = "inconclusive (no correlation defined: constant values)"

    def cells(entry: dict, verdict) -> tuple[str, str]:
        pe = entry["pearson"]
        iv = pe.get("interval")
        if _none(pe["mean"]) is None or not iv or iv["n"] == 0:
            return _text(pe), (undefined if _none(pe["mean"]) is None
                               else "inconclusive (no interval)")
        return _text(pe), verdict(_comparison(iv), iv["unit"])

    paper_same = PAPER["same step"]["pearson"]
    iv_same = same["pearson"].get("interval") or {}
    text, verdict = cells(same, lambda c, unit: effect_cell(
        verdict_cell(c, +1, math.atanh(paper_same), unit, effect_text=f"{paper_same}"),
        iv_same.get("largest"), paper_same, bool(iv_same.get("smaller"))))
    rows = [[f"Fisher vs reward variance, same step ({where})", PAPER_SAME, text, verdict]]
    for label, entry in across:
        text, verdict = cells(entry, lambda c, unit: across_verdict(c, unit))
        rows.append([f"Fisher vs reward variance, {label} ({where})",
                     f"{PAPER_ACROSS}: ≈ 0", text, verdict])
    return rows
