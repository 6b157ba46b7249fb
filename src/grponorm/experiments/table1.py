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

One run, pooled (:func:`pooled_entry`, the language model's E5). The mean z over measurements
above is dominated, at a probe of 12 prompts, by steps where one or two prompts have any reward
spread: their ``|r|`` is near 1 and ``atanh`` of it (up to 7.25 at the clip) sets both the mean
and its spread. The pooled estimate reads the paper's "mean Pearson r" on the r scale instead:
the mean of the per-step coefficients, equal to the Pearson correlation of within-step
standardized Fisher trace and reward variance pooled over all (measurement, prompt) pairs,
with a circular block bootstrap over measurements for its interval
(``grponorm.stats.pooled``; 95% coverage at nominal 95% on simulated panels of 30 measurements
x 12 prompts with autocorrelated prompts). Same step: read against the paper's 0.342 as
reproduced / smaller than the paper's / contradicted / inconclusive
(``stats.pooled.pooled_reading``). Lags 1.. are a family of tests of "no correlation": their
p-values get Holm's step-down correction over the lags tested (not Bonferroni: Holm rejects at
least as much and controls the same family-wise error under any dependence between lags), and
"contradicted" needs a Holm-adjusted p below 0.05; "≈ 0" is the 95% interval within ±0.15 at
every lag, an intersection of per-lag claims that needs no correction.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..diagnostics.correlation import per_step, summarize
from ..stats import Comparison, autocorr_mean_interval, compare, mean_correlation_reading
from ..stats.pooled import holm, measurements_needed, pooled_reading, step_correlations
from .rows import VerdictCell, effect_cell, verdict_cell

__all__ = ["ACROSS_BOUND", "MIN_SPREAD", "PAPER", "PAPER_LINE", "PAPER_TABLE1",
           "correlation_entry", "lag_intervals", "pooled_entry", "pooled_rows", "table1_rows"]

PAPER = {
    "same step": {"pearson": 0.342, "p": 0.008},
    "across steps": {"pearson": -0.028, "p": 0.18},
}
PAPER_SAME = f"{PAPER['same step']['pearson']} (p={PAPER['same step']['p']})"
PAPER_ACROSS = f"{PAPER['across steps']['pearson']} (p={PAPER['across steps']['p']})"
PAPER_LINE = f"mean Pearson {PAPER_SAME} same step; {PAPER_ACROSS} across steps"
PAPER_TABLE1 = f"Paper (Table 1): Fisher vs variance {PAPER_LINE}"
ACROSS_BOUND = 0.15  # |r| below this counts as "≈ 0" across steps
MIN_SPREAD = 3  # sensitivity: measurements where at least this many prompts have reward spread


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


# ------------------------------------------------------------------------------ pooled (one run)


def _across_pooled(rd: dict, p_holm: float | None, bound: float = ACROSS_BOUND,
                   confidence: float = 0.95) -> str:
    """Verdict of "≈ 0 across steps" for one lag's pooled reading, Holm-adjusted (module
    docstring): reproduced within ±bound, contradicted when the adjusted p < 1 - confidence."""
    if rd["low"] is None:
        return f"inconclusive ({rd['n']} measurements: no interval)"
    alpha = 1 - confidence
    if -bound < rd["low"] and rd["high"] < bound:
        return f"reproduced (≈ 0: interval within ±{bound})"
    if p_holm is not None and p_holm < alpha:
        return f"contradicted (lagged correlation ≠ 0, Holm-adjusted p={p_holm:.2g})"
    m = abs(rd["estimate"])
    margin = bound - m if m < bound else m
    what = f"would put it within ±{bound}" if m < bound else "would resolve it from 0"
    k = measurements_needed(rd["se"], rd["n"], margin, crit_level=1 - alpha / 2)
    return f"inconclusive (≈{k} measurements {what})" if k else "inconclusive"


def pooled_entry(x: np.ndarray, y: np.ndarray, lags, spread: np.ndarray | None = None,
                 paper_r: float = PAPER["same step"]["pearson"], confidence: float = 0.95,
                 n_resamples: int = 9999, seed: int = 0) -> dict:
    """Pooled Table 1 of one run: per lag the mean per-step correlation, its block-bootstrap
    interval and reading; Holm over the lags > 0 (module docstring, ``stats.pooled``).

    Args:
        x, y: (T, n) Fisher trace and reward variance, the same prompts in the same columns at
            every measurement.
        lags: offsets in measurements (those >= T are skipped; fewer than 4 correlations
            read "inconclusive").
        spread: (T, n) reward variances for the sensitivity subset (measurements where at
            least :data:`MIN_SPREAD` prompts have a non-zero variance at both ends); None: none.
        paper_r: the paper's same-step correlation.

    Returns:
        JSON-ready: ``{"estimand", "method", "confidence", "multiplicity", "lags": {lag:
        {"pearson": {...reading, "verdict", "rs"}, "spearman": {...}}}, "sensitivity"}``; lags
        > 0 carry ``p_holm`` and an across-steps ``verdict``, lag 0 its reading as ``verdict``.
    """
    T = np.asarray(x).shape[0]
    lags = sorted({int(g) for g in lags if 0 <= int(g) < T})
    out: dict = {
        "estimand": "time average over measurements of the across-prompt correlation of "
                    "x[t] with y[t + lag] (the paper's mean Pearson r over steps)",
        "method": "mean of per-step correlations (= pooled correlation of within-step "
                  "standardized values); circular block bootstrap over measurements, t form",
        "confidence": confidence, "lags": {},
    }
    readings = {}
    for lag in lags:
        readings[lag] = {}
        for key in ("pearson", "spearman"):
            rs = step_correlations(x, y, lag, method=key)  # (T - lag,)
            rd = pooled_reading(rs, paper_r, confidence=confidence, n_resamples=n_resamples,
                                seed=seed)
            readings[lag][key] = {**rd.as_dict(),
                                  "rs": [None if not np.isfinite(v) else float(v) for v in rs]}
    later = [g for g in lags if g > 0]
    out["multiplicity"] = {"method": "holm", "lags": later, "family": "lags > 0, per method"}
    for key in ("pearson", "spearman"):
        ps = [readings[g][key]["p"] for g in later]
        adj = holm([math.nan if p is None else p for p in ps]) if later else []
        for g, a in zip(later, adj):
            readings[g][key]["p_holm"] = _none(float(a))
            readings[g][key]["verdict"] = _across_pooled(readings[g][key], _none(float(a)),
                                                         confidence=confidence)
        if 0 in readings:
            readings[0][key]["verdict"] = readings[0][key]["label"]
    out["lags"] = {str(g): v for g, v in readings.items()}
    if spread is not None and 0 in readings:
        n_spread = (np.asarray(spread) > 0).sum(axis=1)  # (T,)
        rs = step_correlations(x, y, 0)
        keep = n_spread >= MIN_SPREAD
        rd = pooled_reading(np.where(keep, rs, np.nan), paper_r, confidence=confidence,
                            n_resamples=n_resamples, seed=seed)
        out["sensitivity"] = {
            "what": f"same step, measurements where at least {MIN_SPREAD} prompts have reward "
                    "spread (the others' r is set by one or two prompts)",
            "kept": int(keep.sum()), "of": int(keep.size), "pearson": rd.as_dict(),
        }
    return out


def _pooled_text(rd: dict, holm_p: bool = False) -> str:
    """``+0.589 [+0.410, +0.768], 30 measurements (n_eff≈9.1), p=0.0004``."""
    if rd["low"] is None:
        return f"{_signed(rd['estimate'])} ({rd['n']} measurements: no interval)"
    s = (f"{_signed(rd['estimate'])} [{_signed(rd['low'])}, {_signed(rd['high'])}], "
         f"{rd['n']} measurements (n_eff≈{rd['n_eff']:.1f}, block {rd['block']}), "
         f"p={rd['p']:.2g}")
    if holm_p and rd.get("p_holm") is not None:
        s += f", Holm p={rd['p_holm']:.2g}"
    return s


def _signed(x: float | None) -> str:
    return "nan" if x is None else f"{x:+.3f}".replace("-", "\N{MINUS SIGN}")


def pooled_rows(pooled: dict, every: int, where: str = "language model") -> list[list]:
    """Report rows of :func:`pooled_entry`: same step against 0.342, each lag against ≈ 0
    (Holm-adjusted), and the sensitivity subset (a ``measured`` row: its reading is shown, it
    is not a claim of its own)."""
    lags = pooled["lags"]
    rows = []
    if "0" in lags:
        rd = lags["0"]["pearson"]
        rows.append([f"Fisher vs reward variance, same step ({where}; mean of per-step "
                     "Pearson r, block bootstrap)", PAPER_SAME, _pooled_text(rd),
                     VerdictCell(rd["verdict"])])
    m = len(pooled.get("multiplicity", {}).get("lags", []))
    for g in sorted((k for k in lags if k != "0"), key=int):
        rd = lags[g]["pearson"]
        rows.append([f"Fisher vs reward variance, lag {g} ({int(g) * every} steps; Holm over "
                     f"{m} lag{'' if m == 1 else 's'}) ({where})", f"{PAPER_ACROSS}: ≈ 0",
                     _pooled_text(rd, holm_p=True), VerdictCell(rd["verdict"])])
    sens = pooled.get("sensitivity")
    if sens:
        rd = sens["pearson"]
        rows.append([f"same step, the {sens['kept']} of {sens['of']} measurements with ≥ "
                     f"{MIN_SPREAD} prompts with reward spread (sensitivity)", PAPER_SAME,
                     _pooled_text(rd), VerdictCell(f"measured: {rd['label']}")])
    return rows
