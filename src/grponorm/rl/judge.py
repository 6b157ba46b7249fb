"""Difficulty slices by an LLM judge: ask a model whether each problem is Easy or Hard.

The paper split GSM8K train into Easy (4,695) and Hard (1,909) with Qwen2-7B-Instruct as the
judge. Any chat model works here (`grponorm rl train --slice-by judge --judge-model ID`); the
embedded SmolLM2-135M runs offline but is a weak judge, so prefer a larger model when online.

Protocol: one greedy answer of at most a few tokens to the prompt below; the verdict is the first
of the words "easy" / "hard" in the answer (case-insensitive). An answer with neither is
"unjudged": it is counted and reported, and the problem joins neither slice.
Verdicts are cached as JSON keyed by the judge model, the prompt and the problems.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tqdm.auto import tqdm

from ..runs import atomic_write
from .data import Problem
from .models import chat_prompt

JUDGE_SYSTEM = (
    "You rate how hard math word problems are for a grade-school student. "
    "Reply with exactly one word: Easy or Hard."
)
JUDGE_TEMPLATE = (
    "Problem: {question}\n\nReference solution:\n{solution}\n\n"
    "Is this problem Easy or Hard? Answer with one word: Easy or Hard."
)
VERDICT = re.compile(r"\b(easy|hard)\b", re.IGNORECASE)


def judge_messages(problem: Problem) -> list[dict]:
    """The chat messages that ask for one problem's difficulty."""
    solution = problem.solution or f"The answer is {problem.answer}."
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(question=problem.question,
                                                              solution=solution)}]


def parse_verdict(text: str) -> str | None:
    """"easy" or "hard" from the first such word in the judge's answer; None if neither."""
    m = VERDICT.search(text or "")
    return m.group(1).lower() if m else None


def cache_key(judge_model: str, problems: list[Problem]) -> str:
    h = hashlib.sha256((judge_model + "\0" + JUDGE_SYSTEM + "\0" + JUDGE_TEMPLATE).encode())
    for p in problems:
        h.update(p.id.encode() + b"\0" + p.question.encode() + b"\0")
    return h.hexdigest()[:16]


def judge_difficulty(problems: list[Problem], engine, tokenizer, *, judge_model: str,
                     cache_dir: Path | None = None, batch_size: int = 16,
                     max_new_tokens: int = 4, progress: bool = False) -> dict[str, str | None]:
    """Verdict per problem id ("easy", "hard" or None = unjudged), cached under cache_dir.

    Args:
        problems: what to judge.
        engine: a `grponorm.rl.rollout.RolloutEngine` over the judge model.
        tokenizer: the judge's tokenizer (for its chat template).
        judge_model: the judge's name (part of the cache key).
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / "judge" / f"{cache_key(judge_model, problems)}.json"
        if cache_file.is_file():
            return json.loads(cache_file.read_text())["verdicts"]
    verdicts: dict[str, str | None] = {}
    starts = range(0, len(problems), batch_size)
    for s in tqdm(starts, desc="judge", disable=not progress, leave=False):
        chunk = problems[s:s + batch_size]
        prompts = [chat_prompt(tokenizer, judge_messages(p)) for p in chunk]
        batch = engine.generate(prompts, 1, max_new_tokens=max_new_tokens, temperature=0.0)
        for p, text in zip(chunk, batch.texts, strict=True):
            verdicts[p.id] = parse_verdict(text)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, json.dumps({"judge_model": judge_model, "verdicts": verdicts}))
    return verdicts


def split_by_verdict(problems: list[Problem],
                     verdicts: dict[str, str | None]) -> dict[str, list[Problem]]:
    """{"easy": [...], "hard": [...], "unjudged": [...]} -- nothing is dropped silently."""
    out: dict[str, list[Problem]] = {"easy": [], "hard": [], "unjudged": []}
    for p in problems:
        if p.id not in verdicts:
            raise ValueError(f"problem {p.id!r} has no judge verdict")
        out[verdicts[p.id] or "unjudged"].append(p)
    return out
