"""Baselines and scales from the field (2025-26): NeMo-RL's leave-one-out z-score, REINFORCE++
with baseline, batch z-score, MaxRL, OPO, JSPO's shrinkage baseline, the textbook James-Stein
baseline and GDPO (docs/theory.md §7).

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


_NEGATIVE_MEAN = ("flip", "zero")


def _check_max_rl(options: Mapping[str, Any]) -> None:
    if "eps" in options:
        check_nonneg("eps", options["eps"])
    rule = options.get("negative_mean", "flip")
    if rule not in _NEGATIVE_MEAN:
        raise ValueError(f"negative_mean must be 'flip' or 'zero'; got {rule!r}")
    scale = options.get("scale_by_group_size", True)
    if not isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"scale_by_group_size must be a bool; got {type(scale).__name__}")


@register_normalizer("max_rl", check=_check_max_rl)
def max_rl(
    rewards: Array,
    *,
    eps: float = 1e-6,
    scale_by_group_size: bool = True,
    negative_mean: str = "flip",
) -> Array:
    """MaxRL (Tajwar et al. 2026, arXiv:2602.02710): ``A = (r - mean) / (mean + eps) / G``.

    Source, the authors' code: ``compute_p_normalization_outcome_advantage`` (adv_estimator
    ``p_normalization``, the one their MaxRL run scripts select) in github.com/Zanette-Labs/MaxRL,
    ``verl/trainer/ppo/core_algos.py`` (commit 76e04d1, lines 393-442): per group the float32
    ``mean``; ``A = 0`` where ``mean == 0.0`` exactly, else ``A = (r - mean)/(mean + 1e-6)``; then
    every advantage times ``1/N``, ``N`` the size of the first row's group (one global constant).
    The defaults are exactly that: ``eps = 1e-6``, ``scale_by_group_size=True`` (the ``1/G``),
    ``negative_mean="flip"`` (a group with ``mean < 0`` keeps ``(r - mean)/(mean + eps)``, whose
    sign is flipped: a sample above the mean gets a negative advantage, as in the authors' code).
    ``negative_mean="zero"`` gives 0 to every group with ``mean <= 0``; with ``eps=0`` and
    ``scale_by_group_size=False`` that is prime-rl's ``MaxRLAlgorithm.score_group``
    (``src/prime_rl/orchestrator/algo/max_rl.py``: ``zeros if mean <= 0 else (r - mean)/mean``).

    Guard: the ``mean == 0`` test (0 there); for rewards >= 0, the domain MaxRL is defined on
    (canonically binary), a group with spread has ``mean > 0`` and the divisor ``mean + eps >=
    min(r > 0)/G``. With negative rewards the divisor can be arbitrarily small; a group whose
    ``mean + eps`` is exactly 0 raises ValueError (the authors' code gives inf/NaN there).

    Differences from the authors' code: float64 (theirs: float32 means); all-equal groups get
    exactly 0 (theirs: the rounding residue of ``r - mean`` divided by ``mean + eps``); on ragged
    batches (one group size per bucket) each group is scaled by ``1/`` its own size (theirs: the
    size of the first row's group for all). Singletons get 0, as theirs.

    Args:
        rewards: ``(n_groups, G)`` floating rewards (canonically binary).
        eps: Non-negative constant added to the mean.
        scale_by_group_size: Multiply every advantage by ``1/G`` (the authors' ``/ N``).
        negative_mean: ``"flip"`` (the authors' formula for ``mean < 0`` too) or ``"zero"``
            (0 for ``mean <= 0``, prime-rl).

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: A group with ``mean != 0`` has ``mean + eps == 0``, or an option is invalid.
    """
    _check_max_rl(dict(eps=eps, negative_mean=negative_mean,
                       scale_by_group_size=scale_by_group_size))
    mu = mean(rewards, axis=1)  # (n_groups, 1)
    ok = mu > 0 if negative_mean == "zero" else mu != 0  # (n_groups, 1)
    den = mu + eps  # (n_groups, 1)
    if bool((ok & (den == 0)).any()):
        raise ValueError(f"max_rl: a group's mean equals -eps = {-eps!r}; its divisor mean + eps "
                         f"is 0 (MaxRL is defined for rewards >= 0)")
    adv = where(ok, center(rewards, axis=1) / where(ok, den, 1.0), 0.0)  # (n_groups, G)
    return adv / group_size(rewards) if scale_by_group_size else adv


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
# JSPO's James-Stein baseline (shrinkage) and the textbook James-Stein group mean (james_stein)
# --------------------------------------------------------------------------------------------


@register_normalizer("shrinkage", batch_level=True, zero_flat=False)
def shrinkage(rewards: Array, *, eps: float = 1e-6) -> Array:
    """JSPO's shrinkage baseline (James-Stein Policy Optimization, arXiv:2511.03710):
    ``A_ij = r_ij - b_ij`` with a two-level leave-one-out baseline.

    For sample ``j`` of prompt ``i`` (``n`` prompts, ``G`` samples each)::

        b_ij = (1 - lam_i) * mean_{h != j} r_ih  +  lam_i * M_{-i}
        M_{-i}  = mean of the other prompts' samples (= mean_{p != i} mu_p, equal group sizes)
        v2_{-i} = mean_{p != i} var_p / G          var_p: Bessel variance of prompt p's rewards
        s2_{-i} = mean_{p != i} (mu_p - M_{-i})^2  spread of the other prompts' means
        lam_i   = v2_{-i} / (v2_{-i} + s2_{-i} + eps)

    so no reward enters its own baseline (the policy gradient stays unbiased) and ``lam_i``, the
    weight on the other prompts, grows with their sampling noise and shrinks with their spread.
    Source, the authors' code: ``compute_jspo_outcome_advantage`` in
    github.com/guanning03/JSPO-Official, ``code/verl/trainer/ppo/core_algos.py`` (commit
    3f8539d, lines 582-706: ``prompt_data.var(unbiased=True) / m`` line 662, ``v_square`` /
    ``s_square`` lines 670-671, ``js_lambda = v_square / (v_square + s_square + epsilon)`` line
    679 with ``epsilon = 1e-6`` (the caller, ``ray_trainer.compute_advantage``, passes none),
    the RLOO baseline line 684, the leave-one-prompt-out batch mean line 697, the mix line 700,
    ``advantage = scores - js_baseline`` line 703). No std division, no clipping (``lam`` is in
    ``[0, 1)`` by construction). ``eps`` is the floor of the one division; with ``eps = 0`` a
    ``0/0`` (other prompts all flat with equal means) gives ``lam = 0``.

    Edge cases. ``G = 1`` raises ValueError (the authors assert ``m >= 2``: no leave-one-out
    mean). Two prompts: the other prompt's means have no spread (``s2 = 0``), so ``lam_i =
    v2/(v2 + eps)`` -- close to 1 (baseline ~ the other prompt's mean) unless the other prompt is
    flat (``lam_i = 0``: RLOO). One prompt: there is no other prompt; the authors' code takes a
    mean over an empty set (NaN advantages); here ``lam = 0``, the RLOO baseline -- the one
    difference from their code besides float64 (theirs: float32).

    Flat groups are *not* zero: their baseline mixes in the other prompts' mean, ``A = lam_i (r -
    M_{-i})`` (``zero_flat=False``). Batch-level (``lam`` and ``M`` come from the other prompts);
    ragged batches (several group sizes) are refused, as by the authors' code, which reshapes
    the batch to ``(n, m)``.

    Args:
        rewards: ``(n_groups, G)`` floating rewards, ``G >= 2``.
        eps: Non-negative constant in the denominator of ``lam``.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If ``G < 2`` or ``eps`` is invalid.
    """
    check_nonneg("eps", eps)
    r = as_numpy(rewards)  # (n, G)
    n, g = r.shape
    if g < 2:
        raise ValueError(f"shrinkage (JSPO) needs G >= 2 samples per group (the baseline "
                         f"leaves the sample out); got G={g}")
    rloo = (r.sum(axis=1, keepdims=True) - r) / (g - 1)  # (n, G), mean of the other G - 1
    if n == 1:
        return as_like(r - rloo, rewards)  # no other prompt: lam = 0
    mu = r.mean(axis=1)  # (n,)
    var = r.var(axis=1, ddof=1) / g  # (n,), sampling variance of each prompt's mean
    c = mu - mu.mean()  # (n,), deviations from the mean of all prompt means
    c = c - c.mean()  # one correction pass: sum(c) = 0 to working precision
    m_other = mu.mean() - c / (n - 1)  # (n,), M_{-i} = mean of the other n - 1 means
    v2 = (var.sum() - var) / (n - 1)  # (n,)
    if n == 2:
        s2 = np.zeros(n)  # one other prompt: no spread
    else:  # sum_{p != i} (mu_p - M_{-i})^2 = S - c_i^2 n / (n - 1), S = sum_p c_p^2
        s2 = np.maximum((c @ c - c * c * n / (n - 1)) / (n - 1), 0.0)  # (n,)
    den = v2 + s2 + eps  # (n,)
    lam = np.divide(v2, den, out=np.zeros(n), where=den > 0)  # (n,); 0/0 -> 0
    base = (1.0 - lam[:, None]) * rloo + lam[:, None] * m_other[:, None]  # (n, G)
    return as_like(r - base, rewards)  # (n, G)


@register_normalizer("james_stein", batch_level=True, zero_flat=False)
def james_stein(rewards: Array, *, ddof: int = 1) -> Array:
    """Textbook James-Stein baseline: each group mean shrunk toward the mean of all group means
    (positive-part Efron-Morris estimator), ``A = r - b_i``.

    ``b_i = mu_bar + c (mu_i - mu_bar)`` with ``mu_i`` the group means, ``mu_bar`` their mean,
    and ``c = max(0, 1 - (n - 3) tau^2 / S)``, ``S = sum_i (mu_i - mu_bar)^2``,
    ``tau^2 = sigma^2 / G`` the sampling variance of a group mean, ``sigma^2`` the pooled
    within-group variance (mean over groups of the ``ddof`` variance). ``n <= 3`` groups or
    ``S = 0`` give ``c = 1`` (the plain group mean: Dr. GRPO). Source: Efron & Morris (1973),
    "Stein's estimation rule and its competitors" (JASA 68:117), the estimator for an estimated
    common mean. No division by a std; the one division ``tau^2 / S`` is guarded
    (``S = 0`` -> ``c = 1``).

    This is *not* JSPO's baseline (that is :func:`shrinkage`): ``mu_i`` includes the sample's own
    reward, so the baseline is not leave-one-out and the policy gradient is biased at order
    ``1/G``. Kept as a research variant; it was registered as ``shrinkage`` before.

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
