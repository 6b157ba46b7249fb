"""Baselines and scales from the field (2025-26): NeMo-RL's leave-one-out z-score, REINFORCE++
with baseline, batch z-score, MaxRL, OPO, James-Stein shrinkage and GDPO (docs/theory.md §7).

Each docstring gives the formula, its source, and every difference from the peer (epsilon,
ddof, singletons, flat groups). ``opo`` needs completion lengths, ``gdpo`` reward components;
both arrive as keyword arguments (see :class:`~grponorm.normalizers.NormalizerContext`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ops import (
    Array,
    as_like,
    as_numpy,
    center,
    check_ddof,
    check_nonneg,
    group_size,
    mean,
    safe_div,
    std,
    total,
    where,
    whiten,
    zero_variance_mask,
)
from .registry import register_normalizer


def _token_weighted(options: Mapping[str, Any]) -> bool:
    return bool(options.get("token_weighted", False))


def _lengths_if_weighted(options: Mapping[str, Any]) -> tuple[str, ...]:
    return ("lengths",) if _token_weighted(options) else ()


def _group_means(s: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-row mean of the row's group, one correction pass (as :func:`ops.center`). (bs,)"""
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)  # (n_groups,)
    m = np.bincount(inverse, weights=s, minlength=n_groups) / counts  # (n_groups,)
    d = s - m[inverse]  # (bs,)
    m = m + np.bincount(inverse, weights=d, minlength=n_groups) / counts
    return m[inverse]  # (bs,)


# --------------------------------------------------------------------------------------------
# NeMo-RL's GRPO: leave-one-out baseline and leave-one-out std
# --------------------------------------------------------------------------------------------


@register_normalizer("loo_std")
def loo_std(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """Leave-one-out baseline and leave-one-out std (NeMo-RL's default GRPO advantage).

    ``A_g = (r_g - m_{-g}) / (s_{-g} + eps)`` where ``m_{-g}`` and ``s_{-g}`` are the mean and std
    of the *other* ``G - 1`` rewards of the group, ``s_{-g} = sqrt(SS_{-g} / (G - 1 - ddof))``;
    where ``s_{-g} = 0`` the advantage is left unscaled, ``r_g - m_{-g}``.

    Source: NeMo-RL ``calculate_baseline_and_std_per_prompt`` (``nemo_rl/algorithms/utils.py``)
    with ``leave_one_out_baseline=True``, as used by ``GRPOAdvantageEstimator``
    (``nemo_rl/algorithms/advantage_estimator.py``, ``normalize_rewards=True``): the std there is
    ``sqrt((E_{-g}[r^2] - m_{-g}^2) * n / (n - 1))`` with ``n = G - 1`` -- the Bessel std of the
    other ``G - 1`` (``ddof=1``, the default here; ``ddof=0`` gives their population std), then
    ``nan_to_num(0)``; the division is ``/(std + 1e-6)`` only where ``std > 0`` ("don't sharpen
    the ones with no variation"). Edge cases, as NeMo-RL: ``G = 2`` has one other sample, whose
    Bessel std is 0/0 -> 0, so ``A = r_g - r_h`` unscaled; a sample whose others are all equal
    (e.g. the lone success of ``[1, 0, 0]``) is unscaled too; a singleton gets 0 (NeMo-RL sets
    its baseline to the reward). ``eps`` is the floor of the division (amplification at most
    ``1/eps`` relative to the spread).

    Differences: ``s_{-g}`` is computed two-pass over the others (and is exactly 0 when the
    others are all equal) instead of NeMo-RL's ``E[r^2] - E[r]^2``, which can leave a rounding
    residue and then divide by a tiny std (``[a, a, b]`` with inexact ``a``); all-equal groups
    get exactly 0 (NeMo-RL: ``r - m_{-g}``, 0 up to rounding). Computed in float64, ``O(G^2)``
    per group.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the leave-one-out std (1: Bessel, NeMo-RL).
        eps: Non-negative constant added to the leave-one-out std.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    check_nonneg("eps", eps)
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0; got {ddof!r}")
    g = group_size(rewards)
    if g < 2:
        return center(rewards, axis=1)  # (n_groups, 1), zeros
    r = as_numpy(rewards)  # (n_groups, G)
    others = ~np.eye(g, dtype=bool)[None, :, :]  # (1, G, G): [., g, h] is h != g
    vals = np.broadcast_to(r[:, None, :], (r.shape[0], g, g))  # (n_groups, G, G)
    m = np.where(others, vals, 0.0).sum(-1, keepdims=True) / (g - 1)  # (n_groups, G, 1)
    d = np.where(others, vals - m, 0.0)  # (n_groups, G, G)
    m = m + d.sum(-1, keepdims=True) / (g - 1)  # one correction pass, as ops.center
    d = np.where(others, vals - m, 0.0)
    hi = np.where(others, vals, -np.inf).max(-1)  # (n_groups, G)
    lo = np.where(others, vals, np.inf).min(-1)
    diff = r - m[..., 0]  # (n_groups, G), r_g - m_{-g}
    dof = g - 1 - ddof
    if dof <= 0:
        return as_like(diff, rewards)  # the others' std is 0 everywhere: unscaled
    s = np.sqrt((d * d).sum(-1) / dof)  # (n_groups, G)
    s = np.where(hi > lo, s, 0.0)  # others all equal: exactly 0
    return as_like(diff / np.where(s > 0, s + eps, 1.0), rewards)  # (n_groups, G)


# --------------------------------------------------------------------------------------------
# REINFORCE++ with baseline, batch z-score
# --------------------------------------------------------------------------------------------


def _ragged_reinforce_pp(scores, inverse, n_groups, *, eps=1e-8, token_weighted=False,
                         lengths=None):
    s = as_numpy(scores)  # (bs,)
    counts = np.bincount(inverse, minlength=n_groups)[inverse]  # (bs,)
    c = np.where(counts > 1, s - _group_means(s, inverse, n_groups), 0.0)  # (bs,)
    w = as_numpy(lengths) if token_weighted else None
    return as_like(whiten(c, w, eps=eps), scores)  # (bs,)


@register_normalizer(
    "reinforce_pp_baseline",
    batch_level=True,
    context=_lengths_if_weighted,
    zero_flat=lambda options: not _token_weighted(options),
    ragged=_ragged_reinforce_pp,
)
def reinforce_pp_baseline(
    rewards: Array, *, eps: float = 1e-8, token_weighted: bool = False, lengths: Any = None
) -> Array:
    """REINFORCE++ with baseline (arXiv:2501.03262): group mean baseline, then batch whitening.

    ``c = r - mean_g(r)``, then ``A = (c - m) / sqrt(v + eps)`` with ``m``, ``v`` the mean and
    Bessel variance of ``c`` over the batch (:func:`ops.whiten`). Source: verl
    ``compute_reinforce_plus_plus_baseline_outcome_advantage`` (``core_algos.py``), whose
    whitening is ``verl_F.masked_whiten`` over the *tokens* of ``response_mask`` (each row weighs
    its length, ``rsqrt(var + 1e-8)``): ``token_weighted=True`` (needs ``lengths``) reproduces
    that; the default weighs every sample once.

    ``eps`` (verl's 1e-8, added to the variance) is the floor of the division. Flat groups: with
    sample weights ``m = 0`` exactly in exact arithmetic, so a flat group stays 0 (zeroed
    centrally); with token weights ``m != 0`` and whitening moves a flat group to ``-m/sqrt(v)``,
    as in verl (``zero_flat`` is then False). Differences: a singleton gets ``c = 0`` (verl: mean
    0, so ``c = r``, the raw score); verl's ``masked_mean`` divides by ``N + 1e-8``
    (a 1e-8/N relative bias, not reproduced). Batch-level: on ragged groups the same formula runs
    over the rows (registered ``ragged`` implementation).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        eps: Non-negative constant added to the batch variance.
        token_weighted: Weigh each sample by its length (verl's token-level whitening).
        lengths: ``(n_groups, G)`` completion lengths (context; needed if ``token_weighted``).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    check_nonneg("eps", eps)
    c = center(rewards, axis=1) if group_size(rewards) > 1 else rewards * 0.0  # (n_groups, G)
    return whiten(c, lengths if token_weighted else None, eps=eps)  # (n_groups, G)


def _ragged_batch_zscore(scores, inverse, n_groups, *, ddof=1, eps=1e-6):
    x = as_numpy(scores)[None, :]  # (1, bs)
    return as_like(batch_zscore(x, ddof=ddof, eps=eps)[0], scores)  # (bs,)


@register_normalizer(
    "batch_zscore", batch_level=True, zero_flat=False, ragged=_ragged_batch_zscore
)
def batch_zscore(rewards: Array, *, ddof: int = 1, eps: float = 1e-6) -> Array:
    """Batch z-score: ``A = (r - mean_batch) / (std_batch + eps)``, no group structure at all.

    Source: ROLL ``reward_norm`` with ``norm_mean_type="batch"``, ``norm_std_type="batch"``
    (``(r - r.mean()) / (r.std() + 1e-6)``, ``torch.std``: Bessel, ``ddof=1``), the batch-level
    normalization AReaL also offers. ``eps`` is the floor of the division.

    Flat groups are *not* zero: the baseline is the batch mean, so an all-correct group gets a
    positive advantage (``zero_flat=False``). Only an all-equal batch gives 0. Ragged groups are
    irrelevant (registered ``ragged`` implementation: the same formula over the rows).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the batch std (1: Bessel, as ROLL).
        eps: Non-negative constant added to the std.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    check_nonneg("eps", eps)
    s = std(rewards, axis=None, ddof=ddof)  # (1, 1)
    return safe_div(center(rewards, axis=None), s + eps)  # (n_groups, G)


# --------------------------------------------------------------------------------------------
# MaxRL, OPO
# --------------------------------------------------------------------------------------------


@register_normalizer("max_rl")
def max_rl(rewards: Array, *, eps: float = 0.0) -> Array:
    """MaxRL (Tajwar et al. 2026, arXiv:2602.02710): ``A = (r - mean) / (mean + eps)``.

    Source: prime-rl ``MaxRLAlgorithm.score_group`` (``src/prime_rl/orchestrator/algo/max_rl.py``):
    ``zeros if mean <= 0 else (r - mean) / mean``, float32, no epsilon. Here the same rule in the
    input's precision: a group with ``mean <= 0`` gets 0, others ``(r - mean)/(mean + eps)``;
    ``eps = 0`` (default) is prime-rl. The guard is the ``mean > 0`` test (for binary rewards
    ``mean >= 1/G``, so ``|A| <= G - 1``); ``eps > 0`` is an optional extra floor. Designed for
    non-negative rewards; negative ones are not rejected (as prime-rl). Flat groups: 0.

    Args:
        rewards: ``(n_groups, G)`` floating rewards (canonically binary).
        eps: Non-negative constant added to the mean.

    Returns:
        ``(n_groups, G)`` advantages.
    """
    check_nonneg("eps", eps)
    mu = mean(rewards, axis=1)  # (n_groups, 1)
    ok = mu > 0
    return where(ok, center(rewards, axis=1) / where(ok, mu + eps, 1.0), 0.0)  # (n_groups, G)


@register_normalizer("opo", context=("lengths",))
def opo(rewards: Array, *, lengths: Any) -> Array:
    """On-Policy RL with Optimal reward baseline (OPO, arXiv:2505.23585): a length-weighted mean.

    ``A_g = r_g - sum_h |o_h| r_h / sum_h |o_h|`` with ``|o_h|`` the completion length (tokens).
    Source: verl ``compute_opo_outcome_advantage`` (``core_algos.py``), lengths
    ``response_mask.sum(-1)``, no std. Needs context ``lengths``; a group whose lengths sum to 0
    raises ValueError (verl: 0/0 = NaN). Differences: a singleton gets 0 (verl: baseline 0, so
    ``A = r``); flat groups get exactly 0 (verl: 0 up to the rounding of the weighted mean).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        lengths: ``(n_groups, G)`` completion lengths (context).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    w = lengths  # (n_groups, G)
    wsum = total(w, axis=1)  # (n_groups, 1)
    if bool((wsum <= 0).any()):
        raise ValueError("opo needs every group's completion lengths to sum to > 0")
    base = total(w * rewards, axis=1) / wsum  # (n_groups, 1)
    return rewards - base  # (n_groups, G)


# --------------------------------------------------------------------------------------------
# James-Stein shrinkage
# --------------------------------------------------------------------------------------------


@register_normalizer("shrinkage", batch_level=True, zero_flat=False)
def shrinkage(rewards: Array, *, ddof: int = 1) -> Array:
    """Shrinkage baseline (Zeng et al. 2025, arXiv:2511.03710): per-prompt mean shrunk toward
    the batch mean (James-Stein), ``A = r - b_i``.

    ``b_i = mu_bar + c (mu_i - mu_bar)`` with ``mu_i`` the group means, ``mu_bar`` their mean,
    and the positive-part James-Stein factor (Efron-Morris form for an estimated target)
    ``c = max(0, 1 - (n - 3) tau^2 / S)``, ``S = sum_i (mu_i - mu_bar)^2``,
    ``tau^2 = sigma^2 / G`` the sampling variance of a group mean, ``sigma^2`` the pooled
    within-group variance (mean over groups of the ``ddof`` variance). ``n <= 3`` groups or
    ``S = 0`` give ``c = 1`` (the plain group mean: Dr. GRPO). The paper motivates this
    estimator; the exact variant of its experiments was not checked against its code (none
    reachable here), so this is the textbook estimator it names. No division by a std; the one
    division ``tau^2 / S`` is guarded (``S = 0`` -> ``c = 1``).

    Flat groups are *not* zero: their baseline is pulled toward the batch mean
    (``A = (1 - c)(mu_i - mu_bar)``), so ``zero_flat=False``. Batch-level (``c`` and
    ``mu_bar`` come from all groups).

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        ddof: Delta degrees of freedom of the within-group variance (1: Bessel).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    g = group_size(rewards)
    n = int(rewards.shape[0])
    mu = mean(rewards, axis=1)  # (n_groups, 1)
    if g < 2 or n <= 3:
        return rewards - mu  # c = 1
    check_ddof(ddof, g)
    dev = center(mu, axis=None)  # (n_groups, 1), mu_i - mu_bar
    s = total(dev * dev)  # (1, 1)
    sigma2 = mean(std(rewards, axis=1, ddof=ddof) ** 2)  # (1, 1), pooled within-group variance
    c = 1.0 - safe_div((n - 3) * sigma2 / g, s)  # (1, 1); S = 0 -> 1
    c = where(s > 0, where(c > 0, c, 0.0), 1.0)  # positive part
    base = mu - (1.0 - c) * dev  # (n_groups, 1), = mu_bar + c (mu_i - mu_bar)
    return rewards - base  # (n_groups, G)


# --------------------------------------------------------------------------------------------
# GDPO
# --------------------------------------------------------------------------------------------


def _gdpo_context(options: Mapping[str, Any]) -> tuple[str, ...]:
    return ("components", *_lengths_if_weighted(options))


def _check_gdpo(options: Mapping[str, Any]) -> None:
    weights = options.get("weights")
    if weights is not None:
        if not isinstance(weights, Sequence) or isinstance(weights, str) or not weights:
            raise ValueError(f"gdpo weights must be a non-empty list of numbers; got {weights!r}")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
                raise ValueError(f"gdpo weights must be finite numbers; got {weights!r}")


@register_normalizer(
    "gdpo", batch_level=True, context=_gdpo_context, zero_flat=False, check=_check_gdpo
)
def gdpo(
    rewards: Array,
    *,
    components: Any,
    weights: Sequence[float] | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
    whiten_eps: float = 1e-8,
    token_weighted: bool = False,
    lengths: Any = None,
) -> Array:
    """GDPO (arXiv:2601.05242): each reward component z-scored within its group, weighted sum,
    then batch whitening.

    ``z_k = (r_k - mean_g r_k) / (std_g r_k + eps)`` per component ``k`` (0 for a group flat in
    that component), ``A_sum = sum_k w_k z_k``, ``A = whiten(A_sum)`` (:func:`ops.whiten`:
    ``(x - m)/sqrt(v + whiten_eps)``, Bessel ``v``). Source: verl
    ``compute_gdpo_outcome_advantage`` (``core_algos.py``: ``compute_grpo_outcome_advantage`` per
    component, ``epsilon=1e-6``, ``torch.std`` i.e. ``ddof=1``, then ``masked_whiten`` over the
    response tokens: ``token_weighted=True`` with ``lengths`` reproduces it). Peers: TRL
    ``multi_objective_aggregation="normalize_then_sum"`` (component std ``+ 1e-4``, final
    ``(x - mean)/(std + 1e-4)``: ``eps=1e-4``, and its final floor is on the std, not the
    variance), NeMo-RL ``GDPOAdvantageEstimator`` (leave-one-out component baselines and stds,
    final ``(x - mean)/std``).

    Needs context ``components`` ``(n_groups, G, K)``; ``rewards`` only fixes the shape (the
    combined reward). ``weights`` default to 1 per component (verl, NeMo-RL; the TRL trainer
    passes its ``reward_weights``). Floors: ``eps`` on each component std, ``whiten_eps`` on the
    batch variance.

    Flat groups: a group flat in every component gets 0 before whitening, and with sample
    weights stays exactly 0 (zeroed here: the batch mean of ``A_sum`` is 0 in exact arithmetic);
    with token weights whitening moves it, as in verl. A group flat in the *summed* reward but
    not in its components is not zero -- GDPO's point -- so the central rule does not apply
    (``zero_flat=False``). Differences: a singleton gets 0 (verl's GRPO passes
    ``r/(1 + eps)`` through per component).

    Args:
        rewards: ``(n_groups, G)`` combined rewards (for the shape).
        components: ``(n_groups, G, K)`` per-component rewards (context).
        weights: ``K`` component weights, or None for all 1.
        ddof: Delta degrees of freedom of the component stds (1: Bessel).
        eps: Non-negative constant added to each component std.
        whiten_eps: Non-negative constant added to the batch variance.
        token_weighted: Weigh each sample by its length in the whitening (verl).
        lengths: ``(n_groups, G)`` completion lengths (context; needed if ``token_weighted``).

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: ``weights`` do not match the number of components.
    """
    check_nonneg("eps", eps)
    check_nonneg("whiten_eps", whiten_eps)
    _check_gdpo({"weights": weights})
    k = int(components.shape[2])
    if weights is not None and len(weights) != k:
        raise ValueError(f"gdpo got {len(weights)} weights for {k} reward components")
    w = [1.0] * k if weights is None else [float(v) for v in weights]
    acc = rewards * 0.0  # (n_groups, G)
    all_flat = None
    for j in range(k):
        r = components[:, :, j]  # (n_groups, G)
        flat = zero_variance_mask(r)  # (n_groups,)
        z = safe_div(center(r, axis=1), std(r, axis=1, ddof=ddof) + eps)  # (n_groups, G)
        acc = acc + w[j] * where(flat[:, None], 0.0, z)
        all_flat = flat if all_flat is None else all_flat & flat
    adv = whiten(acc, lengths if token_weighted else None, eps=whiten_eps)  # (n_groups, G)
    if not token_weighted:
        adv = where(all_flat[:, None], 0.0, adv)
    return adv
