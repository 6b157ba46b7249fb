"""``load_policy(cfg)``: the model, tokenizer, rollout engine and prompt format of a run.

Every place that samples from a policy (the trainer, the compare grid's base pass rates, the
judge, the Fisher diagnostic on saved checkpoints) builds it here, so they cannot drift apart::

    policy = load_policy(cfg)          # base model, engine over it
    prompts = policy.prompts(problems) # chat prompts with the worked examples
    torch.manual_seed(cfg.seed)
    policy.attach_lora()               # LoRA adapters; the engine now samples from them
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import data as rl_data
from .config import TrainConfig
from .models import ModelConfig, apply_lora, chat_prompt, load_model
from .rollout import RolloutEngine, make_engine
from .shapes import is_random

__all__ = ["Policy", "gqa_wanted", "load_policy"]


@dataclass
class Policy:
    """A loaded policy and the engine that samples from it."""

    model: Any  # the causal LM (a peft model once adapters are attached)
    tokenizer: Any  # its tokenizer (left padding, pad token set)
    engine: RolloutEngine  # rollout engine over ``model``
    model_config: ModelConfig  # what was loaded (LoRA settings included)

    def prompt(self, problem: rl_data.Problem) -> str:
        """The chat prompt of one problem (system prompt, worked examples, question)."""
        return chat_prompt(self.tokenizer, rl_data.problem_messages(problem))

    def prompts(self, problems) -> list[str]:
        """:meth:`prompt` of each problem."""
        return [self.prompt(p) for p in problems]

    def attach_lora(self):
        """Give the model its LoRA adapters (or make every weight trainable when lora_r=0) and
        point the engine at it. The adapters' init draws from torch's global RNG: seed first."""
        self.model = apply_lora(self.model, self.model_config)
        self.engine.model = self.model
        return self.model


def gqa_wanted(cfg: TrainConfig, model) -> bool:
    """Whether rollouts and log-prob passes use ``grponorm.rl.attention`` (``attention=auto``:
    on CPU, where it is faster; on a GPU the model's own kernel (sdpa/flash) is kept)."""
    if cfg.attention != "auto":
        return cfg.attention == "gqa"
    return next(model.parameters()).device.type == "cpu"


def load_policy(cfg: TrainConfig, *, model: str | None = None) -> Policy:
    """Load ``cfg``'s base model (or ``model``, e.g. a judge, with the same dtype, device and
    cache) and the rollout engine ``cfg.rollout`` over it. No adapters yet."""
    if model is not None:
        cfg = replace(cfg, model=model)
    if is_random(cfg.model) and cfg.rollout == "vllm":
        raise ValueError(f"rollout=vllm loads weights from files, and the random model "
                         f"{cfg.model!r} has none; use rollout=decode or generate")
    mcfg = cfg.model_config()
    lm, tok = load_model(mcfg)
    engine = make_engine(cfg.rollout, lm, tok, share_prompt=cfg.share_prompt,
                         share_prefix=cfg.share_prefix, gqa_attention=gqa_wanted(cfg, lm))
    return Policy(lm, tok, engine, mcfg)
