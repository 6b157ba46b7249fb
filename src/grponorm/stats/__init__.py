"""Comparisons over seeds: a difference, its confidence interval and a verdict (docs/theory.md §6).

A paper-vs-ours verdict is a statistical statement about per-seed results. :func:`compare` takes
one result per seed for each arm (paired: the same seeds, ``a[i]`` with ``b[i]``) and returns a
:class:`Comparison` -- the mean difference ``mean(a - b)``, its interval, a p-value and the
spread -- whose :meth:`Comparison.verdict` is exactly one of::

    reproduced     the interval excludes 0 on the expected side
    contradicted   the interval excludes 0 on the other side
    inconclusive   the interval contains 0, or there is a single seed

and :meth:`Comparison.seeds_needed` says how many seeds would resolve a given effect at the
observed spread. :func:`ratio_compare` does the same on the log scale for speed-ups (a geometric
mean ratio), :func:`correlation_interval` gives Fisher-z intervals for Pearson correlations.
:func:`effect_reading` / :func:`correlation_reading` / :func:`mean_correlation_reading` read a
result against the paper's effect size (reproduced / smaller than the paper's / inconclusive,
Schuirmann's TOST; ``equivalence``), and ``autocorr`` gives intervals for the mean of an
autocorrelated series (effective sample size, block bootstrap).

Choice of interval. The default is the t-interval on the paired differences
``d_i = a_i - b_i``: ``mean(d) +- t_{n-1, 1-alpha/2} sd(d)/sqrt(n)``, exact for normal ``d`` and
well calibrated at the 4-10 seeds experiments can afford. The percentile bootstrap over seeds
(rliable's, ``scipy.stats.bootstrap``) under-covers at such n: its resampled means spread by
``sd sqrt((n-1)/n) / sqrt(n)`` and it uses normal-like rather than t quantiles. Measured on
normal paired data (400 simulations, nominal 95%): t-interval 93-95% at n = 4, 8, 10;
percentile bootstrap 77% (n = 4), 89% (n = 8), 90% (n = 10); BCa no better (79%, 89%, 89%).
So the bootstrap is an option (``method="bootstrap"``: BCa, or ``"bootstrap-percentile"``,
seeded), not the default. Unpaired arms use Welch's t.

This module is a bottom layer: NumPy and SciPy only, no grponorm imports.
"""

from .autocorr import (
    SeriesInterval,
    autocorr_mean_interval,
    autocorrelation,
    block_bootstrap_interval,
    block_length,
    effective_sample_size,
)
from .common import VERDICTS, seeds_needed
from .correlation import CorrelationResult, correlation, correlation_interval
from .equivalence import (
    PAPER_R,
    READINGS,
    EffectReading,
    correlation_reading,
    effect_reading,
    mean_correlation_reading,
)
from .paired import Comparison, compare
from .ratio import RatioComparison, ratio_compare

__all__ = [
    "PAPER_R",
    "READINGS",
    "VERDICTS",
    "Comparison",
    "CorrelationResult",
    "EffectReading",
    "RatioComparison",
    "SeriesInterval",
    "autocorr_mean_interval",
    "autocorrelation",
    "block_bootstrap_interval",
    "block_length",
    "compare",
    "correlation",
    "correlation_interval",
    "correlation_reading",
    "effect_reading",
    "effective_sample_size",
    "mean_correlation_reading",
    "ratio_compare",
    "seeds_needed",
]
