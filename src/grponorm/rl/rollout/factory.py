"""Rollout engines by name: the one place that knows every engine (above the engines)."""

from __future__ import annotations

from ..choices import ROLLOUTS
from .base import RolloutEngine
from .decode import DecodeEngine
from .generate import HFGenerateEngine

__all__ = ["ENGINES", "make_engine"]


#: Rollout engines by name (``TrainConfig.rollout``).
ENGINES = ROLLOUTS  # the engines by name (rl.choices.Rollout)


def make_engine(
    name: str,
    model,
    tokenizer,
    *,
    share_prompt: bool = True,
    share_prefix: bool = True,
    gqa_attention: bool = True,
) -> RolloutEngine:
    """The rollout engine called ``name``:

    - ``"decode"``: :class:`~.decode.DecodeEngine`, the own decode loop (default);
    - ``"generate"``: :class:`HFGenerateEngine`, ``transformers``' ``generate`` (the reference);
    - ``"vllm"``: :class:`~grponorm.rl.rollout.vllm.VLLMEngine` (GPU, needs ``vllm``).
    """
    if name == "decode":
        return DecodeEngine(
            model, tokenizer, share_prefix=share_prefix, gqa_attention=gqa_attention
        )
    if name == "generate":
        return HFGenerateEngine(model, tokenizer, share_prompt=share_prompt)
    if name == "vllm":
        from .vllm import VLLMEngine  # imports vllm: an optional heavy dependency (GPU)

        return VLLMEngine(model, tokenizer)
    raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(ENGINES)}")
