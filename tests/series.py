"""Simulated series shared by the statistics tests."""

from __future__ import annotations

import math

import numpy as np


def ar1(rng: np.random.Generator, n: int, phi: float, reps: int = 1) -> np.ndarray:
    """``reps`` stationary AR(1) series of length n, unit innovations, mean 0: (reps, n)."""
    e = rng.normal(size=(reps, n))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x
