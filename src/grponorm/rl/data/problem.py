"""The record every task yields (:class:`Problem`), what a loader read, and the data errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataError", "DataUnavailableError", "LoadReport", "Problem"]


class DataError(ValueError):
    """A data file or record is malformed; the message starts with ``file:line:``."""


class DataUnavailableError(RuntimeError):
    """A data set cannot be found locally and cannot be fetched."""


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    Attributes:
        id: unique id, e.g. ``"gsm8k/train/17"`` or ``"arith/add1/s0/3"``.
        question: the question shown to the model.
        answer: canonical final answer (``rewards.format_number``), e.g. ``"1200"``.
        solution: a reference solution, if the task has one (GSM8K does).
        meta: task details: ``family``, and ``n_steps`` (GSM8K) or ``level`` (arithmetic).
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LoadReport:
    """What a loader read: nothing is dropped without being counted here."""

    source: str
    split: str
    n_lines: int
    n_loaded: int
    n_blank: int

    def __str__(self) -> str:
        return (
            f"{self.source} [{self.split}]: {self.n_loaded} problems from {self.n_lines} lines "
            f"({self.n_blank} blank lines skipped)"
        )
