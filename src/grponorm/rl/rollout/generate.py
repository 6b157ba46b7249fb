"""The reference rollout engine: ``transformers``' ``model.generate`` behind
:class:`~grponorm.rl.rollout.base.RolloutEngine`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..kvcache import prefill_shared
from .base import (
    RolloutBatch,
    build_batch,
    check_settings,
    engine_eos_ids,
    eval_mode,
    tokenize_prompts,
)

__all__ = ["HFGenerateEngine"]


class HFGenerateEngine:
    """:class:`RolloutEngine` on top of ``transformers``' ``model.generate``.

    Each prompt is tokenized once (left-padded) and repeated G times, and the whole batch of
    ``len(prompts) * G`` rows is sampled in one ``generate`` call. With ``share_prompt`` (the
    default) the prompts are first run once each (``len(prompts)`` rows, no grad) to fill a KV
    cache, which is repeated G times and handed to ``generate``; ``generate`` then only
    processes the last prompt token and the new ones. The sampled tokens are the same as without
    it (the prompt's keys/values are the same numbers), at ``1/G`` of the prompt cost -- the
    dominant cost on CPU for few-shot prompts and short answers.

    Sampling is seeded with ``torch.manual_seed(generator_seed)`` inside
    ``torch.random.fork_rng``, so the result depends only on the seed and the caller's RNG
    state is left as it was.

    Args:
        model: a causal LM (peft-wrapped or plain); put in eval mode for the call.
        tokenizer: its tokenizer (left padding is enforced here).
        share_prompt: prefill each prompt once and share its KV cache across its group.
        max_batch: split the rows into calls of at most this many rows, rounded down to whole
            groups (0: one call). Chunks are seeded from ``generator_seed`` and their index, so
            the result is deterministic, though not identical to the unchunked call.
    """

    def __init__(self, model, tokenizer, *, share_prompt: bool = True, max_batch: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.share_prompt = bool(share_prompt)
        self.max_batch = int(max_batch)
        self.eos_ids = engine_eos_ids(tokenizer, model)

    def _sample(self, ids, mask, G, *, max_new_tokens, temperature, top_p, seed):
        """Sample G continuations of each of the ``(n, P)`` prompts; returns ``(n*G, C)``."""
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        if temperature > 0:
            kwargs.update(
                do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0
            )
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        rows, rmask = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if self.share_prompt and ids.shape[1] > 1:
                cache, _, key = prefill_shared(self.model, ids[:, :-1], mask[:, :-1], G)
                kwargs[key] = cache
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=rows, attention_mask=rmask, **kwargs)
        return out[:, ids.shape[1] :]

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
        """Sample ``G`` completions for every prompt (see :class:`RolloutEngine`)."""
        check_settings(prompts, G, max_new_tokens, temperature, top_p)
        ids, mask = tokenize_prompts(self.tokenizer, prompts, self.model)  # (n, P)
        per_call = max(1, self.max_batch // G) if self.max_batch > 0 else len(prompts)
        with eval_mode(self.model):
            chunks = [
                self._sample(
                    ids[s : s + per_call],
                    mask[s : s + per_call],
                    G,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    seed=int(generator_seed) + 7919 * k,
                )
                for k, s in enumerate(range(0, len(prompts), per_call))
            ]
        pad = self.tokenizer.pad_token_id
        width = max(c.shape[1] for c in chunks)
        completion = torch.cat(
            [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in chunks]
        )  # (B, C)
        return build_batch(self.tokenizer, self.eos_ids, ids, mask, completion, G)
