"""Chat prompts: each task family's system message and worked examples."""

from __future__ import annotations

from collections.abc import Iterable

from .problem import Problem

__all__ = [
    "ARITHMETIC_FEWSHOT",
    "ARITHMETIC_SYSTEM",
    "GSM8K_FEWSHOT",
    "GSM8K_SYSTEM",
    "build_messages",
    "problem_messages",
]

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
