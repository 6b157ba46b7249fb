"""Normalizers peers added since 2025: BNPO, MAPO, GPG and verl's pass@k GRPO (docs/theory.md §7).
Each cites its source; all reuse the backend helpers of ``ops``."""

from __future__ import annotations

import math

from .ops import (
    Array,
    _as_float,
    _center,
    _check_nonneg,
    _check_positive,
    _check_range,
    _exp,
    _group_size,
    _is_torch,
    _log,
    _mean,
    _safe_div,
    _std,
    _sum,
    _top2,
    _where,
    _zero_variance_mask,
)
from .registry import register_normalizer


@register_normalizer("bnpo", batch_level=lambda options: options.get("alpha") is None)
def bnpo(
    rewards: Array,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    min_value: float = 0.0,
    max_value: float = 1.0,
    var_floor: float = 1e-6,
    density_floor: float = 1e-6,
) -> Array:
    """Beta Normalization Policy Optimization (BNPO, Xiao et al. 2025, arXiv:2506.02864).

    ``A_g = (r_g - p) / max(f(p; alpha, beta), density_floor)`` with the rewards first mapped to
    [0, 1] by ``r <- (r - min_value) / (max_value - min_value)``, ``p`` the group's mean (its
    success rate for binary rewards), and ``f(p; a, b) = p^(a-1) (1-p)^(b-1) / B(a, b)`` the
    *density* of Beta(a, b) at ``p`` -- not the Beta's standard deviation.

    ``alpha``, ``beta`` default to the authors' per-batch choice (``compute_bnpo_outcome_
    advantage`` in github.com/changyi7231/BNPO, ``recipe/bnpo/src/bnpo_ray_trainer.py``): the
    groups' success rates ``p_1..p_n`` (all groups, zero-variance ones included) are fitted as a
    Beta(a, b) sample by the method of moments,
    ``m = mean_i p_i``, ``v = var_i p_i`` (Bessel), ``c = m (1 - m) / v - 1``, ``a = c m``,
    ``b = c (1 - m)``, and then ``alpha = max(1 + a/3, 1)``, ``beta = max(1 + b/3, 1)``. With
    fewer than two groups there is no spread to fit and ``alpha = beta = 1`` (the reference code
    lands there too). Pass both ``alpha`` and ``beta`` to fix them instead.

    Special cases: ``alpha = beta = 3/2`` gives ``f(p) = (8/pi) sqrt(p (1 - p))`` (since
    ``B(3/2, 3/2) = pi/8``), so BNPO is ``(pi/8) *`` :func:`bernoulli_std` -- GRPO's Bernoulli
    standardization up to the constant pi/8. ``alpha = beta = 1`` (uniform density) gives
    ``r - p`` (Dr. GRPO).

    Floors, both explicit: ``v`` is floored at ``var_floor`` (groups with identical success
    rates would otherwise give ``alpha = beta = inf``; the reference code returns NaN there),
    and the density at ``density_floor`` (the reference clamps ``1/f`` at 1e6), which bounds the
    amplification by ``1/density_floor``. Groups with ``p`` in {0, 1} have ``r = p`` everywhere
    and get 0. The batch-level ``alpha``, ``beta`` make BNPO depend on the whole batch, like
    :func:`batch_std`. Half-precision tensors are computed in float32.

    Args:
        rewards: ``(n_groups, G)`` rewards in ``[min_value, max_value]``.
        alpha, beta: Beta parameters (both > 0), or None for the method-of-moments fit above.
        min_value, max_value: Reward range mapped affinely onto [0, 1].
        var_floor: Positive floor on the variance of the groups' success rates.
        density_floor: Positive floor on the Beta density (the divisor).

    Returns:
        ``(n_groups, G)`` advantages, in units of the mapped [0, 1] rewards.

    Raises:
        ValueError: If a reward is outside ``[min_value, max_value]`` (the message names its
            group and sample), only one of ``alpha``/``beta`` is given, or an option is invalid.
    """
    if (alpha is None) != (beta is None):
        raise ValueError(f"bnpo needs both alpha and beta, or neither; got {alpha=}, {beta=}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value is not None:
            _check_positive(name, value)
    _check_positive("var_floor", var_floor)
    _check_positive("density_floor", density_floor)
    if not (math.isfinite(min_value) and math.isfinite(max_value) and max_value > min_value):
        raise ValueError(f"bnpo needs finite min_value < max_value; got {min_value}, {max_value}")
    _check_range(rewards, "bnpo", min_value, max_value)
    x = rewards
    if _is_torch(x) and x.dtype.itemsize < 4:
        x = x.float()  # lgamma-scale exponents are too coarse in half precision
    x = (x - min_value) / (max_value - min_value)  # (n_groups, G), in [0, 1]
    p = _mean(x, axis=1)  # (n_groups, 1)
    q = _mean(1.0 - x, axis=1)  # (n_groups, 1), = 1 - p
    if alpha is None:
        n_groups = int(x.shape[0])
        if n_groups < 2:
            alpha = beta = 1.0
        else:
            m = float(_mean(p).reshape(()))
            v = max(float(_std(p, axis=None, ddof=1).reshape(())) ** 2, var_floor)
            c = m * (1.0 - m) / v - 1.0
            alpha = max(1.0 + c * m / 3.0, 1.0)
            beta = max(1.0 + c * (1.0 - m) / 3.0, 1.0)
    log_beta_fn = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    inside = (p > 0) & (q > 0)  # (n_groups, 1); outside, r == p and A == 0 anyway
    log_f = (
        (alpha - 1.0) * _log(_where(inside, p, 0.5))
        + (beta - 1.0) * _log(_where(inside, q, 0.5))
        - log_beta_fn
    )  # (n_groups, 1)
    f = _exp(log_f)  # (n_groups, 1), Beta(alpha, beta) density at p
    return _center(x, axis=1) / _where(f > density_floor, f, density_floor)  # (n_groups, G)


@register_normalizer("mapo")
def mapo(
    rewards: Array, *, ddof: int = 1, eps: float = 1e-6, allow_negative: bool = False
) -> Array:
    """Mixed Advantage Policy Optimization (MAPO, Huang et al. 2025, arXiv:2509.18849).

    ``A_g = lam (r_g - mu) / (std + eps) + (1 - lam) (r_g - mu) / (mu + eps)`` with ``mu``, ``std``
    the group's mean and std, ``lam = 4 p (1 - p)`` and ``p`` the share of the group's rewards
    equal to 1 (the success rate for binary rewards). Uncertain groups (``p`` near 1/2) get the
    GRPO z-score; near-certain ones (``p`` near 0 or 1) the "advantage percent deviation"
    ``(r - mu)/mu``. This is ``GRPOMIXPRO`` in the authors' code (github.com/ARGROB2023/MAPO,
    ``code/verl/trainer/ray_trainer.py``: the z-score term gets ``4p(1-p)``, the mean term
    ``1 - 4p(1-p)``; both divisors use ``eps = 1e-6`` and ``torch.std``, i.e. ``ddof = 1``).

    ``eps`` is the explicit floor of both divisions. By default rewards must be non-negative,
    so that a group that is not all-equal has ``mu > 0`` and ``|(r - mu)/(mu + eps)| <=
    max(r)/eps`` (with a negative mean the percent deviation flips the sign of the advantage: a
    sample above the mean is pushed down). ``allow_negative=True`` accepts negative rewards and
    computes the same formula, flipped sign included, as the authors' code does (it does not
    check the sign); a group whose ``mu + eps`` is exactly 0 then raises ValueError (theirs:
    inf/NaN). Not shift-invariant (the mean term), unlike :func:`group_std`.

    Differences from the authors' code: negative rewards are refused unless
    ``allow_negative=True``; all-equal groups get exactly 0 (theirs: the rounding residue of
    ``r - mu`` over ``std + eps``); ``G = 1`` gives 0 (theirs: an assertion error); float64
    for NumPy input (theirs: float32).

    Args:
        rewards: ``(n_groups, G)`` rewards, non-negative unless ``allow_negative``.
        ddof: Delta degrees of freedom of the std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std and to the mean.
        allow_negative: Accept negative rewards (the authors' formula, unguarded sign).

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If a reward is negative and ``allow_negative`` is False (the message names
            its group and sample), or a group's ``mu + eps`` is 0 with spread.
    """
    _check_nonneg("eps", eps)
    if not allow_negative:
        _check_range(rewards, "mapo", 0.0)
    centered = _center(rewards, axis=1)  # (n_groups, G)
    mu = _mean(rewards, axis=1)  # (n_groups, 1)
    std = _std(rewards, axis=1, ddof=ddof)  # (n_groups, 1)
    p = _mean(_as_float(rewards == 1, rewards), axis=1)  # (n_groups, 1)
    q = _mean(_as_float(rewards != 1, rewards), axis=1)  # (n_groups, 1), = 1 - p
    lam = 4.0 * p * q  # (n_groups, 1), in [0, 1]
    den = mu + eps  # (n_groups, 1); > 0 for a group with spread when rewards >= 0
    spread = ~_zero_variance_mask(rewards)[:, None]  # (n_groups, 1)
    if bool((spread & (den == 0)).any()):
        raise ValueError(f"mapo: a group's mean equals -eps = {-eps!r}, so mean + eps is 0")
    pct = _where(den != 0, centered / _where(den != 0, den, 1.0), 0.0)  # (n_groups, G)
    return lam * _safe_div(centered, std + eps) + (1.0 - lam) * pct


@register_normalizer("gpg", batch_level=True)
def gpg(rewards: Array, *, f_norm: float = 1.0, count: str = "nonzero_reward") -> Array:
    """Group Policy Gradient (GPG, Chu et al. 2025, arXiv:2504.02546) advantage.

    ``A_{i,g} = alpha (r_{i,g} - mean_g r_{i,.}) / f_norm`` with one batch-wide
    ``alpha = B / max(M, 1)``, ``B = n_groups * G``:

    - ``count="nonzero_reward"`` (default): ``M`` = the number of non-zero rewards in the batch,
      as in verl's ``compute_gpg_outcome_advantage`` (``verl/trainer/ppo/core_algos.py``:
      ``alpha = bsz / count_nonzero(scores).clamp(min=1)``, then ``alpha * (r - mean) / f_norm``;
      its ``epsilon`` and group std are unused). For binary rewards ``M`` counts the successes.
    - ``count="valid_group"``: ``M`` = the samples of groups whose rewards are not all equal, the
      paper's ``alpha = B / (B - M_0)`` with ``M_0`` the samples whose advantage is zero because
      their group has no spread (the two differ whenever successes and mixed groups differ).

    ``f_norm`` is a constant (the paper's ``F_norm = 1`` default); the std variant is
    :func:`group_std` times ``alpha``. The ``max(M, 1)`` floor only matters when every reward is
    zero (or every group all-equal), where every advantage is 0 anyway. Depends on the whole
    batch, like :func:`batch_std`.

    Args:
        rewards: ``(n_groups, G)`` floating rewards.
        f_norm: Positive constant divisor.
        count: ``"nonzero_reward"`` (verl) or ``"valid_group"`` (the paper's B/(B - M)).

    Returns:
        ``(n_groups, G)`` advantages.
    """
    _check_positive("f_norm", f_norm)
    if count == "nonzero_reward":
        m = _sum(_as_float(rewards != 0, rewards))  # (1, 1)
    elif count == "valid_group":
        valid = ~_zero_variance_mask(rewards)  # (n_groups,)
        m = _sum(_as_float(valid, rewards)) * _group_size(rewards)  # (1, 1)
    else:
        raise ValueError(f"count must be 'nonzero_reward' or 'valid_group'; got {count!r}")
    batch = math.prod(rewards.shape)
    alpha = batch / _where(m > 1.0, m, 1.0)  # (1, 1)
    return alpha * _center(rewards, axis=1) / f_norm  # (n_groups, G)


@register_normalizer("grpo_passk")
def grpo_passk(
    rewards: Array, *, norm_by_std: bool = True, ddof: int = 1, eps: float = 1e-6
) -> Array:
    """Pass@k GRPO (verl's ``compute_grpo_passk_outcome_advantage``; arXiv:2503.19595).

    Only the best response of a group gets a non-zero advantage:
    ``A_{g*} = (r_max - r_second) / (std(r) + eps)`` at ``g* = argmax_g r_g`` (the first one),
    ``A_g = 0`` elsewhere; ``r_second`` is the second largest reward *counting ties*, so a tied
    maximum gives 0 to everyone (and which tied index is "first" cannot matter). With
    ``norm_by_std=False`` the divisor is 1 (verl's ``norm_adv_by_std_in_grpo=False``). The
    defaults (``torch.std``, i.e. ``ddof=1``; ``eps=1e-6``) are verl's. For binary rewards only
    a group with exactly one success moves. Advantages are >= 0 and do not sum to zero.

    ``eps`` is the explicit floor of the division, as in :func:`group_std`.

    Args:
        rewards: ``(n_groups, G)`` floating rewards, ``G >= 2``.
        norm_by_std: Divide the gap by the group std (plus eps).
        ddof: Delta degrees of freedom of the std (1: Bessel, 0: population).
        eps: Non-negative constant added to the std.

    Returns:
        ``(n_groups, G)`` advantages.

    Raises:
        ValueError: If ``G < 2`` (verl raises too).
    """
    _check_nonneg("eps", eps)
    group_size = _group_size(rewards)
    if group_size < 2:
        raise ValueError(f"grpo_passk needs G >= 2 samples per group; got G={group_size}")
    first, second, is_first = _top2(rewards)  # (n_groups, 1), (n_groups, 1), (n_groups, G)
    gap = first - second  # (n_groups, 1), >= 0
    if norm_by_std:
        gap = _safe_div(gap, _std(rewards, axis=1, ddof=ddof) + eps)  # (n_groups, 1)
    return _where(is_first, gap, 0.0)  # (n_groups, G)


# --------------------------------------------------------------------------------------------
