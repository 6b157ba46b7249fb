"""The effective gain of a normalizer on one group: how much it scales the group's step
relative to ``none`` (``r - mean``), the quantity the paper's claim is about (docs/theory.md
§1: std normalization as a prompt-wise step size). Shared by the trainers' metrics (each
group's gain at its success rate) and ``grponorm normalizers show`` (the curve)."""

from __future__ import annotations

import numpy as np

__all__ = ["gains"]


def _row_norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=1))  # (n_groups,)


def gains(adv: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Effective gain ``||A_i|| / ||r_i - mean(r_i)||`` of each group (row).

    Args:
        adv: ``(n_groups, G)`` advantages of some normalizer on ``rewards``.
        rewards: ``(n_groups, G)`` rewards.

    Returns:
        ``(n_groups,)`` gains; 0 for a flat group (all rewards equal) that gets zero advantage
        (0/0 := 0: the group gets no step), ``inf`` for a flat group that a normalizer moves
        anyway (e.g. a batch-mean baseline; its ``||A||`` is then the meaningful number).
    """
    adv = np.asarray(adv, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if adv.shape != rewards.shape or adv.ndim != 2:
        raise ValueError(f"need matching (n_groups, G) arrays; got {adv.shape}, {rewards.shape}")
    base = _row_norms(rewards - rewards.mean(axis=1, keepdims=True))  # (n_groups,)
    flat = np.all(rewards == rewards[:, :1], axis=1)  # (n_groups,)
    num = _row_norms(adv)  # (n_groups,)
    flat_gain = np.where(num > 0, np.inf, 0.0)  # (n_groups,): x/0 = inf, 0/0 := 0
    return np.where(flat, flat_gain, num / np.where(flat, 1.0, base))
