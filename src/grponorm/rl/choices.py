"""The choices of a run's settings, one table each: the types of :class:`TrainConfig`'s fields.

Each ``Literal`` is the one list of a setting's values: ``TrainConfig.validate`` checks every
field typed with one, the CLI offers them as ``choices``, and code that needs the values reads
the tuple beside it (``SLICES``, ``BACKENDS``, ...) instead of spelling them again.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ATTENTIONS", "BACKENDS", "DIAGNOSTICS", "DIFFICULTIES", "OLD_LOGPROBS", "OPTIMIZERS",
    "ROLLOUTS", "SLICES", "SLICE_RULES", "TASKS", "Attention", "Backend", "Diagnostic",
    "Difficulty", "OldLogprobs", "Optimizer", "Rollout", "Slice", "SliceRule", "Task",
]

Task = Literal["arithmetic", "gsm8k"]
#: The labels a slice rule gives problems.
Difficulty = Literal["easy", "hard"]
#: What a run trains on: every problem, or one difficulty.
Slice = Literal["all", "easy", "hard"]
#: How problems get their difficulty; "auto" follows the task (level / steps).
SliceRule = Literal["auto", "level", "steps", "pass_rate", "judge"]
Optimizer = Literal["adamw", "sgd"]
Rollout = Literal["decode", "generate", "vllm"]
OldLogprobs = Literal["auto", "rollout", "recompute"]
Attention = Literal["auto", "gqa", "model"]
Backend = Literal["native", "trl"]
#: Step diagnostics ("" = none).
Diagnostic = Literal["", "fisher"]

TASKS: tuple[str, ...] = get_args(Task)
DIFFICULTIES: tuple[str, ...] = get_args(Difficulty)
SLICES: tuple[str, ...] = get_args(Slice)
SLICE_RULES: tuple[str, ...] = get_args(SliceRule)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
ROLLOUTS: tuple[str, ...] = get_args(Rollout)
OLD_LOGPROBS: tuple[str, ...] = get_args(OldLogprobs)
ATTENTIONS: tuple[str, ...] = get_args(Attention)
BACKENDS: tuple[str, ...] = get_args(Backend)
DIAGNOSTICS: tuple[str, ...] = get_args(Diagnostic)
