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

from .kvcache import position_ids, prefill

__all__ = [
    "AGGREGATIONS",
    "grouped_token_logprobs",
    "k3_kl",
    "policy_gradient_loss",
    "token_logprobs",
]

AGGREGATIONS = ("seq_mean", "token_sum")


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    completion_len: int | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    r"""Log-probability of each next token: ``out[b, t] = log softmax(logits[b, t])[ids[b, t+1]]``.

    Args:
        model: a causal LM returning ``.logits``.
        input_ids: ``(B, L)`` token ids.
        attention_mask: ``(B, L)`` (left padding allowed; positions follow :func:`position_ids`).
        completion_len: if given, only the last ``completion_len`` next-token log-probs are
            computed (the completion), via ``logits_to_keep`` -- the full ``(B, L, V)`` logits
            are never materialized. Shape then ``(B, completion_len)``.
        chunk: rows per log-softmax chunk (bounds the float32 ``(chunk, T, V)`` temporary).

    Returns:
        ``(B, L - 1)`` (or ``(B, completion_len)``) float32 log-probs, differentiable.
    """
    kwargs = {}
    if completion_len is not None:
        L = input_ids.shape[1]  # an index tensor, not an int: see kvcache.last_position
        kwargs["logits_to_keep"] = torch.arange(L - int(completion_len) - 1, L,
                                                device=input_ids.device)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        **kwargs,
    ).logits[:, :-1]  # (B, T, V): the prediction of each next token
    targets = input_ids[:, -logits.shape[1] :]  # (B, T): the tokens being predicted
    return _pick(logits, targets, chunk)


def _pick(logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """``log softmax(logits)[targets]`` in float32, ``chunk`` rows at a time."""
    out = []
    for s in range(0, logits.shape[0], chunk):
        lg = logits[s : s + chunk].float()
        lse = torch.logsumexp(lg, dim=-1)  # (b, T)
        picked = lg.gather(-1, targets[s : s + chunk].unsqueeze(-1)).squeeze(-1)  # (b, T)
        out.append(picked - lse)
    return torch.cat(out, dim=0)


def grouped_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    prompt_len: int,
    group_size: int,
    share_prefix: bool = True,
    chunk: int = 16,
) -> torch.Tensor:
    r""":func:`token_logprobs` of the completions, computing each shared prompt once.

    Rows ``g*G .. g*G+G-1`` must share their first ``prompt_len`` columns (one prompt, G
    completions, as in a ``RolloutBatch``). The prompts are run once (``B/G`` rows) with a KV
    cache, the cache is repeated G times, and the completions run on top of it. The math is the
    same as the plain pass -- gradients flow through the cached keys/values into the prompt
    pass -- but the prompt costs ``1/G`` as much, which dominates when prompts are long
    (few-shot) and completions short. With ``share_prefix`` the token prefix common to all
    prompts (system prompt, worked examples) is also run only once
    (:func:`grponorm.rl.kvcache.prefill`).

    Returns:
        ``(B, C)`` float32 log-probs of the completion tokens, ``C = L - prompt_len``.
    """
    G, P = int(group_size), int(prompt_len)
    B = input_ids.shape[0]
    if G < 1 or B % G:
        raise ValueError(f"batch of {B} rows is not a whole number of groups of {G}")
    p_ids, p_mask = input_ids[::G, :P], attention_mask[::G, :P]  # (B/G, P)
    cache, last, kv_mask, key = prefill(model, p_ids, p_mask, G, share_prefix=share_prefix)
    first = last.repeat_interleave(G, dim=0)  # (B, 1, V): predicts token P
    c_ids = input_ids[:, P:]  # (B, C)
    rest = first[:, :0]
    if c_ids.shape[1] > 1:
        full = torch.cat([kv_mask.repeat_interleave(G, dim=0), attention_mask[:, P:]], dim=1)
        rest = model(
            input_ids=c_ids[:, :-1],
            attention_mask=full[:, :-1],
            position_ids=position_ids(full)[:, P:-1],
            use_cache=True,
            **{key: cache},
        ).logits  # (B, C - 1, V)
    return _pick(torch.cat([first, rest], dim=1), c_ids, chunk)


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
