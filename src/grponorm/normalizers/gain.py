"""The effective gain of a normalizer on one group: how much it scales the group's step
relative to ``none`` (``r - mean``), the quantity the paper's claim is about (docs/theory.md
§1: std normalization as a prompt-wise step size), and verl's gradient-variance proxy of the
step. Shared by the trainers' metrics (each group's gain at its success rate, the proxy beside
``frac_flat``) and ``grponorm normalizers show`` (the curve)."""

from __future__ import annotations

import numpy as np

__all__ = ["gains", "score_norm_proxy", "variance_proxy"]


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


def score_norm_proxy(
    token_logprobs: np.ndarray, sum_pi_squared: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """verl's score-norm proxy ``W(tau) = sum_t [1 - 2 pi_t(y_t) + sum_v pi_t(v)^2]``.

    Each term is ``||e_{y_t} - pi_t||^2``, the squared norm of the gradient of
    ``log pi_t(y_t)`` with respect to the token's logits, summed over the response tokens
    (``w_per_timestep`` masked-summed in verl's ``compute_variance_proxy_metrics``). When the
    policy is spread thin (``pi_t(y_t)`` and ``sum pi^2`` near 0) every term is near 1 and ``W``
    is the response length; a confident token contributes near 0.

    Args:
        token_logprobs: ``(n_rows, T)`` ``log pi_t(y_t)`` of the sampled tokens (verl's
            ``old_log_probs``).
        sum_pi_squared: ``(n_rows, T)`` ``sum_v pi_t(v)^2`` over the vocabulary.
        mask: ``(n_rows, T)`` response mask (1 for response tokens).

    Returns:
        ``(n_rows,)`` ``W`` per response.
    """
    pi = np.exp(np.asarray(token_logprobs, dtype=np.float64))  # (n_rows, T)
    per_token = 1.0 - 2.0 * pi + np.asarray(sum_pi_squared, dtype=np.float64)  # (n_rows, T)
    return np.sum(per_token * np.asarray(mask, dtype=np.float64), axis=1)  # (n_rows,)


def variance_proxy(
    adv: np.ndarray,
    w: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    is_weights: np.ndarray | None = None,
) -> float:
    """verl's gradient-variance proxy ``E[A^2 W]`` over responses ("total power").

    Definition (``compute_variance_proxy_metrics``, ``verl/trainer/ppo/metric_utils.py``,
    metric ``variance_proxy/proxy2_total_power``): with ``||g_true||^2`` neglected,
    ``Var(g) ~ E||g_tau||^2 ~ E[A_tau^2 W(tau)]`` where ``A_tau`` is the response's advantage
    (verl: the masked mean of its token advantages, i.e. the sequence advantage for outcome
    normalizers) and ``W`` the score-norm proxy (:func:`score_norm_proxy`; it is *not* a length
    or a mask weight, although it tends to the length for a spread-out policy). verl clamps
    ``W`` at 0, averages over the responses with a non-empty response mask, and returns 0 when
    there are none. With rollout importance weights ``rho`` (verl's off-policy branch, the
    per-response mean IS weight) the proxy is ``E[rho^2 A^2 W]``.

    Args:
        adv: ``(n_rows,)`` per-response advantages.
        w: ``(n_rows,)`` ``W`` per response (or the lengths, as the spread-out limit).
        valid: Optional ``(n_rows,)`` booleans: the responses to average over (verl: response
            length > 0); default all.
        is_weights: Optional ``(n_rows,)`` per-response IS weights ``rho``.

    Returns:
        The proxy (a float; 0.0 when no response is valid).
    """
    adv = np.asarray(adv, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if adv.ndim != 1 or adv.shape != w.shape:
        raise ValueError(f"need (n_rows,) advantages and W; got {adv.shape}, {w.shape}")
    keep = np.ones(adv.shape, bool) if valid is None else np.asarray(valid, bool)  # (n_rows,)
    if keep.shape != adv.shape:
        raise ValueError(f"valid must have shape {adv.shape}; got {keep.shape}")
    if not keep.any():
        return 0.0
    power = adv * adv * np.clip(w, 0.0, None)  # (n_rows,)
    if is_weights is not None:
        rho = np.asarray(is_weights, dtype=np.float64)
        if rho.shape != adv.shape:
            raise ValueError(f"is_weights must have shape {adv.shape}; got {rho.shape}")
        power = rho * rho * power
    return float(power[keep].mean())
