r"""A rollout engine with its own decode loop: prompt prefilled once per group, finished rows
dropped, per-token log-probs returned.

:class:`DecodeEngine` samples the same distribution as ``model.generate`` (temperature, top-p,
eos, max new tokens) through the :class:`~grponorm.rl.rollout.RolloutEngine` interface, but

- runs each prompt once and repeats its KV cache for the G samples of its group, and runs the
  prefix all prompts share (system prompt, worked examples) only once
  (:func:`grponorm.rl.kvcache.prefill`);
- uses :mod:`grponorm.rl.attention` (grouped-query attention without copying the cache) over a
  KV cache with room for every new token (:func:`grponorm.rl.kvcache.reserve`), and hands it one
  additive mask over that cache, built once per call and updated in place
  (:func:`grponorm.rl.kvcache.static_bias`; the same values, bit for bit, as the 2D mask that
  ``transformers`` would turn into a 4D one at every step);
- drops rows from the batch (and their KV cache) as soon as they emit an eos, so late decode
  steps cost only the rows still running;
- samples by inverse CDF from one uniform number per row and step, drawn for every row of the
  batch from its own ``torch.Generator`` -- a row's tokens do not depend on which other rows are
  still running, and the caller's global RNG is never touched;
- returns ``log pi(o_t | q, o_<t)`` of every sampled token at temperature 1 (the loss's
  log-prob), so an on-policy update needs no extra forward pass to know the sampling policy.

Sampling one step, for logits ``z`` (a row) and temperature ``T > 0``::

    p = softmax(z / T)                       (top-p: keep the most likely tokens while the mass
                                              before them is < top_p, as transformers does)
    token = min{k : cumsum(p)_k > u * sum(p)}   u ~ U[0, 1)

``T == 0`` is greedy (argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from ..attention import use_gqa_attention
from ..kvcache import position_ids, prefill, reserve, static_bias
from .base import (
    RolloutBatch,
    build_batch,
    check_settings,
    engine_eos_ids,
    eval_mode,
    tokenize_prompts,
)

__all__ = ["DecodeEngine", "sample_tokens"]


def sample_tokens(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float = 1.0
) -> torch.Tensor:
    """Draw one token per row by inverse CDF (see the module docstring).

    Args:
        logits: ``(b, V)`` next-token logits (any float dtype; computed in float32).
        u: ``(b,)`` uniform numbers in ``[0, 1)``, one per row.
        temperature: ``> 0`` samples from ``softmax(logits / T)``; ``0`` takes the argmax.
        top_p: nucleus mass in ``(0, 1]`` (1 = no truncation).

    Returns:
        ``(b,)`` long token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    p = torch.softmax(logits.float() / temperature, dim=-1)  # (b, V)
    if top_p >= 1.0:
        cdf = p.cumsum(dim=-1)  # (b, V)
        x = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)  # (b, 1)
        return torch.searchsorted(cdf, x, right=True).squeeze(1).clamp(max=p.shape[1] - 1)
    ps, order = p.sort(dim=-1, descending=True)  # (b, V)
    keep = (ps.cumsum(dim=-1) - ps) < top_p  # mass before the token < top_p (the first always)
    ps = ps * keep
    cdf = ps.cumsum(dim=-1)
    x = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    j = torch.searchsorted(cdf, x, right=True).squeeze(1)
    j = torch.minimum(j, keep.sum(dim=-1) - 1)  # (b,) index into the kept prefix
    return order.gather(1, j.unsqueeze(1)).squeeze(1)


def _token_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b,)`` float32 ``log softmax(logits)[tokens]`` at temperature 1, and ``(b,)``
    ``sum_v softmax(logits)_v^2`` (the term of verl's score-norm proxy that needs the whole
    distribution; ``normalizers.gain.score_norm_proxy``)."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (b, 1)
    sum_sq = torch.exp(2 * (z - lse)).sum(dim=-1)  # (b,)
    return z.gather(1, tokens.unsqueeze(1)).squeeze(1) - lse.squeeze(1), sum_sq


class DecodeEngine:
    """:class:`~grponorm.rl.rollout.RolloutEngine` with its own decode loop (module docstring).

    Args:
        model: a ``transformers`` causal LM (peft-wrapped or plain) whose attention layers go
            through ``transformers``' attention interface (Llama, Qwen2, Mistral, ...).
        tokenizer: its tokenizer (left padding is enforced here).
        share_prefix: run the token prefix common to all prompts of a call once
            (:func:`~grponorm.rl.kvcache.prefill`).
        drop_finished: remove rows from the batch once they have emitted an eos (same tokens,
            fewer rows per step).
        compact_at: drop finished rows once they are at least this fraction of the rows still
            in the batch (each drop copies the KV cache of the rows kept; 0 = at every eos).
        gqa_attention: decode with :func:`~grponorm.rl.attention.gqa_attention_forward` instead
            of the model's configured attention.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        share_prefix: bool = True,
        drop_finished: bool = True,
        compact_at: float = 0.25,
        gqa_attention: bool = True,
    ):
        self.model = model
        self.share_prefix = bool(share_prefix)
        self.tokenizer = tokenizer
        self.drop_finished = bool(drop_finished)
        self.compact_at = float(compact_at)
        self.gqa_attention = bool(gqa_attention)
        self.eos_ids = engine_eos_ids(tokenizer, model)

    def generate(
        self,
        prompts: Sequence[str],
        G: int,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator_seed: int = 0,
    ) -> RolloutBatch:
        """Sample ``G`` completions for every prompt (see ``RolloutEngine``)."""
        check_settings(prompts, G, max_new_tokens, temperature, top_p)
        ids, mask = tokenize_prompts(self.tokenizer, prompts, self.model)  # (n, P)
        attention = use_gqa_attention(self.model) if self.gqa_attention else nullcontext()
        with eval_mode(self.model), torch.no_grad(), attention:
            tokens, logps, sum_sq = self._decode(
                ids, mask, G, max_new_tokens, temperature, top_p, generator_seed
            )
        return build_batch(self.tokenizer, self.eos_ids, ids, mask, tokens, G, logprobs=logps,
                           sum_pi_sq=sum_sq)

    def _decode(self, ids, mask, G, max_new_tokens, temperature, top_p, seed):
        """The decode loop: ``(n*G, C)`` sampled tokens, their float32 log-probs and the
        ``sum_v pi(v)^2`` of each step's distribution."""
        model, device = self.model, ids.device
        n = ids.shape[0]
        B = n * G
        gen = torch.Generator(device=device).manual_seed(int(seed))
        eos = torch.tensor(self.eos_ids, device=device)
        cache, last, kv_mask, key = prefill(model, ids, mask, G, share_prefix=self.share_prefix)
        if self.gqa_attention:
            reserve(cache, max_new_tokens)  # decode steps write in place
        logits = last[:, -1].repeat_interleave(G, dim=0)  # (B, V)
        amask = kv_mask.repeat_interleave(G, dim=0)  # (b, P + t) of the running rows
        pos = position_ids(amask)[:, -1:]  # (b, 1) position of the last fed token
        # the reserved cache's whole buffer is attended to: hand attention the finished
        # additive mask over it (the values transformers' eager mask + its padding would give)
        bias = static_bias(model, cache, amask, max_new_tokens) if self.gqa_attention else None
        P = amask.shape[1]
        rows = torch.arange(B, device=device)  # (b,) original row of each running row
        tokens = torch.full((B, max_new_tokens), self.tokenizer.pad_token_id, device=device)
        logps = torch.zeros(B, max_new_tokens, device=device)
        sum_sq = torch.zeros(B, max_new_tokens, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,) emitted an eos
        used = 0
        for t in range(max_new_tokens):
            u = torch.rand(B, generator=gen, device=device)[rows]  # (b,) every row draws
            z = logits.float()  # (b, V) once for sampling and log-probs
            tok = sample_tokens(z, u, temperature, top_p)  # (b,)
            tokens[rows, t] = tok
            logps[rows, t], sum_sq[rows, t] = _token_logprob(z, tok)
            used = t + 1
            done[rows] |= torch.isin(tok, eos)
            running = ~done[rows]  # (b,)
            n_done = len(running) - int(running.sum())  # finished rows still in the batch
            if t == max_new_tokens - 1 or n_done == len(running):
                break
            if self.drop_finished and n_done and n_done >= self.compact_at * len(running):
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, pos, tok = rows[keep], pos[keep], tok[keep]
                if bias is None:
                    amask = amask[keep]
                else:
                    bias = bias[keep]
            pos = pos + 1
            if bias is None:
                amask = torch.cat([amask, amask.new_ones(amask.shape[0], 1)], dim=1)
                attention = amask
            else:
                bias[:, :, :, P + t] = 0  # the token fed now
                attention = bias
            logits = model(
                input_ids=tok.unsqueeze(1),
                attention_mask=attention,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{key: cache},
            ).logits[:, -1]  # (b, V)
        return tokens[:, :used], logps[:, :used], sum_sq[:, :used]
