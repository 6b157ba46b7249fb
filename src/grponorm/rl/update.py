"""The policy update of one step: ``updates_per_batch`` AdamW steps on one rollout batch.

Micro-batches are whole groups (``micro_batch`` rows, rounded down to a multiple of G); each
chunk's loss is weighted by its share of the rows, so the accumulated gradient equals the
whole batch's. Old log-probs (several updates per batch) come from the rollout engine when it
returns them, else from one no-grad pass; the KL reference is the adapters-off model.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch

from .attention import use_gqa_attention
from .config import TrainConfig
from .logprobs import batch_logprobs
from .loss import policy_gradient_loss
from .policy import gqa_wanted

__all__ = ["train_on_batch"]


def train_on_batch(model, optimizer, batch, adv, cfg: TrainConfig, ref_ctx) -> dict:
    """``updates_per_batch`` AdamW updates on one rollout batch; returns loss/grad stats."""
    if gqa_wanted(cfg, model):
        with use_gqa_attention(model):
            return _updates(model, optimizer, batch, adv, cfg, ref_ctx)
    return _updates(model, optimizer, batch, adv, cfg, ref_ctx)


def _updates(model, optimizer, batch, adv, cfg: TrainConfig, ref_ctx) -> dict:
    B = batch.completion_ids.shape[0]
    G = batch.G
    rows = max(G, (cfg.micro_batch // G) * G) if cfg.micro_batch else B  # whole groups
    chunks = [slice(s, min(s + rows, B)) for s in range(0, B, rows)]

    def logprobs(c):
        return batch_logprobs(model, batch, c, share_prompt=cfg.share_prompt,
                              share_prefix=cfg.share_prefix)

    old = ref = None
    needs_old = cfg.updates_per_batch > 1
    if needs_old and cfg.old_logprobs != "recompute":
        if batch.logprobs is None and cfg.old_logprobs == "rollout":
            raise ValueError("old_logprobs=rollout, but the rollout engine returns no log-probs")
        old = batch.logprobs  # the sampling policy's, from the rollout: no extra pass
        needs_old = old is None
    if needs_old or cfg.kl_coef > 0:
        model.eval()
        with torch.no_grad():
            if needs_old:
                old = torch.cat([logprobs(c) for c in chunks])
            if cfg.kl_coef > 0:
                with ref_ctx() if ref_ctx else nullcontext():
                    ref = torch.cat([logprobs(c) for c in chunks])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    stats_acc: list[dict] = []
    grad_norms, losses = [], []
    t_fwd = t_bwd = 0.0
    gaps: list[torch.Tensor] = []  # |training - rollout log-prob| per token, first update
    for update in range(cfg.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, []
        for c in chunks:
            t0 = time.perf_counter()
            logp = logprobs(c)
            if update == 0 and batch.logprobs is not None:  # the policy that sampled
                m = batch.completion_mask[c].bool()
                gaps.append((logp.detach() - batch.logprobs[c])[m].abs())
            loss, st = policy_gradient_loss(
                logp,
                adv[c],
                batch.completion_mask[c],
                agg=cfg.loss_agg,
                old_logp=None if old is None else old[c],
                clip_eps=cfg.clip_eps or None,
                ref_logp=None if ref is None else ref[c],
                kl_coef=cfg.kl_coef,
                max_tokens=cfg.max_new_tokens,
            )
            w = (c.stop - c.start) / B  # both aggregations are means over rows
            t1 = time.perf_counter()
            (loss * w).backward()
            total += float(loss.detach()) * w
            t_fwd, t_bwd = t_fwd + t1 - t0, t_bwd + time.perf_counter() - t1
            parts.append((w, st))
        t1 = time.perf_counter()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        t_bwd += time.perf_counter() - t1  # the optimizer step counts with the backward pass
        grad_norms.append(float(gn))
        losses.append(total)
        stats_acc.append({k: sum(w * s[k] for w, s in parts) for k in parts[0][1]})
    model.eval()
    out = {k: float(np.mean([s[k] for s in stats_acc])) for k in stats_acc[0]}
    out["tokens"] = float(batch.n_tokens)
    out.update(loss=float(np.mean(losses)), grad_norm=float(np.mean(grad_norms)))
    if gaps:
        gap = torch.cat(gaps)
        out.update(logprob_gap=float(gap.mean()), logprob_gap_max=float(gap.max()))
    out.update(time_forward=t_fwd, time_backward=t_bwd)  # popped into the timing fields
    return out
