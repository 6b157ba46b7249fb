"""The group normalizers of GRPO and its first variants: z-score, mean-only, batch std, RLOO,
and the Bernoulli forms of the exact theory (docs/theory.md §1)."""

from __future__ import annotations

from .ops import (
    Array,
    _center,
    _check_binary,
    _check_nonneg,
    _group_size,
    _mean,
    _safe_div,
    _sqrt,
    _std,
    _sum,
)
from .registry import register_normalizer

# Normalizers
# --------------------------------------------------------------------------------------------


@register_normalizer("group_std")
def group_std(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """GRPO advantage: the group-standardized reward.

    ``A_g = (r_g - mean(r)) / (std(r) + eps)`` with mean and std over the group's G rewards and
    ``std = sqrt(sum_h (r_h - mean)^2 / (G - ddof))``.

    The defaults (``ddof=1``, i.e. Bessel's unbiased std as ``torch.std`` computes it, and
    ``eps=1e-6``) reproduce verl's GRPO estimator with ``norm_adv_by_std_in_grpo=True``.
    ``eps=1e-4`` (``ddof=1``) reproduces TRL GRPOTrainer's ``scale_rewards="group"`` and
    ``eps=1e-9`` OpenRLHF's ``group_norm``; ``ddof=0`` gives the population std (with ``eps=0``
    on binary rewards this is :func:`bernoulli_std`).

    ``eps`` is the explicit floor that guards the division: it bounds the amplification by
    ``1/eps`` for groups with tiny but nonzero spread. It must be ``>= 0``; with ``eps=0`` the
    only guard is the exact-zero rule for all-equal groups.

    Differences from the peers, by design: all-equal groups get exactly 0 (TRL and verl give
    ``(r - mean)/eps``, a rounding residue such as 1e-17/1e-6 when the mean is inexact), and
    ``G == 1`` gives 0 (verl passes a singleton group's raw reward through).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    _check_nonneg("eps", eps)
    centered = _center(rewards, axis=1)  # (n_groups, G)
    std = _std(rewards, axis=1, ddof=ddof)  # (n_groups, 1)
    return _safe_div(centered, std + eps)  # (n_groups, G)


@register_normalizer("none")
def no_std(rewards: Array) -> Array:
    """No-Std (Dr. GRPO; OpenRLHF ``dr_grpo``, TRL ``scale_rewards="none"``): mean baseline only.

    ``A_g = r_g - mean(r)``, the mean over the group's G rewards.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    return _center(rewards, axis=1)  # (n_groups, G)


@register_normalizer("batch_std", batch_level=True)
def batch_std(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """Group-mean baseline, batch-wide scale (TRL GRPOTrainer ``scale_rewards="batch"``).

    ``A_{i,g} = (r_{i,g} - mean_g r_{i,.}) / (std(all n_groups * G rewards) + eps)``: the mean is
    per group, the std is one number over the whole batch (around the batch mean), so the
    relative weight of prompts is preserved. ``eps=1e-4`` (``ddof=1``) matches TRL.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the batch std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std (the floor guarding the division).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    _check_nonneg("eps", eps)
    centered = _center(rewards, axis=1)  # (n_groups, G)
    std = _std(rewards, axis=None, ddof=ddof)  # (1, 1)
    return _safe_div(centered, std + eps)  # (n_groups, G)


@register_normalizer("rloo")
def rloo(rewards: Array) -> Array:
    """REINFORCE leave-one-out (RLOO): each sample's baseline is the mean of the other G - 1.

    ``A_g = r_g - (1/(G-1)) sum_{h != g} r_h = G/(G-1) * (r_g - mean(r))``; identical to
    OpenRLHF's ``rloo`` (``r - (sum - r)/(G - 1)``).

    Args:
        rewards: ``(n_groups, G)`` floating rewards, ``G >= 2``.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If ``G < 2`` (no other samples to form the baseline).
    """
    group_size = _group_size(rewards)
    if group_size < 2:
        raise ValueError(
            f"rloo needs G >= 2 samples per group (the baseline is the mean of the other G - 1); "
            f"got G={group_size}"
        )
    return _center(rewards, axis=1) * (group_size / (group_size - 1))  # (n_groups, G)


@register_normalizer("bernoulli_std")
def bernoulli_std(rewards: Array) -> Array:
    """Exact-theory GRPO for binary rewards: standardize by the Bernoulli std of the group.

    ``A_g = (r_g - p) / sqrt(p (1 - p))`` with ``p = k/G`` the group's success rate (k successes).
    This equals :func:`group_std` with ``ddof=0, eps=0`` on binary rewards. ``1 - p`` is computed
    as ``mean(1 - r)`` (exact for binary rewards) rather than ``1 - mean(r)``.

    No eps is needed: a non-degenerate group has ``1 <= k <= G - 1``, so
    ``p (1 - p) = k (G - k) / G^2 >= (G - 1) / G^2`` and ``|A_g| <= sqrt(G - 1)``. Degenerate
    groups (``p`` in {0, 1}) are still guarded -- 0/0 gives 0 -- and then zeroed by
    :func:`normalize`.

    Args:
        rewards: ``(n_groups, G)`` rewards in {0, 1}.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If a reward is not 0 or 1 (the message names its group and sample).
    """
    _check_binary(rewards, "bernoulli_std")
    p = _mean(rewards, axis=1)  # (n_groups, 1)
    q = _mean(1.0 - rewards, axis=1)  # (n_groups, 1), = 1 - p
    return _safe_div(_center(rewards, axis=1), _sqrt(p * q))  # (n_groups, G)


@register_normalizer("bernoulli_smoothed")
def bernoulli_smoothed(rewards: Array, *, alpha: float = 1.0) -> Array:
    """Bernoulli standardization with a smoothed success rate in the scale (research extension).

    ``A_g = (r_g - p) / sqrt(p~ (1 - p~))`` with ``p = k/G`` and ``p~ = (k + alpha)/(G + 2 alpha)``
    (``alpha = 1``: Laplace's rule of succession). The numerator keeps the unbiased baseline
    ``p`` so each group's advantages still sum to zero; only the scale is smoothed, which caps the
    ``1/std`` amplification of nearly solved or nearly failed prompts: ``p~ (1 - p~)`` is bounded
    away from 0 for every ``k``, so no eps is needed. ``alpha = 0`` recovers :func:`bernoulli_std`.

    Args:
        rewards: ``(n_groups, G)`` rewards in {0, 1}.
        alpha: Non-negative pseudo-count added to both successes and failures.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If a reward is not 0 or 1, or ``alpha`` is negative or not finite.
    """
    _check_nonneg("alpha", alpha)
    _check_binary(rewards, "bernoulli_smoothed")
    group_size = _group_size(rewards)
    k = _sum(rewards, axis=1)  # (n_groups, 1), successes
    p_smooth = (k + alpha) / (group_size + 2 * alpha)  # (n_groups, 1)
    q_smooth = (group_size - k + alpha) / (group_size + 2 * alpha)  # (n_groups, 1), = 1 - p~
    return _safe_div(_center(rewards, axis=1), _sqrt(p_smooth * q_smooth))  # (n_groups, G)


# Normalizers from the field (2025): BNPO, MAPO, GPG, verl's pass@k GRPO.
