"""Log-prob passes of a causal LM over rollout batches (the model side of the loss).

``token_logprobs`` runs every row in full; ``grouped_token_logprobs`` runs each group's prompt
once (and the prefix common to all prompts once) and shares its KV cache with the group's G
completions -- same values and gradients. ``batch_logprobs`` picks one of them for a
:class:`~grponorm.rl.rollout.RolloutBatch`, the one dispatch the trainer and the diagnostics use.
"""

from __future__ import annotations

import torch

from .kvcache import position_ids, prefill

__all__ = ["batch_logprobs", "grouped_token_logprobs", "token_logprobs"]


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


def batch_logprobs(
    model, batch, rows: slice, *, share_prompt: bool = True, share_prefix: bool = True
) -> torch.Tensor:
    """``(len(rows), C)`` completion-token log-probs of ``rows`` of a rollout batch.

    ``share_prompt`` runs each group's prompt once (:func:`grouped_token_logprobs`; ``rows``
    must then cover whole groups), else every row in full (:func:`token_logprobs`). Same values
    either way; ``share_prefix`` also runs the prefix common to all prompts once.
    """
    ids, mask = batch.input_ids[rows], batch.attention_mask[rows]  # (b, P + C)
    if share_prompt:
        return grouped_token_logprobs(model, ids, mask, prompt_len=batch.prompt_len,
                                      group_size=batch.G, share_prefix=share_prefix)
    return token_logprobs(model, ids, mask, completion_len=ids.shape[1] - batch.prompt_len)
