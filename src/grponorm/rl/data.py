"""Problems for the RLVR trainer: GSM8K, synthetic arithmetic, prompts and difficulty slices.

Every task yields ``Problem`` records whose ``answer`` is a canonical number string that
``grponorm.rl.rewards.correctness_reward`` verifies.

GSM8K is read from, in this order: an explicit ``path`` (a folder holding ``train.jsonl`` and
``test.jsonl``, or one ``.jsonl`` file), the folder in ``$GRPONORM_GSM8K_DIR``, or the
Hugging Face hub (``openai/gsm8k``, config ``main``, needs the ``datasets`` package and a
network). A local file is validated line by line: a malformed line raises ``DataError`` with
``file:line: what is wrong``; blank lines are skipped and counted in the ``LoadReport``.

Reasoning steps of a GSM8K solution are its non-empty lines before the ``####`` line. On the
train split this gives 2: 1,961, 3: 2,149, 4: 1,659, 5: 955, 6+: 749 (no problem has fewer
than 2). Counting raw lines instead, as ``solution.count("\\n")`` does, moves three solutions
that contain a blank line up by one step (2: 1,960, 4: 1,660, 5: 954, 6+: 750).

Synthetic arithmetic ("What is 3 + 4 * 2?") uses ``+``, ``-`` and ``*`` with the standard
precedence (``*`` before ``+``/``-``, then left to right), so every answer is an integer; there
is no division. Negative operands are written in parentheses: ``3 - (-4)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grponorm.rl.rewards import format_number, parse_number

__all__ = [
    "ARITHMETIC_FEWSHOT",
    "ARITHMETIC_LEVELS",
    "ARITHMETIC_SYSTEM",
    "GSM8K_ENV_VAR",
    "GSM8K_FEWSHOT",
    "GSM8K_SYSTEM",
    "ArithmeticLevel",
    "DataError",
    "DataUnavailableError",
    "LoadReport",
    "Problem",
    "arithmetic_level",
    "build_messages",
    "gsm8k_final_answer",
    "load_gsm8k",
    "load_gsm8k_with_report",
    "make_arithmetic",
    "problem_messages",
    "read_gsm8k_jsonl",
    "reasoning_steps",
    "slice_sizes",
    "split_by_pass_rate",
    "split_by_steps",
    "step_histogram",
]

log = logging.getLogger(__name__)

GSM8K_ENV_VAR = "GRPONORM_GSM8K_DIR"
GSM8K_HUB_ID = "openai/gsm8k"


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


# --- GSM8K ------------------------------------------------------------------------------------


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


# --- synthetic arithmetic ---------------------------------------------------------------------

_OPS = ("+", "-", "*")


@dataclass(frozen=True)
class ArithmeticLevel:
    """A difficulty level of the arithmetic task (see ``make_arithmetic`` for the fields)."""

    n_ops: int = 1
    operand_range: tuple[int, int] = (0, 9)
    ops: tuple[str, ...] = ("+",)
    description: str = ""


ARITHMETIC_LEVELS: dict[str, ArithmeticLevel] = {
    "add1": ArithmeticLevel(1, (0, 9), ("+",), "one-digit addition"),
    "add2": ArithmeticLevel(1, (10, 99), ("+",), "two-digit addition"),
    "sub1": ArithmeticLevel(1, (0, 9), ("-",), "one-digit subtraction (may go negative)"),
    "mul1": ArithmeticLevel(1, (0, 9), ("*",), "one-digit multiplication"),
    "mul2": ArithmeticLevel(1, (10, 99), ("*",), "two-digit multiplication"),
    "ops2": ArithmeticLevel(2, (0, 9), _OPS, "two operations of + - *, one-digit operands"),
    "ops3": ArithmeticLevel(3, (0, 9), _OPS, "three operations of + - *, one-digit operands"),
}


def _evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Value with ``*`` before ``+``/``-``, left to right otherwise."""
    terms = [operands[0]]
    signs = [1]
    for op, x in zip(ops, operands[1:], strict=True):
        if op == "*":
            terms[-1] *= x
        else:
            terms.append(x)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms, strict=True))


def _level_name(n_ops: int, operand_range: tuple[int, int], ops: tuple[str, ...]) -> str:
    for name, lv in ARITHMETIC_LEVELS.items():
        if (lv.n_ops, lv.operand_range, lv.ops) == (n_ops, operand_range, ops):
            return name
    lo, hi = operand_range
    return f"ops{n_ops}[{''.join(ops)}]{lo}..{hi}"


def make_arithmetic(
    n: int,
    *,
    n_ops: int = 1,
    operand_range: tuple[int, int] = (0, 9),
    ops: Sequence[str] = ("+",),
    seed: int = 0,
) -> list[Problem]:
    """Generate ``n`` arithmetic problems ("What is 3 + 4 * 2?"), deterministic by ``seed``.

    Operands are uniform integers in ``operand_range`` (inclusive); each operation is uniform
    over ``ops``. Problem ``i`` depends only on ``seed`` and ``i``: ``make_arithmetic(100)[:10]
    == make_arithmetic(10)``. Questions may repeat within a set (e.g. ``add1`` has only 100
    distinct questions); ids stay unique.

    Args:
        n: number of problems (>= 0).
        n_ops: operations per expression (>= 1).
        operand_range: inclusive ``(low, high)`` of the operands.
        ops: operations to draw from, a subset of ``("+", "-", "*")``.
        seed: seed of the numpy Generator.

    Returns:
        Problems with integer answers and ``meta`` holding ``family="arithmetic"``, ``level``
        (the preset name when the settings match one of ``ARITHMETIC_LEVELS``), ``n_ops``,
        ``operand_range``, ``ops``, ``expression`` and ``seed``.

    Raises:
        ValueError: for invalid settings.
    """
    ops = tuple(ops)
    lo, hi = (int(v) for v in operand_range)
    if n < 0 or n_ops < 1:
        raise ValueError(f"need n >= 0 and n_ops >= 1, got n={n}, n_ops={n_ops}")
    if lo > hi:
        raise ValueError(f"operand_range must be (low, high) with low <= high, got {operand_range}")
    if not ops or any(op not in _OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {_OPS}, got {ops}")
    level = _level_name(n_ops, (lo, hi), ops)
    # One draw per row, operands and operators interleaved, so row i depends only on (seed, i).
    highs = np.array([hi + 1] * (n_ops + 1) + [len(ops)] * n_ops)
    lows = np.array([lo] * (n_ops + 1) + [0] * n_ops)
    draws = np.random.default_rng(seed).integers(lows, highs, size=(n, 2 * n_ops + 1))
    problems = []
    for i, row in enumerate(draws.tolist()):
        operands, chosen = row[: n_ops + 1], [ops[k] for k in row[n_ops + 1 :]]
        expression = str(operands[0]) if operands[0] >= 0 else f"({operands[0]})"
        for op, x in zip(chosen, operands[1:], strict=True):
            expression += f" {op} " + (str(x) if x >= 0 else f"({x})")
        problems.append(
            Problem(
                id=f"arith/{level}/s{seed}/{i}",
                question=f"What is {expression}?",
                answer=str(_evaluate(operands, chosen)),
                meta={
                    "family": "arithmetic",
                    "level": level,
                    "n_ops": n_ops,
                    "operand_range": (lo, hi),
                    "ops": ops,
                    "expression": expression,
                    "seed": seed,
                },
            )
        )
    return problems


def arithmetic_level(name: str, n: int, *, seed: int = 0) -> list[Problem]:
    """``make_arithmetic`` with the settings of a named preset in ``ARITHMETIC_LEVELS``.

    Raises:
        KeyError: for an unknown level name (the message lists the known ones).
    """
    if name not in ARITHMETIC_LEVELS:
        raise KeyError(f"unknown arithmetic level {name!r}; known: {sorted(ARITHMETIC_LEVELS)}")
    lv = ARITHMETIC_LEVELS[name]
    return make_arithmetic(n, n_ops=lv.n_ops, operand_range=lv.operand_range, ops=lv.ops, seed=seed)


# --- prompts ----------------------------------------------------------------------------------

ARITHMETIC_SYSTEM = (
    "You are a careful calculator. Answer with one sentence of the form "
    "'The answer is N.' where N is the number."
)
ARITHMETIC_FEWSHOT: tuple[tuple[str, str], ...] = (
    ("What is 2 + 3?", "The answer is 5."),
    ("What is 4 * 6?", "The answer is 24."),
)
GSM8K_SYSTEM = (
    "Solve the math word problem. Reason step by step, then end with a final line of the "
    "form 'The answer is N.' where N is the final number."
)
# A hand-written example, not from GSM8K, so that no train or test problem leaks into prompts.
GSM8K_FEWSHOT: tuple[tuple[str, str], ...] = (
    (
        "Tom has 3 boxes with 4 apples in each box. He eats 2 of the apples. "
        "How many apples does he have left?",
        "The 3 boxes hold 3 * 4 = 12 apples.\nAfter eating 2, Tom has 12 - 2 = 10 apples.\n"
        "The answer is 10.",
    ),
)


def build_messages(
    question: str,
    *,
    system: str | None = None,
    fewshot: Iterable[tuple[str, str]] | None = None,
) -> list[dict[str, str]]:
    """Chat messages: optional system turn, worked examples as user/assistant turns, question.

    Args:
        question: the question for the model to answer.
        system: the system message; None leaves it out (note that some chat templates,
            e.g. SmolLM2's, then insert their own default system prompt).
        fewshot: ``(question, answer)`` pairs shown as earlier turns.

    Returns:
        A list of ``{"role", "content"}`` dicts for ``tokenizer.apply_chat_template``.

    Raises:
        ValueError: if the question is empty or an example is not a pair of strings.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    messages = [] if system is None else [{"role": "system", "content": system}]
    for k, pair in enumerate(fewshot or ()):
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise ValueError(f"few-shot example {k} must be a (question, answer) pair of strings")
        messages.append({"role": "user", "content": pair[0]})
        messages.append({"role": "assistant", "content": pair[1]})
    messages.append({"role": "user", "content": question})
    return messages


def problem_messages(problem: Problem) -> list[dict[str, str]]:
    """The default prompt for a problem: its family's system message and few-shot examples."""
    if problem.meta.get("family") == "gsm8k":
        return build_messages(problem.question, system=GSM8K_SYSTEM, fewshot=GSM8K_FEWSHOT)
    return build_messages(problem.question, system=ARITHMETIC_SYSTEM, fewshot=ARITHMETIC_FEWSHOT)


# --- difficulty slices ------------------------------------------------------------------------


def _n_steps(problem: Problem) -> int:
    if "n_steps" in problem.meta:
        return int(problem.meta["n_steps"])
    if problem.solution is None:
        raise ValueError(f"problem {problem.id!r} has neither meta['n_steps'] nor a solution")
    return reasoning_steps(problem.solution)


def split_by_steps(
    problems: Iterable[Problem], easy_max_steps: int = 3
) -> dict[str, list[Problem]]:
    """Easy (at most ``easy_max_steps`` reasoning steps) and hard (more) problems.

    Steps come from ``meta["n_steps"]``, else from ``reasoning_steps(solution)``.

    Raises:
        ValueError: if a problem has neither.
    """
    slices: dict[str, list[Problem]] = {"easy": [], "hard": []}
    for p in problems:
        slices["easy" if _n_steps(p) <= easy_max_steps else "hard"].append(p)
    return slices


def split_by_pass_rate(
    problems: Iterable[Problem], pass_rates: Mapping[str, float], threshold: float = 0.5
) -> dict[str, list[Problem]]:
    """Easy (base-model pass rate >= ``threshold``) and hard (below) problems.

    Args:
        problems: the problems to split.
        pass_rates: measured pass rate in [0, 1] per problem id; ids of other problems are
            ignored.
        threshold: the easy/hard boundary.

    Raises:
        ValueError: if a problem has no rate or a rate is outside [0, 1].
    """
    slices: dict[str, list[Problem]] = {"easy": [], "hard": []}
    missing = []
    for p in problems:
        if p.id not in pass_rates:
            missing.append(p.id)
            continue
        rate = float(pass_rates[p.id])
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"pass rate of {p.id!r} is {rate}, outside [0, 1]")
        slices["easy" if rate >= threshold else "hard"].append(p)
    if missing:
        raise ValueError(f"{len(missing)} problems have no pass rate, e.g. {missing[:3]}")
    return slices


def slice_sizes(slices: Mapping[str, Sequence[Problem]]) -> dict[str, int]:
    """Number of problems in each slice, plus ``"total"``."""
    sizes = {name: len(items) for name, items in slices.items()}
    sizes["total"] = sum(sizes.values())
    return sizes


def step_histogram(problems: Iterable[Problem], cap: int = 6) -> dict[str, int]:
    """Problems per number of reasoning steps, with ``cap`` and above pooled as ``"6+"``."""
    counts = Counter(min(_n_steps(p), cap) for p in problems)
    return {(f"{k}+" if k == cap else str(k)): counts[k] for k in sorted(counts)}
