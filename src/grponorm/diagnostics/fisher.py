r"""Per-prompt curvature proxy of a language-model policy: the Sophia-style diagonal Fisher.

For one prompt ``q`` and ``B`` responses ``o_1..o_B`` sampled from the current policy
``pi_theta(. | q)`` (the ``G`` completions of its group, so ``B = G``), let

    g_hat = grad_theta (1/B) sum_b log pi_theta(o_b | q)          (one backward pass)

where ``log pi_theta(o | q)`` is the log-likelihood of the whole completion -- the sum of its
token log-probs over the completion tokens (``completion_mask``: up to and including the first
eos), and ``theta`` are the *trainable* parameters (the LoRA adapters by default). Sophia's
diagonal Fisher estimate is ``B * g_hat (.) g_hat``; we summarize it per prompt by its trace,

    fisher_trace = B * ||g_hat||^2 = sum over trainable parameters of B * g_hat_k^2.

What it estimates: the scores ``s_b = grad log pi(o_b | q)`` are independent with mean zero and
covariance ``F`` (the policy's Fisher information at ``q``, restricted to the trainable
parameters), so ``E[g_hat g_hat^T] = F / B`` and ``E[B g_hat (.) g_hat] = diag F``:
``E[fisher_trace] = tr F``, unbiased for any ``B``. The estimate is noisy (one draw of B
responses); in the bandit, where ``tr F`` is exact, see ``grponorm.diagnostics.bandit_proxy``.

Sampling distribution: the responses must be drawn from the distribution whose score is used,
or the scores do not have mean zero and the estimate is biased upwards by
``B * ||E[score]||^2``. Rollouts are sampled at temperature ``T`` (top-p 1), i.e. from
``softmax(logits / T)``; the log-probs here are therefore taken under ``logits / T``
(``temperature=T``), which makes the estimate the Fisher of the policy that produced the
samples. With top-p < 1 the sampling distribution is truncated and the estimate is only
approximate.

Side effects: none on training. Gradients come from ``torch.autograd.grad`` (the parameters'
``.grad`` buffers are never written, so accumulated gradients and optimizer state are as they
were), the model runs in eval mode (no dropout; its previous mode is restored), and no random
numbers are drawn.

Reward variance of the same group (binary rewards): ``p_hat (1 - p_hat)`` with ``p_hat`` the
group's success rate -- the population variance of the G rewards. The sample (Bessel) variance is
``G / (G - 1)`` times it; the factor is the same for every prompt, so correlations across prompts
are identical for both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..rl.logprobs import batch_logprobs
from ..rl.problems import probe_problems, step_seed
from ..rl.rewards import batch_rewards

__all__ = [
    "FisherEstimate",
    "fisher_record",
    "group_fisher_traces",
    "reward_stats",
    "sequence_logprobs",
    "sophia_fisher",
    "trainer_diagnostic",
]


@dataclass
class FisherEstimate:
    """One prompt's estimate: ``trace = B * ||g_hat||^2`` and, on request, the diagonal."""

    trace: float
    B: int
    grad_sq_norm: float  # ||g_hat||^2
    diag: list[torch.Tensor] | None = None  # B * g_hat**2 per parameter (return_diag=True)


def sophia_fisher(
    seq_logp: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    return_diag: bool = False,
) -> FisherEstimate:
    """Sophia's diagonal Fisher estimate from the log-likelihoods of ``B`` sampled responses.

    Args:
        seq_logp: ``(B,)`` log-likelihoods ``log pi(o_b | q)`` of responses sampled from the
            policy, differentiable w.r.t. ``params``.
        params: the parameters the Fisher is taken over (e.g. the trainable ones).
        return_diag: also return ``B * g_hat**2`` per parameter.

    Returns:
        :class:`FisherEstimate` with ``trace = B * ||grad mean(seq_logp)||^2``. One backward
        pass; ``.grad`` buffers are not touched (``torch.autograd.grad``).
    """
    if seq_logp.ndim != 1 or seq_logp.numel() < 1:
        raise ValueError(f"seq_logp must be a non-empty (B,) tensor; got {tuple(seq_logp.shape)}")
    params = list(params)
    if not params:
        raise ValueError("no parameters to take the Fisher over (nothing is trainable?)")
    B = int(seq_logp.numel())
    grads = torch.autograd.grad(seq_logp.mean(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
    sq = float(sum(g.double().pow(2).sum() for g in grads))
    diag = [B * g.double().pow(2) for g in grads] if return_diag else None
    return FisherEstimate(trace=B * sq, B=B, grad_sq_norm=sq, diag=diag)


class _Tempered:
    """Calls ``model`` and divides its logits by ``temperature`` (float32)."""

    def __init__(self, model, temperature: float):
        self.model, self.temperature = model, float(temperature)

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        out.logits = out.logits.float() / self.temperature
        return out


def sequence_logprobs(
    model, batch, rows: slice, *, temperature: float = 1.0, share_prompt: bool = True
) -> torch.Tensor:
    """``(len(rows),)`` completion log-likelihoods (sum over completion tokens) of batch rows.

    ``rows`` must cover whole groups of the :class:`~grponorm.rl.rollout.RolloutBatch` when
    ``share_prompt`` (prompt computed once per group, as in the trainer). Log-probs are taken
    under ``softmax(logits / temperature)``, the distribution the rollouts were sampled from.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (sampled responses); got {temperature}")
    m = model if temperature == 1.0 else _Tempered(model, temperature)
    logp = batch_logprobs(m, batch, rows, share_prompt=share_prompt)  # (b, C)
    mask = batch.completion_mask[rows].to(logp.dtype)
    return (logp * mask).sum(dim=1)


def group_fisher_traces(
    model,
    batch,
    *,
    temperature: float = 1.0,
    params: Sequence[torch.Tensor] | None = None,
    share_prompt: bool = True,
) -> dict[str, np.ndarray | float]:
    """Per-prompt Fisher trace estimates ``B * ||g_hat||^2`` (``B = G``) of a rollout batch.

    One forward and one backward pass per prompt (its G completions), over ``params`` (default:
    the parameters with ``requires_grad``, i.e. the LoRA adapters under LoRA). The model's
    ``.grad`` buffers, optimizer state and global RNG are untouched; its train/eval mode is
    restored.

    Returns:
        ``{"fisher_trace": (n_prompts,), "grad_sq_norm": (n_prompts,), "seconds": float}``.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    G, n = batch.G, batch.n_prompts
    traces, sq = np.zeros(n), np.zeros(n)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        for i in range(n):
            seq = sequence_logprobs(
                model,
                batch,
                slice(i * G, (i + 1) * G),
                temperature=temperature,
                share_prompt=share_prompt,
            )
            est = sophia_fisher(seq, params)
            traces[i], sq[i] = est.trace, est.grad_sq_norm
    finally:
        model.train(was_training)
    return {"fisher_trace": traces, "grad_sq_norm": sq, "seconds": time.perf_counter() - t0}


def reward_stats(rewards) -> dict[str, np.ndarray]:
    """Per-group success rate and reward variances of an ``(n_prompts, G)`` 0/1 reward matrix.

    Returns ``p_hat``, ``reward_var = p_hat (1 - p_hat)`` (population variance of the group's
    rewards) and ``sample_var`` (Bessel, ``G/(G-1)`` times it; NaN when G = 1).
    """
    r = np.asarray(rewards.cpu() if hasattr(rewards, "cpu") else rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (n_prompts, G); got shape {r.shape}")
    G = r.shape[1]
    p = r.mean(axis=1)
    var = p * (1.0 - p)
    sample = var * G / (G - 1) if G > 1 else np.full_like(var, np.nan)
    return {"p_hat": p, "reward_var": var, "sample_var": sample}


def fisher_record(model, batch, rewards, problem_ids, *, temperature: float,
                  share_prompt: bool = True) -> dict:
    """The Fisher-diagnostic record of one rollout batch, for a metrics line.

    Per prompt (in ``problem_ids`` order): the Fisher trace of its G samples
    (:func:`group_fisher_traces`), the reward variance ``p_hat (1 - p_hat)`` and ``p_hat`` of
    the same samples (:func:`reward_stats`) and the mean completion length; plus the seconds
    the backward passes took. ``rewards``: ``(n_prompts, G)`` 0/1 rewards of the batch.
    """
    est = group_fisher_traces(model, batch, temperature=temperature, share_prompt=share_prompt)
    st = reward_stats(rewards)
    lengths = batch.completion_lengths.view(-1, batch.G).float().mean(dim=1)  # (n_prompts,)
    return {
        "diag_problems": list(problem_ids),
        "fisher_trace": est["fisher_trace"].tolist(),
        "reward_var": st["reward_var"].tolist(),
        "p_hat": st["p_hat"].tolist(),
        "diag_completion_len": lengths.tolist(),
        "time_diag_fisher": est["seconds"],
    }


def trainer_diagnostic(cfg, policy, train_pool: list):
    """The trainer's step diagnostic for ``diagnostics="fisher"`` (``rl.trainer.run``).

    By default it measures the step's own training groups (the samples the update uses);
    with ``cfg.diag_probe = n`` a fixed probe set of ``n`` training problems
    (``rl.problems.probe_problems``), sampled afresh and seeded by ``(seed, step)``, so the
    same prompts are measured at every diagnostic step and correlations can be lagged.
    """
    probe = None
    if cfg.diag_probe:
        probe_set = probe_problems(cfg, train_pool)
        probe = (probe_set, policy.prompts(probe_set))

    def measure(step: int, batch, rewards, problems) -> dict:
        t0 = time.perf_counter()
        if probe is not None:
            problems, prompts = probe
            batch = policy.engine.generate(
                prompts,
                cfg.G,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                generator_seed=step_seed(cfg.seed, step, 3),
            )
            refs = [p.answer for p in problems for _ in range(cfg.G)]
            rewards = torch.tensor(batch_rewards(batch.texts, refs)).view(len(problems), cfg.G)
        rec = fisher_record(policy.model, batch, rewards, [p.id for p in problems],
                            temperature=cfg.temperature, share_prompt=cfg.share_prompt)
        rec["time_diag"] = time.perf_counter() - t0
        return rec

    return measure
