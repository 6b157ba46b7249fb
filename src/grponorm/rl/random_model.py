"""Build the model of a ``random:<shape>[@<seed>]`` name (:mod:`grponorm.rl.shapes`).

``grponorm.rl.models.load_model`` loads the embedded tokenizer and calls
:func:`build_random_model`; this module holds the torch side: the seeded init and the EOS mask
that makes every completion run to ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any

from .rollout.base import eos_token_ids
from .shapes import RandomModel, parse_random

__all__ = ["MASKED_LOGIT", "build_random_model", "random_model_facts", "suppress_token_ids"]

#: Logit given to suppressed tokens (:func:`suppress_token_ids`).
MASKED_LOGIT = -1e9
#: The tokenizer a random model uses (grponorm.rl.models.embedded_tokenizer_dir).
TOKENIZER = "embedded (SmolLM2-135M-Instruct)"


def suppress_token_ids(model, token_ids) -> Any:
    """Mask ``token_ids`` out of ``model``'s next-token distribution: a forward hook on its
    output embedding (LM head) sets their logits to :data:`MASKED_LOGIT` (finite, so entropy
    terms ``p log p`` stay 0 rather than NaN; ``exp(-1e9)`` is exactly 0 in float32). No engine
    (the decode loop, ``generate``, TRL's ``generate``) can then sample them, and every
    log-prob pass through the head sees the same policy. Returns the hook's handle.

    A pass that multiplies hidden states by ``lm_head.weight`` itself (TRL's fused log-prob
    head) does not see the mask; as the policy never samples those ids, this changes each
    sampled token's log-prob by ``log(1 - p(masked ids))`` only.
    """
    import torch

    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to mask tokens in")
    ids = sorted({int(t) for t in token_ids})
    if not ids:
        raise ValueError("no token ids to suppress")
    index = torch.tensor(ids)

    def mask(_module, _inputs, logits):
        fill = max(torch.finfo(logits.dtype).min, MASKED_LOGIT)
        return logits.index_fill(-1, index.to(logits.device), fill)

    return head.register_forward_hook(mask)


def build_random_model(spec: RandomModel, tokenizer, dtype, device):
    """The causal LM of ``spec`` for ``tokenizer`` (prepared: pad token set), in eval mode.

    The weights are the architecture's own init (normal, std ``initializer_range``), drawn in
    float32 on ``device`` after ``torch.manual_seed(spec.seed)`` inside ``fork_rng`` (the
    caller's RNG state is left as it was), then cast to ``dtype`` (a torch dtype): the same
    seed gives the same weights on the same kind of device. The tokenizer's bos/eos/pad ids go
    into the config and generation config; with ``spec.eos`` False (the only kind
    :func:`~grponorm.rl.shapes.parse_random` makes) every eos id is suppressed
    (:func:`suppress_token_ids`), so rollouts always have ``max_new_tokens`` tokens. Sampled
    ids the tokenizer does not have decode to nothing.

    Raises:
        ValueError: the tokenizer has more ids than the shape's vocabulary.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = spec.shape
    if len(tokenizer) > shape.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids, more than shape "
                         f"{shape.name}'s vocabulary of {shape.vocab_size}")
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = Qwen2Config(**shape.hf_config(), **ids)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    model = model.to(dtype)
    model.config._name_or_path = f"random:{shape.name}@{spec.seed}"
    model.generation_config = GenerationConfig(**ids)
    if not spec.eos:
        suppress_token_ids(model, eos_token_ids(tokenizer, model))
    return model.eval()


def random_model_facts(name: str) -> dict:
    """What a ``random:`` model name stands for, for logs and summaries: shape, init seed,
    parameter count, tokenizer and the EOS setting."""
    spec = parse_random(name)
    return {"random_shape": spec.shape.name, "shape_source": spec.shape.source,
            "init_seed": spec.seed, "parameters": spec.shape.parameter_count(),
            "tokenizer": TOKENIZER,
            "eos": "on" if spec.eos else "off (EOS logits masked: completions run to "
                                         "max_new_tokens)"}
