r"""Policy-gradient losses for critic-free RLVR (GRPO, Dr. GRPO), as pure functions.

Notation: a batch of ``B`` sampled completions ``o_i`` (rows), tokens ``t = 1..|o_i|`` (the
``completion_mask`` marks them), per-token log-probs ``log pi_theta(o_{i,t} | q, o_{i,<t})``
(``logp``), one advantage ``A_i`` per completion (from ``grponorm.normalizers``).

Per-token surrogate (PPO / GRPO, Shao et al. 2024, Eq. 3)::

    rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})              importance ratio
    s_{i,t}   = min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i)  clipped surrogate (clip_eps=eps)
    s_{i,t}   = rho A_i                                         without clipping

With ``old_logp = None`` the ratio is ``exp(logp - logp.detach())``: its value is 1 and its
gradient is ``grad logp``, so the surrogate's gradient is the REINFORCE estimator
``A_i grad log pi(o_{i,t})``.

KL penalty to the reference policy ``pi_ref`` with the k3 estimator (Schulman 2020; GRPO
Eq. 4), unbiased for ``KL(pi_theta || pi_ref)`` and always >= 0::

    k3_{i,t} = exp(ref_logp - logp) - (ref_logp - logp) - 1

Per-token loss ``l_{i,t} = -s_{i,t} + kl_coef * k3_{i,t}``, aggregated by ``agg``:

- ``"seq_mean"`` (GRPO): ``L = (1/B) sum_i (1/|o_i|) sum_t l_{i,t}`` -- every completion has
  the same total weight, so each token of a long completion weighs less.
- ``"token_sum"`` (Dr. GRPO, Liu et al. 2025): ``L = (1/(B * T_max)) sum_i sum_t l_{i,t}`` with
  the constant ``T_max = max_tokens`` (e.g. ``max_new_tokens``) -- every token weighs the same,
  which removes GRPO's length bias.
"""

from __future__ import annotations

import torch

__all__ = [
    "AGGREGATIONS",
    "k3_kl",
    "policy_gradient_loss",
]

AGGREGATIONS = ("seq_mean", "token_sum")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    r"""Per-token k3 estimator of ``KL(pi || pi_ref)``: ``exp(r - l) - (r - l) - 1 >= 0``."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def policy_gradient_loss(
    logp: torch.Tensor,
    adv: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    agg: str = "seq_mean",
    old_logp: torch.Tensor | None = None,
    clip_eps: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The clipped policy-gradient loss with optional k3 KL (see the module docstring).

    Args:
        logp: ``(B, T)`` log-probs of the sampled tokens under the current policy (with grad).
        adv: ``(B,)`` advantage of each completion (broadcast over its tokens).
        completion_mask: ``(B, T)`` 1 on counted tokens, 0 elsewhere.
        agg: ``"seq_mean"`` (GRPO) or ``"token_sum"`` (Dr. GRPO).
        old_logp: ``(B, T)`` log-probs under the sampling policy; None means on-policy (ratio 1).
        clip_eps: PPO clip range; None or 0 disables clipping.
        ref_logp: ``(B, T)`` log-probs under the reference policy (needed when kl_coef > 0).
        kl_coef: weight of the k3 KL penalty.
        max_tokens: ``T_max`` of ``token_sum`` (default: ``T``, the padded completion length).

    Returns:
        ``(loss, stats)``: a scalar tensor to minimize and floats for logging: ``pg_loss``,
        ``kl`` (mean k3 per counted token), ``clip_frac`` (fraction of counted tokens whose
        ratio is clipped), ``ratio_mean``, ``tokens``.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}; got {agg!r}")
    if logp.ndim != 2 or completion_mask.shape != logp.shape:
        raise ValueError(
            f"logp and completion_mask must both be (B, T); got {tuple(logp.shape)} and "
            f"{tuple(completion_mask.shape)}"
        )
    if adv.shape != logp.shape[:1]:
        raise ValueError(f"adv must be (B,) = ({logp.shape[0]},); got {tuple(adv.shape)}")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    mask = completion_mask.to(logp.dtype)  # (B, T)
    a = adv.to(logp.dtype).unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))  # (B, T)
    surrogate = ratio * a
    clipped = torch.zeros_like(mask, dtype=torch.bool)
    if clip_eps:
        bounded = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * a
        clipped = bounded < surrogate  # where min() picks the clipped branch (zero gradient)
        surrogate = torch.minimum(surrogate, bounded)
    per_token = -surrogate  # (B, T)
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)  # (B, T)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    n_tok = mask.sum()
    if agg == "seq_mean":
        lengths = mask.sum(dim=1).clamp(min=1.0)  # (B,)
        loss = ((per_token * mask).sum(dim=1) / lengths).mean()
        pg = ((-surrogate * mask).sum(dim=1) / lengths).mean()
    else:
        denom = logp.shape[0] * (max_tokens if max_tokens is not None else logp.shape[1])
        loss = (per_token * mask).sum() / denom
        pg = (-surrogate * mask).sum() / denom
    denom_tok = n_tok.clamp(min=1.0)
    stats = {
        "pg_loss": float(pg.detach()),
        "kl": float(((kl * mask).sum() / denom_tok).detach()) if kl is not None else 0.0,
        "clip_frac": float(((clipped.to(mask.dtype) * mask).sum() / denom_tok).detach()),
        "ratio_mean": float((ratio.detach() * mask).sum() / denom_tok),
        "tokens": float(n_tok.detach()),
    }
    return loss, stats
