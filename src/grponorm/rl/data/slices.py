"""Difficulty slices: easy / hard by reasoning steps or by the base model's pass rate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .gsm8k import reasoning_steps
from .problem import Problem

__all__ = ["split_by_pass_rate", "split_by_steps"]



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
