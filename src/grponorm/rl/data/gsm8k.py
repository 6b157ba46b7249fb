"""GSM8K: the local JSONL reader (validated line by line), the hub loader, final answers and
reasoning steps.

GSM8K is read from, in this order: an explicit ``path`` (a folder holding ``train.jsonl`` and
``test.jsonl``, or one ``.jsonl`` file), the folder in ``$GRPONORM_GSM8K_DIR``, or the
Hugging Face hub (``openai/gsm8k``, config ``main``, needs the ``datasets`` package and a
network). A local file is validated line by line: a malformed line raises ``DataError`` with
``file:line: what is wrong``; blank lines are skipped and counted in the ``LoadReport``.

Reasoning steps of a GSM8K solution are its non-empty lines before the ``####`` line. On the
train split this gives 2: 1,961, 3: 2,149, 4: 1,659, 5: 955, 6+: 749 (no problem has fewer
than 2). Counting raw lines instead, as ``solution.count("\\n")`` does, moves three solutions
that contain a blank line up by one step (2: 1,960, 4: 1,660, 5: 954, 6+: 750).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..rewards import format_number, parse_number
from .problem import DataError, DataUnavailableError, LoadReport, Problem

__all__ = [
    "GSM8K_ENV_VAR",
    "gsm8k_final_answer",
    "load_gsm8k",
    "load_gsm8k_with_report",
    "read_gsm8k_jsonl",
    "reasoning_steps",
]

log = logging.getLogger("grponorm.rl.data")

GSM8K_ENV_VAR = "GRPONORM_GSM8K_DIR"
GSM8K_HUB_ID = "openai/gsm8k"


def gsm8k_final_answer(solution: str) -> str:
    """Canonical final answer of a GSM8K solution: the number after its last ``####``.

    Raises:
        ValueError: if there is no ``####`` or no number after it.
    """
    pos = solution.rfind("####")
    if pos < 0:
        raise ValueError("solution has no '####' answer line")
    value = parse_number(solution[pos + 4 :], strict=True)
    if value is None:
        raise ValueError(f"text after '####' is not a number: {solution[pos + 4 :].strip()!r}")
    return format_number(value)


def reasoning_steps(solution: str) -> int:
    """Number of non-empty lines before the ``####`` line of a GSM8K solution.

    Raises:
        ValueError: if the solution has no ``####``.
    """
    pos = solution.find("####")
    if pos < 0:
        raise ValueError("solution has no '####' answer line")
    return sum(1 for line in solution[:pos].split("\n") if line.strip())


def _gsm8k_problem(record: Any, split: str, index: int) -> Problem:
    """Validate one raw record; raises ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(record[key]).__name__}")
        if not record[key].strip():
            raise ValueError(f"field {key!r} is empty")
    solution = record["answer"]
    try:
        answer = gsm8k_final_answer(solution)
    except ValueError as exc:
        raise ValueError(f"field 'answer': {exc}") from None
    return Problem(
        id=f"gsm8k/{split}/{index}",
        question=record["question"].strip(),
        answer=answer,
        solution=solution,
        meta={"family": "gsm8k", "split": split, "n_steps": reasoning_steps(solution)},
    )


def read_gsm8k_jsonl(
    path: str | os.PathLike, split: str = "train"
) -> tuple[list[Problem], LoadReport]:
    """Read and validate a GSM8K jsonl file (one ``{"question", "answer"}`` object a line).

    Args:
        path: the file.
        split: split name used in problem ids.

    Returns:
        The problems, in file order, and a report of the line counts.

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: ``file:line: what is wrong`` for the first malformed line.
    """
    path = Path(path)
    problems: list[Problem] = []
    n_lines = n_blank = 0
    with path.open("rb") as fh:
        for n_lines, raw in enumerate(fh, start=1):
            where = f"{path}:{n_lines}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                n_blank += 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            try:
                problems.append(_gsm8k_problem(record, split, len(problems)))
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
    report = LoadReport(str(path), split, n_lines, len(problems), n_blank)
    return problems, report


def _load_gsm8k_hub(split: str) -> tuple[list[Problem], LoadReport]:
    hint = (
        f"pass --gsm8k-dir DIR or set {GSM8K_ENV_VAR}=DIR to a folder holding "
        "train.jsonl and test.jsonl"
    )
    try:
        import datasets
    except ImportError:
        raise DataUnavailableError(
            f"no local GSM8K given and the 'datasets' package (for the hub) is missing: {hint}"
        ) from None
    try:
        rows = datasets.load_dataset(GSM8K_HUB_ID, "main", split=split)
    except Exception as exc:  # offline, unknown split, hub errors: all end the same way
        raise DataUnavailableError(
            f"could not load {GSM8K_HUB_ID} [{split}] from the hub "
            f"({type(exc).__name__}: {exc}): {hint}"
        ) from exc
    problems = []
    for i, row in enumerate(rows):
        try:
            problems.append(_gsm8k_problem(dict(row), split, i))
        except ValueError as exc:
            raise DataError(f"{GSM8K_HUB_ID}[{split}] row {i}: {exc}") from None
    report = LoadReport(f"hub:{GSM8K_HUB_ID}", split, len(problems), len(problems), 0)
    return problems, report


def load_gsm8k_with_report(
    split: str = "train", path: str | os.PathLike | None = None
) -> tuple[list[Problem], LoadReport]:
    """Load a GSM8K split and say what was read (see ``load_gsm8k``)."""
    if path is None and os.environ.get(GSM8K_ENV_VAR):
        path = os.environ[GSM8K_ENV_VAR]
    if path is None:
        return _load_gsm8k_hub(split)
    path = Path(path)
    file = path if path.is_file() else path / f"{split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(
            f"GSM8K file not found: {file} (expected a folder with {split}.jsonl, "
            f"or the file itself; set by --gsm8k-dir or {GSM8K_ENV_VAR})"
        )
    return read_gsm8k_jsonl(file, split)


def load_gsm8k(split: str = "train", path: str | os.PathLike | None = None) -> list[Problem]:
    """Load a GSM8K split as problems; logs the ``LoadReport`` at INFO level.

    Args:
        split: ``"train"`` or ``"test"`` (any ``<split>.jsonl`` for a local folder).
        path: a folder with ``<split>.jsonl`` or one jsonl file; if None, the folder in
            ``$GRPONORM_GSM8K_DIR``; if that is unset too, the Hugging Face hub.

    Raises:
        DataError: a malformed record (``file:line: what is wrong``).
        FileNotFoundError: the given local file or folder holds no such split.
        DataUnavailableError: no local data and the hub is unreachable or ``datasets`` missing.
    """
    problems, report = load_gsm8k_with_report(split, path)
    log.info("%s", report)
    return problems
