"""Two-fold cross-fitted selection of a hyper-parameter over seeds (E3's and E6's tuned LR).

Choosing each arm's best learning rate by the same seeds' scores and then reporting those
scores biases the tuned result upwards, more so for a noisier arm (the winner's curse). Here the
seeds are split by the parity of their index into two folds; a seed's value is chosen on the
*other* fold (the value with the highest mean score there) and scored on the seed itself. No
score selects its own value, and every seed still counts (Chernozhukov et al. 2018, "Double/
debiased machine learning", §3: cross-fitting with K = 2 folds).

This module is a bottom layer: NumPy only, no grponorm imports.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["crossfit", "fold_choices"]


def crossfit(finals: Mapping[float, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two-fold cross-fitted best value (e.g. learning rate) per seed.

    Folds: even and odd seed indices (positions in the arrays, not seed numbers). The value of
    a fold's seeds maximizes the mean score over the other fold: with ``F[l, s]`` the score of
    value ``l`` on seed ``s`` and folds ``A`` (even) and ``B`` (odd),
    ``pick(A) = argmax_l mean_{s in B} F[l, s]`` and ``pick(B) = argmax_l mean_{s in A} F[l, s]``;
    seed ``s`` then scores ``F[pick(fold(s)), s]``. Ties go to the first value in ``finals``'
    order (pass them sorted ascending for "the smaller one"). One seed has no other fold: its
    own score picks (in-sample).

    Args:
        finals: value -> (S,) per-seed score, the same seeds in the same order for every value.

    Returns:
        (value per seed (S,), score per seed at that value (S,)), float64.

    Raises:
        ValueError: If ``finals`` is empty, an array is not 1-D, the arrays differ in length,
            hold no seed, or hold a NaN/inf.
    """
    if not finals:
        raise ValueError("crossfit: no values to choose from")
    values = list(finals)
    rows = [np.asarray(finals[v], dtype=np.float64) for v in values]
    if any(r.ndim != 1 for r in rows) or len({r.size for r in rows}) != 1 or rows[0].size == 0:
        raise ValueError("crossfit: every value needs a 1-D array of the same, non-zero number "
                         f"of seeds; got shapes {[r.shape for r in rows]}")
    F = np.stack(rows)  # (L, S)
    if not np.isfinite(F).all():
        raise ValueError("crossfit: scores must be finite")
    idx = np.arange(F.shape[1])  # (S,)
    pick = np.zeros(F.shape[1], dtype=np.int64)  # (S,) index into values
    for fold in (idx % 2 == 0, idx % 2 == 1):
        other = ~fold if (~fold).any() else fold
        pick[fold] = int(np.argmax(F[:, other].mean(axis=1)))
    return np.asarray(values, dtype=np.float64)[pick], F[pick, idx]


def fold_choices(chosen: np.ndarray) -> dict[str, float | None]:
    """The value each fold was given (``crossfit``'s first output): ``{"even": v, "odd": v}``;
    ``None`` for a fold with no seed. The even fold's value was chosen on the odd seeds, and the
    other way round."""
    chosen = np.asarray(chosen, dtype=np.float64)  # (S,)
    return {name: (float(chosen[k]) if chosen.size > k else None)
            for k, name in ((0, "even"), (1, "odd"))}
