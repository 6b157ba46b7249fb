"""grponorm.stats against ArviZ, arch and statsmodels (the ``test`` extra installs all three).

Each hand-written estimator is checked against the library that implements the same formula:

- effective sample size (``autocorr``) vs ArviZ's ``ess(method="identity")`` -- Geyer's
  initial positive/monotone sequence on one chain, without ArviZ's default rank-normalisation
  (``"bulk"``) or chain splitting (``"mean"``, ``"bulk"``, ``"z_scale"``), which estimate other
  quantities; sample autocorrelations vs ``statsmodels.tsa.stattools.acf`` and ``arviz.autocorr``;
- the circular / moving block bootstrap vs ``arch.bootstrap.CircularBlockBootstrap`` /
  ``MovingBlockBootstrap`` with the same generator (the same resamples), its default block length
  vs ``arch.bootstrap.optimal_block_length`` (Politis & White 2004 with Patton, Politis & White's
  2009 correction; column ``"circular"``);
- the size test of ``effect_reading`` (Schuirmann's TOST, one side) vs
  ``statsmodels.stats.weightstats.ttost_paired``, and ``compare``'s intervals vs statsmodels'
  ``DescrStatsW`` / ``CompareMeans``.

Deterministic formulas agree to rounding (``rtol=1e-10``). Where the libraries' estimators
differ on purpose (ArviZ's single-chain variance, Stan's extra lag term; arch's normal-quantile
interval) the test states the exact relation instead; Monte Carlo checks carry tolerances of
several Monte Carlo standard errors, computed in each test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from arch.bootstrap import CircularBlockBootstrap, MovingBlockBootstrap, optimal_block_length
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_paired
from statsmodels.tsa.stattools import acf

from grponorm.stats import (
    autocorr_mean_interval,
    autocorrelation,
    block_bootstrap_interval,
    block_length,
    compare,
    effect_reading,
    effective_sample_size,
    mean_correlation_reading,
)
from grponorm.stats.autocorr import _block_means, _geyer_tau
from series import ar1

with warnings.catch_warnings():  # arviz 0.x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

RTOL = 1e-10




#: (label, series): AR(1) at several phi and lengths, independent values, short series.
SERIES = [
    (f"ar1-phi{phi}-n{n}-{i}", row)
    for k, (n, phi) in enumerate(
        [(40, 0.6), (60, 0.6), (2000, 0.6), (200, 0.9), (40, -0.5), (40, 0.0), (500, 0.0),
         (12, 0.6), (8, 0.3)]
    )
    for i, row in enumerate(ar1(np.random.default_rng(100 + k), n, phi, 3))
]


# ------------------------------------------------------------------------------------------
# Autocorrelation and effective sample size vs statsmodels and ArviZ
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, x", SERIES, ids=[s[0] for s in SERIES])
def test_autocorrelation_equals_statsmodels_acf_and_arviz_autocorr(label, x):
    # Both libraries use the divisor n and the series' own mean, as autocorrelation() does.
    n = x.size
    ours = autocorrelation(x)
    np.testing.assert_allclose(ours, acf(x, nlags=n - 1, adjusted=False, fft=False),
                               rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(ours, az.autocorr(x), rtol=RTOL, atol=1e-12)


def _arviz_single_chain_tau(x: np.ndarray) -> tuple[float, int]:
    """ArviZ's ``tau`` for one chain, written with grponorm's Geyer truncation.

    ArviZ (``arviz.stats.diagnostics._ess``) forms ``rho'_t = 1 - (W - gamma_t) / var_plus``
    with ``W = gamma_0 n/(n-1)`` and, for one chain, ``var_plus = gamma_0``: ``rho'_t = rho_t -
    1/(n-1)`` for ``t >= 1``. On that sequence it applies Geyer's initial positive and monotone
    sequences, then adds the even-lag term of the first non-positive pair when positive (Stan's
    refinement) and floors ``tau`` at ``1/log10(n)``. Returns (tau, last lag summed).
    """
    n = x.size
    rho = autocorrelation(x).copy()  # (n,)
    rho[1:] -= 1.0 / (n - 1)
    tau, lag = _geyer_tau(rho)
    assert lag >= 1  # the first pair 1 + rho'_1 is positive for every series used here
    if lag + 1 < n and rho[lag + 1] > 0:  # even lag of the first pair not summed
        tau += float(rho[lag + 1])
    return max(tau, 1.0 / math.log10(n)), lag


@pytest.mark.parametrize("label, x", SERIES, ids=[s[0] for s in SERIES])
def test_geyer_truncation_reproduces_arviz_ess_identity_exactly(label, x):
    # method="identity": Geyer's sequence on the chain as given. ArviZ's default "bulk" (and
    # "mean") split the chain in two and "bulk" rank-normalises: different estimands.
    n = x.size
    tau, lag = _arviz_single_chain_tau(x)
    # ArviZ scans pairs only while t < n - 3; every series here truncates before that.
    assert lag + 3 < n
    ess = float(az.ess(x[None, :], method="identity"))  # (chain, draw) = (1, n)
    assert n / ess == pytest.approx(tau, rel=RTOL)


def test_the_series_exercise_the_monotone_step_and_the_extra_term():
    # The exact identity above covers Geyer's monotone cap only if some series has a pair sum
    # that rises again before truncation, and Stan's extra term only if one has a positive even
    # lag after it: both occur among SERIES.
    rising = extra = 0
    for _, x in SERIES:
        rho = autocorrelation(x).copy()
        rho[1:] -= 1.0 / (x.size - 1)
        _, lag = _geyer_tau(rho)
        pairs = rho[: lag + 1].reshape(-1, 2).sum(axis=1)  # (K,) the positive pair sums
        rising += bool(np.any(np.diff(pairs) > 0))
        extra += bool(rho[lag + 1] > 0)
    assert rising >= 3 and extra >= 3


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.6, 0.9])
def test_effective_sample_size_agrees_with_arviz_on_long_series(phi):
    # n = 20000. The estimators differ by O(M/n) terms (M the last lag summed): grponorm's
    # divisor n - 2M - 1 (mean correction) and ArviZ's rho shift of 1/(n-1) on ~2M lags, plus
    # Stan's extra term, one sample autocorrelation (about 3 sqrt(tau/n) at most, relative
    # 3/sqrt(n tau) <= 3/sqrt(n)). grponorm caps n_eff at n; ArviZ does not (antithetic).
    for x in ar1(np.random.default_rng(7), 20_000, phi, 2):
        n = x.size
        ours = effective_sample_size(x)
        lag = autocorr_mean_interval(x).window
        theirs = min(float(az.ess(x[None, :], method="identity")), n)
        tol = (4 * lag + 2) / n + 3 / math.sqrt(n)
        assert abs(ours / theirs - 1) <= tol, (phi, ours, theirs, lag)
        assert ours == pytest.approx(n * (1 - phi) / (1 + phi), rel=0.12)


def test_arviz_ess_without_the_mean_correction_under_covers_at_30_steps():
    # Why grponorm keeps its own estimator: at n = 30 (AR(1), phi = 0.6) the interval
    # mean +- t_{n_eff-1} sd/sqrt(n_eff) covers ~91% with grponorm's n_eff and ~86% with ArviZ's
    # (4000 series; module docstring of autocorr). Here 1500 series: 92.3% vs 88.4%; the
    # paired difference has a Monte Carlo SE of about sqrt(p_discordant / 1500) ~ 0.006:
    # require 0.02, about 3 SE below both the 0.039 measured here and the 0.05 on 4000.
    rng = np.random.default_rng(11)
    x = ar1(rng, 30, 0.6, 1500)
    ours, theirs = [], []
    for row in x:
        c = autocorr_mean_interval(row)
        ours.append(not c.resolvable or c.low <= 0.0 <= c.high)
        ne = min(float(az.ess(row[None, :], method="identity")), row.size)
        half = (scipy.stats.t.ppf(0.975, ne - 1) * row.std(ddof=1) / math.sqrt(ne)
                if ne >= 2 else math.inf)
        theirs.append(abs(row.mean()) <= half)
    assert np.mean(ours) - np.mean(theirs) > 0.02
    assert np.mean(ours) > 0.88


# ------------------------------------------------------------------------------------------
# Block bootstrap vs arch
# ------------------------------------------------------------------------------------------

#: (n, block): block dividing n or not, short series, grponorm's default blocks (7 at n=30, 40).
BLOCK_CASES = [(40, 7), (30, 7), (60, 8), (41, 7), (12, 5), (40, 8)]


def _arch_means(x: np.ndarray, block: int, reps: int, seed: int, circular: bool) -> np.ndarray:
    """Means of arch's block-bootstrap resamples of ``x``, generator ``default_rng(seed)``."""
    cls = CircularBlockBootstrap if circular else MovingBlockBootstrap
    bs = cls(block, x, seed=np.random.default_rng(seed))
    return np.array([pos[0].mean() for pos, _ in bs.bootstrap(reps)])  # (reps,)


@pytest.mark.parametrize("circular", [True, False], ids=["circular", "moving"])
@pytest.mark.parametrize("n, block", BLOCK_CASES)
def test_block_resamples_are_arch_resamples_with_the_same_generator(n, block, circular):
    # Both draw ceil(n/block) uniform starts per resample from the same Generator (in
    # [0, n) circular, [0, n - block] moving), lay blocks end to end and keep n values.
    x = ar1(np.random.default_rng(n + block), n, 0.6)[0]
    ours = _block_means(x, block, 500, circular, np.random.default_rng(5))
    np.testing.assert_allclose(ours, _arch_means(x, block, 500, 5, circular),
                               rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("n, block", BLOCK_CASES)
def test_block_bootstrap_intervals_are_archs_conf_int_with_the_same_generator(n, block):
    x = ar1(np.random.default_rng(2 * n + block), n, 0.6)[0]
    reps, conf, seed = 999, 0.9, 3

    def arch_ci(method: str) -> np.ndarray:
        bs = CircularBlockBootstrap(block, x, seed=np.random.default_rng(seed))
        return bs.conf_int(np.mean, reps=reps, method=method, size=conf).ravel()

    pct = block_bootstrap_interval(x, block=block, n_resamples=reps, seed=seed,
                                   confidence=conf, method="percentile")
    np.testing.assert_allclose((pct.low, pct.high), arch_ci("percentile"), rtol=RTOL)
    # t form: mean +- t_{n/b-1} se*, se*^2 = var(ddof=1) of the means times n/(n-b); arch's
    # "norm": mean +- z sd(ddof=0) of the same means. Exact ratio of the half-widths.
    tform = block_bootstrap_interval(x, block=block, n_resamples=reps, seed=seed,
                                     confidence=conf, method="t")
    lo, hi = arch_ci("norm")
    assert (lo + hi) / 2 == pytest.approx(x.mean(), rel=RTOL)
    ratio = (scipy.stats.t.ppf(0.95, n / block - 1) / scipy.stats.norm.ppf(0.95)
             * math.sqrt(reps / (reps - 1) * n / (n - block)))
    assert (tform.high - tform.low) / (hi - lo) == pytest.approx(ratio, rel=RTOL)


def test_circular_bootstrap_variance_matches_the_closed_form_for_both():
    # Block b dividing n: a resample's mean averages k = n/b block means drawn uniformly from
    # the n circular block means B_j, so Var*(mean*) = (1/k) (1/n) sum_j (B_j - mean)^2
    # exactly. Each sample variance of R = 20000 resampled means has a relative Monte Carlo SE
    # of about sqrt(2/R) = 1% (near-normal means): tolerance 5 SE. Independent seeds here.
    n, b, reps = 40, 8, 20_000
    x = ar1(np.random.default_rng(21), n, 0.6)[0]
    wrapped = np.concatenate([x, x[: b - 1]])
    blocks = np.convolve(wrapped, np.ones(b) / b, mode="valid")  # (n,) circular block means
    exact = float(np.mean((blocks - x.mean()) ** 2)) / (n // b)
    tol = 5 * math.sqrt(2 / reps)
    ours = _block_means(x, b, reps, True, np.random.default_rng(1))
    theirs = _arch_means(x, b, reps, 2, True)
    assert ours.var(ddof=1) == pytest.approx(exact, rel=tol)
    assert theirs.var(ddof=1) == pytest.approx(exact, rel=tol)
    assert ours.mean() == pytest.approx(x.mean(), abs=5 * math.sqrt(exact / reps))


def test_optimal_block_length_columns_stationary_and_circular():
    # Politis-White: b = (2 G^2 / D)^(1/3) n^(1/3) with D_SB = 2 g(0)^2 (stationary) and
    # D_CB = 4/3 g(0)^2 (circular), the same G and g(0): circular / stationary = 1.5^(1/3)
    # wherever neither hits arch's cap ceil(min(3 sqrt(n), n/3)).
    x = ar1(np.random.default_rng(31), 2000, 0.6, 5).T  # (n, 5): one series per column
    bl = optimal_block_length(x)
    assert list(bl.columns) == ["stationary", "circular"]
    cap = math.ceil(min(3 * math.sqrt(2000), 2000 / 3))
    ok = bl["circular"].to_numpy() < cap
    assert ok.all()
    np.testing.assert_allclose(bl["circular"] / bl["stationary"], 1.5 ** (1 / 3), rtol=RTOL)


def test_block_length_rule_against_politis_white():
    # The optimal circular block of an AR(1) is c(phi) n^(1/3) with c = (1.5 (2 phi /
    # (1 - phi^2))^2)^(1/3): 1.74 at phi = 0.6, 3.09 at phi = 0.8. grponorm's fixed 2 n^(1/3)
    # equals it at phi ~ 0.66. On 20 series of n = 20000 arch's estimate (sd of the ratio ~0.13
    # per series, so ~0.04 for the median) lands within 0.15 of c(phi), below grponorm's
    # block at phi = 0.6 and above it at phi = 0.8.
    n = 20_000
    ours = block_length(n)  # ceil(2 * 27.14) = 55
    assert ours == math.ceil(2 * n ** (1 / 3))
    for phi, side in ((0.6, -1), (0.8, +1)):
        c = (1.5 * (2 * phi / (1 - phi**2)) ** 2) ** (1 / 3)
        x = ar1(np.random.default_rng(int(phi * 10)), n, phi, 20).T  # (n, 20)
        est = float(np.median(optimal_block_length(x)["circular"]))
        assert est / n ** (1 / 3) == pytest.approx(c, abs=0.15)
        assert side * (est - ours) > 0


def test_politis_white_block_under_covers_at_30_steps():
    # Why the fixed rule stays: at n = 30 (AR(1), phi = 0.6) arch's data-driven block (median
    # 3.2, rounded up to 4; noisy) gives the t-form circular bootstrap ~86% coverage,
    # grponorm's fixed block 7 ~94% (module docstring of autocorr). Here 500 series, 999
    # resamples each: 95.0% vs 86.2%; Monte Carlo SE of the paired difference ~ sqrt(0.1 / 500)
    # ~ 0.014: require 0.03, about 4 SE below the 0.088 measured.
    x = ar1(np.random.default_rng(13), 30, 0.6, 500)
    pw = np.ceil(optimal_block_length(x.T)["circular"].to_numpy())  # (500,)
    fixed, data_driven = [], []
    for i, row in enumerate(x):
        a = block_bootstrap_interval(row, n_resamples=999, seed=i)
        b = block_bootstrap_interval(row, n_resamples=999, seed=i,
                                     block=int(min(max(pw[i], 1), 15)))
        fixed.append(not a.resolvable or a.low <= 0.0 <= a.high)
        data_driven.append(not b.resolvable or b.low <= 0.0 <= b.high)
    assert np.median(pw) < block_length(30)
    assert np.mean(fixed) - np.mean(data_driven) > 0.03
    assert np.mean(fixed) > 0.90


# ------------------------------------------------------------------------------------------
# TOST and paired / Welch intervals vs statsmodels
# ------------------------------------------------------------------------------------------

#: (label, a, b): paired arms -- normal at n = 3, 8, 40, a skewed one, a near-zero effect.
ARMS = [
    ("normal-n8", *np.random.default_rng(41).normal([[0.2], [0.0]], 0.3, size=(2, 8))),
    ("normal-n3", *np.random.default_rng(42).normal([[0.1], [0.0]], 0.2, size=(2, 3))),
    ("normal-n40", *np.random.default_rng(43).normal([[0.05], [0.0]], 0.5, size=(2, 40))),
    ("skewed-n10", np.random.default_rng(44).exponential(0.3, 10),
     np.random.default_rng(45).exponential(0.25, 10)),
    ("null-n6", *np.random.default_rng(46).normal(0.0, 1.0, size=(2, 6))),
]


@pytest.mark.parametrize("confidence", [0.95, 0.9])
@pytest.mark.parametrize("delta", [0.3, -0.3, 0.05, -1.0])
@pytest.mark.parametrize("label, a, b", ARMS, ids=[s[0] for s in ARMS])
def test_effect_reading_is_the_one_sided_test_of_statsmodels_ttost_paired(
    label, a, b, delta, confidence
):
    alpha = 1 - confidence
    r = effect_reading(a - b, delta, confidence=confidence)
    # Symmetric margins [-|delta|, |delta|]: statsmodels' test 1 is H0: md <= low, test 2
    # H0: md >= upp. The paper's side (sign of delta) decides which one "smaller" is.
    _, (_, p_low, df1), (_, p_upp, df2) = ttost_paired(a, b, -abs(delta), abs(delta))
    assert df1 == df2 == a.size - 1
    p_size = p_upp if delta > 0 else p_low
    assert r.smaller == (p_size < alpha)
    # The largest effect not excluded is the margin at which that one-sided p-value is alpha.
    low, upp = (-abs(delta), r.largest) if delta > 0 else (r.largest, abs(delta))
    _, (_, p_low, _), (_, p_upp, _) = ttost_paired(a, b, low, upp)
    assert (p_upp if delta > 0 else p_low) == pytest.approx(alpha, rel=1e-9)
    # Two-sided interval and the "reproduced" side.
    dd = DescrStatsW(a - b)
    np.testing.assert_allclose((r.low, r.high), dd.tconfint_mean(alpha=alpha), rtol=RTOL)
    _, p_two, _ = dd.ttest_mean(0.0)
    reproduced = p_two < alpha and np.sign(dd.mean) == np.sign(delta)
    assert (r.reading == "reproduced") == reproduced


def test_mean_correlation_reading_is_ttost_on_fisher_z():
    rs = np.array([0.41, 0.22, 0.35, 0.05, 0.30, 0.18, 0.27])
    z = np.arctanh(rs)
    for paper in (0.342, 0.6, -0.3):
        r = mean_correlation_reading(rs, paper)
        zl = math.atanh(r.largest)
        bounds = (-abs(zl), zl) if paper > 0 else (zl, abs(zl))
        _, (_, p_low, _), (_, p_upp, _) = ttost_paired(z, np.zeros_like(z), *bounds)
        assert (p_upp if paper > 0 else p_low) == pytest.approx(0.05, rel=1e-9)
        _, (_, p_low, _), (_, p_upp, _) = ttost_paired(
            z, np.zeros_like(z), -abs(math.atanh(paper)), abs(math.atanh(paper)))
        assert r.smaller == ((p_upp if paper > 0 else p_low) < 0.05)


@pytest.mark.parametrize("label, a, b", ARMS, ids=[s[0] for s in ARMS])
def test_compare_intervals_and_p_values_match_statsmodels(label, a, b):
    alpha = 0.05
    paired = compare(a, b)
    dd = DescrStatsW(a - b)
    np.testing.assert_allclose((paired.low, paired.high), dd.tconfint_mean(alpha=alpha),
                               rtol=RTOL)
    assert paired.p == pytest.approx(dd.ttest_mean(0.0)[1], rel=RTOL)
    welch = compare(a, b[: max(2, b.size - 1)], paired=False)
    cm = CompareMeans(DescrStatsW(a), DescrStatsW(b[: max(2, b.size - 1)]))
    np.testing.assert_allclose((welch.low, welch.high),
                               cm.tconfint_diff(alpha=alpha, usevar="unequal"), rtol=RTOL)
    assert welch.p == pytest.approx(cm.ttest_ind(usevar="unequal")[1], rel=RTOL)
