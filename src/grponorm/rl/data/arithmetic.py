"""Synthetic arithmetic ("What is 3 + 4 * 2?"): the difficulty levels and the generator.

Uses ``+``, ``-`` and ``*`` with the standard precedence (``*`` before ``+``/``-``, then left to
right), so every answer is an integer; there is no division. Negative operands are written in
parentheses: ``3 - (-4)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .problem import Problem

__all__ = ["ARITHMETIC_LEVELS", "ArithmeticLevel", "arithmetic_level", "make_arithmetic"]

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
