"""rliable's aggregate estimates (IQM, probability of improvement) beside the paired means of
E3 and E6: one function, used by both."""

from __future__ import annotations

import warnings

import numpy as np

from ..stats.paired import Verdict
from .rows import VerdictCell

__all__ = ["rliable_rows"]


def rliable_rows(values: dict[str, tuple[list, list]], arms: tuple, what: str,
                 reps: int = 2000, seed: int = 0) -> list[dict]:
    """rliable's aggregate estimates beside the paired means (Agarwal et al. 2021, "Deep RL at
    the edge of the statistical precipice"): per slice, each arm's interquartile mean
    (``metrics.aggregate_iqm``) and the probability of improvement P(Std > No-Std)
    (``metrics.probability_of_improvement``, the Mann-Whitney U over the runs of the two arms
    divided by ``n_a n_b``), each with rliable's stratified-bootstrap 95% percentile interval
    (``library.get_interval_estimates``, ``reps`` resamples, seeded by ``seed``; NumPy's global
    generator is restored afterwards). The probability of
    improvement resamples the arms independently (rliable's ``StratifiedIndependentBootstrap``):
    it does not use the pairing by seed. Secondary: no verdict is claimed from these rows.

    Args:
        values: slice -> (Std's per-seed values, No-Std's), each (n,).
        what: which values these are (shown in the rows).
    """
    from rliable import library as rly
    from rliable import metrics as rlm

    def iqm(x):
        return np.array([rlm.aggregate_iqm(x)])

    def poi(x, y):
        return np.array([rlm.probability_of_improvement(x, y)])

    def estimate(scores, func):
        # rliable's stratified bootstraps draw their indices from NumPy's global generator
        # (np.random.choice), whatever random_state says: seed it for this call, then restore
        state = np.random.get_state()  # noqa: NPY002 (the generator rliable draws from)
        np.random.seed(seed)  # noqa: NPY002
        try:
            with warnings.catch_warnings():  # arch's note on RandomState, which rliable passes
                warnings.simplefilter("ignore", FutureWarning)
                point, interval = rly.get_interval_estimates(
                    {"x": scores}, func, reps=reps, random_state=np.random.RandomState(seed))
        finally:
            np.random.set_state(state)  # noqa: NPY002
        return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])

    rows = []
    for s, (xa, xb) in values.items():
        a = np.asarray(xa, dtype=np.float64)[:, None]  # (n, 1 task)
        b = np.asarray(xb, dtype=np.float64)[:, None]  # (n, 1 task)
        if a.shape[0] < 2 or b.shape[0] < 2:
            continue
        for arm, x in zip(arms, (a, b), strict=True):
            est, low, high = estimate(x, iqm)
            rows.append({"what": f"IQM of {arm} (rliable, stratified bootstrap), {what}",
                         "slice": s, "arm": arm, "estimate": est, "low": low, "high": high,
                         "n": int(x.shape[0]), "reps": reps,
                         "text": f"{est:.3f} [{low:.3f}, {high:.3f}], n={x.shape[0]}",
                         "cell": VerdictCell(f"{Verdict.MEASURED.value} (secondary)",
                                             Verdict.MEASURED)})
        est, low, high = estimate([a, b], poi)
        side = ("excludes 0.5" if low > 0.5 or high < 0.5 else "contains 0.5")
        rows.append({"what": f"probability of improvement P({arms[0]} > {arms[1]}) (rliable, "
                             f"arms resampled independently), {what}",
                     "slice": s, "estimate": est, "low": low, "high": high,
                     "n": int(a.shape[0]), "reps": reps,
                     "text": f"{est:.3f} [{low:.3f}, {high:.3f}], n={a.shape[0]} per arm",
                     "cell": VerdictCell(f"{Verdict.MEASURED.value} (secondary; the interval "
                                         f"{side})", Verdict.MEASURED)})
    return rows
