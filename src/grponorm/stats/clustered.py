"""A pooled mean over clusters (seeds) with a cluster bootstrap interval.

E6's "where on the p̂ axis does Std act" pools paired differences of many (step, prompt)
occurrences from each seed. Occurrences of one seed share its trajectory, so they are not
independent: the replicates are the seeds (clusters), not the occurrences.

Estimator. With cluster ``s`` holding values ``x_s1 .. x_sN_s``, the pooled mean is the ratio
``m = sum_s sum_j x_sj / sum_s N_s`` (every occurrence weighted equally).

Interval. The cluster bootstrap (Cameron, Gelbach & Miller 2008, "Bootstrap-based improvements
for inference with clustered errors", Rev. Econ. Stat. 90(3)): resample whole clusters with
replacement, recompute ``m``; the standard deviation of the resampled ``m`` is its standard
error ``se``. The interval is ``m +- t_{S-1, 1-alpha/2} se`` with ``S`` clusters, the t form
that ``stats.autocorr``'s block bootstrap also uses: the percentile interval of resampled means
under-covers at the 8-40 seeds these grids have (``stats.paired``'s docstring measures 89% at
n = 8), and the t quantile with S - 1 degrees of freedom is what a mean of S independent
cluster means would get. With one cluster there is no interval.

NumPy and SciPy only, no grponorm imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

__all__ = ["ClusterMean", "cluster_bootstrap_mean"]


@dataclass(frozen=True)
class ClusterMean:
    """A pooled mean over clusters and its cluster-bootstrap interval."""

    mean: float  # pooled mean over every value of every cluster
    low: float | None  # interval's lower end (None with one cluster)
    high: float | None  # interval's upper end (None with one cluster)
    se: float | None  # cluster-bootstrap standard error (None with one cluster)
    clusters: int  # clusters (seeds) with at least one value
    values: int  # values pooled (occurrences)
    confidence: float  # nominal coverage of [low, high]


def cluster_bootstrap_mean(clusters: Sequence[Sequence[float]], confidence: float = 0.95,
                           reps: int = 2000, seed: int = 0) -> ClusterMean:
    """Pooled mean of ``clusters``' values with a cluster-bootstrap t interval (module
    docstring).

    Args:
        clusters: one sequence of values per cluster (seed); empty clusters are dropped.
        confidence: nominal coverage, in (0, 1). reps: bootstrap resamples. seed: their RNG seed.

    Raises:
        ValueError: If no cluster holds a value, a value is not finite, ``confidence`` is not
            in (0, 1) or ``reps`` < 2.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if reps < 2:
        raise ValueError(f"reps must be >= 2, got {reps}")
    arrays = [np.asarray(c, dtype=np.float64).ravel() for c in clusters]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("cluster_bootstrap_mean: no cluster holds a value")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("cluster_bootstrap_mean: values must be finite")
    sums = np.array([a.sum() for a in arrays])  # (S,)
    counts = np.array([a.size for a in arrays], dtype=np.float64)  # (S,)
    S = sums.size
    mean = float(sums.sum() / counts.sum())
    if S == 1:
        return ClusterMean(mean, None, None, None, 1, int(counts.sum()), confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, S, size=(reps, S))  # (reps, S) clusters drawn with replacement
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)  # (reps,)
    se = float(boot.std(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2.0, S - 1)) * se
    return ClusterMean(mean, mean - half, mean + half, se, S, int(counts.sum()), confidence)
