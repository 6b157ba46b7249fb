"""Rollout engines: sample G completions per prompt, whole groups in one batched call.

``base`` holds the batch layout and the engine protocol, ``generate`` / ``decode`` / ``vllm``
the engines, ``factory.make_engine`` picks one by name (``TrainConfig.rollout``).
"""

from .base import RolloutBatch, RolloutEngine, eval_mode
from .factory import ENGINES, make_engine

__all__ = ["ENGINES", "RolloutBatch", "RolloutEngine", "eval_mode", "make_engine"]
