"""Rollouts: sample G completions for each prompt, whole groups in one batched call.

The trainer talks to generation through one small interface, :class:`RolloutEngine`; the
engines (``generate``, ``decode``, ``vllm``) live beside this module and ``factory.make_engine``
picks one by name, so an engine can be replaced without touching the trainer or the loss::

    engine = HFGenerateEngine(model, tokenizer)
    batch = engine.generate(prompts, G=8, max_new_tokens=16, temperature=0.7, top_p=1.0,
                            generator_seed=1234)
    batch.texts           # B = len(prompts) * G decoded completions, group-major
    batch.group           # (B,) prompt index of each row: [0]*G + [1]*G + ...
    batch.completion_mask # (B, C) 1 on completion tokens up to and including the first eos

Layout of a :class:`RolloutBatch` (``P`` = padded prompt length, ``C`` = completion length)::

    input_ids      (B, P + C)  [pad..pad prompt | completion (eos, then pad = eos)]
    attention_mask (B, P + C)  0 on left padding and on the completion after its first eos
    completion_mask(B, C)      1 on the completion tokens that count (loss, token counts)

Masks come from the position of the FIRST eos token of each completion, never from
``token != pad``: SmolLM2's pad token is its eos ``<|im_end|>``, so a pad test would also drop
the eos itself (which the policy must learn to emit) and could not tell padding from a
completion that ended right away.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "RolloutBatch",
    "RolloutEngine",
    "build_batch",
    "check_settings",
    "completion_mask_from_eos",
    "engine_eos_ids",
    "eos_token_ids",
    "eval_mode",
    "tokenize_prompts",
]


@dataclass
class RolloutBatch:
    """Prompts and their sampled completions, ``B = n_prompts * G`` rows, group-major.

    Attributes:
        input_ids: ``(B, P + C)`` left-padded prompt ids followed by the completion ids.
        attention_mask: ``(B, P + C)`` 1 on real prompt tokens and on completion tokens up to
            and including the first eos; 0 on left padding and on everything after that eos.
        completion_mask: ``(B, C)`` float, 1 on completion tokens up to and including the first
            eos (all C tokens when the completion was cut at ``max_new_tokens``).
        prompt_len: ``P``, the padded prompt length (the completion starts at this column).
        texts: ``B`` decoded completions (up to, not including, the first eos).
        group: ``(B,)`` long, the prompt index of each row (``row // G``).
        G: completions per prompt.
        logprobs: optional ``(B, C)`` float32 log-probs ``log pi(o_t | q, o_<t)`` of the sampled
            tokens under the policy at temperature 1 with no top-p (what the loss's
            ``token_logprobs`` computes), 0 after the first eos; None when the engine does not
            provide them.
        sum_pi_sq: optional ``(B, C)`` ``sum_v pi_t(v)^2`` of the same distributions (for
            verl's gradient-variance proxy), 0 after the first eos; None when not provided.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    texts: list[str]
    group: torch.Tensor
    G: int
    logprobs: torch.Tensor | None = None
    sum_pi_sq: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        """``(B, C)`` the sampled completion token ids."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def n_prompts(self) -> int:
        return int(self.input_ids.shape[0]) // self.G

    @property
    def completion_lengths(self) -> torch.Tensor:
        """``(B,)`` number of counted completion tokens per row (eos included)."""
        return self.completion_mask.sum(dim=1).long()

    @property
    def n_tokens(self) -> int:
        """Total counted completion tokens in the batch."""
        return int(self.completion_mask.sum().item())


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that samples ``G`` completions per prompt and returns a :class:`RolloutBatch`.

    Contract: rows are group-major (prompt ``i``'s completions are rows ``i*G .. i*G+G-1``);
    the result is a deterministic function of the model weights, the prompts, the settings and
    ``generator_seed`` (on the same hardware), and the engine leaves the caller's global RNG
    state untouched. ``temperature == 0`` means greedy decoding.
    """

    def generate(
        self,
        prompts: Sequence[str],
        G: int,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator_seed: int,
    ) -> RolloutBatch: ...


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos plus the model's generation eos."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None) if model is not None else None
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for t in extra or []:
        if int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("tokenizer has no eos token: cannot tell where a completion ends")
    return ids


def engine_eos_ids(tokenizer, model) -> list[int]:
    """:func:`eos_token_ids` for an engine, which also needs a pad token to fill finished rows."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token (load it with grponorm.rl.models)")
    return eos_token_ids(tokenizer, model)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """``(B, C)`` float mask: 1 up to and including the first eos of each row, 0 after.

    A row without any eos (cut at the token limit) is all ones.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))
    # Number of eos tokens strictly before each position; a token counts while that is 0.
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # (B, C)
    return (before == 0).float()


@contextmanager
def eval_mode(model):
    """``model.eval()`` inside the block; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_settings(prompts, G: int, max_new_tokens: int, temperature: float, top_p: float):
    """Raise ValueError for sampling settings no engine can honour."""
    if not len(prompts):
        raise ValueError("no prompts given")
    if G < 1 or max_new_tokens < 1:
        raise ValueError(f"need G >= 1 and max_new_tokens >= 1; got G={G}, {max_new_tokens=}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")


def tokenize_prompts(tokenizer, prompts, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(n, P)`` ids and attention mask of the prompts, on the model's device."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def build_batch(
    tokenizer,
    eos_ids: Sequence[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    completion: torch.Tensor,
    G: int,
    logprobs: torch.Tensor | None = None,
    sum_pi_sq: torch.Tensor | None = None,
) -> RolloutBatch:
    """Assemble a :class:`RolloutBatch` from ``(n, P)`` prompts and ``(n*G, C)`` completions.

    Tokens after the first eos of a row are set to the pad token (and their log-probs to 0),
    whatever the engine left there.
    """
    cmask = completion_mask_from_eos(completion, eos_ids)  # (B, C)
    completion = completion.masked_fill(cmask == 0, tokenizer.pad_token_id)
    if logprobs is not None:
        logprobs = logprobs * cmask
    if sum_pi_sq is not None:
        sum_pi_sq = sum_pi_sq * cmask
    lengths = cmask.sum(dim=1).long()
    texts = []
    for row, n in zip(completion.tolist(), lengths.tolist(), strict=True):
        body = row[:n]
        if body and body[-1] in eos_ids:
            body = body[:-1]
        texts.append(tokenizer.decode(body, skip_special_tokens=True))
    rows, rmask = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0)
    return RolloutBatch(
        input_ids=torch.cat([rows, completion], dim=1),
        attention_mask=torch.cat([rmask, cmask.to(rmask.dtype)], dim=1),
        completion_mask=cmask,
        prompt_len=int(ids.shape[1]),
        texts=texts,
        group=torch.arange(ids.shape[0], device=ids.device).repeat_interleave(G),
        G=int(G),
        logprobs=logprobs,
        sum_pi_sq=sum_pi_sq,
    )
