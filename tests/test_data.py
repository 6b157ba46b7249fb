"""Tests for grponorm.rl.data: GSM8K loading, arithmetic generation, prompts and slices."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from grponorm.rl.data import (
    ARITHMETIC_FEWSHOT,
    ARITHMETIC_LEVELS,
    ARITHMETIC_SYSTEM,
    GSM8K_ENV_VAR,
    GSM8K_FEWSHOT,
    GSM8K_SYSTEM,
    DataError,
    DataUnavailableError,
    Problem,
    arithmetic_level,
    build_messages,
    gsm8k_final_answer,
    load_gsm8k,
    load_gsm8k_with_report,
    make_arithmetic,
    problem_messages,
    read_gsm8k_jsonl,
    reasoning_steps,
    split_by_pass_rate,
    split_by_steps,
)
from grponorm.rl.rewards import correctness_reward


def slice_sizes(slices) -> dict[str, int]:
    """Problems per slice, plus "total"."""
    sizes = {name: len(items) for name, items in slices.items()}
    return {**sizes, "total": sum(sizes.values())}


def step_histogram(problems, cap: int = 6) -> dict[str, int]:
    """Problems per number of reasoning steps (meta n_steps, else the solution), cap pooled."""
    counts = Counter(min(int(p.meta["n_steps"]) if "n_steps" in p.meta
                         else reasoning_steps(p.solution), cap) for p in problems)
    return {(f"{k}+" if k == cap else str(k)): counts[k] for k in sorted(counts)}


REAL_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
needs_real_gsm8k = pytest.mark.skipif(
    not (REAL_GSM8K / "train.jsonl").is_file(), reason=f"GSM8K not found at {REAL_GSM8K}"
)

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nSo 48+24 = <<48+24=72>>72.\n#### 72"


def _record(question="Q?", answer=SOLUTION) -> str:
    return json.dumps({"question": question, "answer": answer})


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    monkeypatch.delenv(GSM8K_ENV_VAR, raising=False)


# --- Problem ----------------------------------------------------------------------------------


def test_problem_is_frozen_and_hashable():
    p = Problem("a", "What is 1 + 1?", "2", meta={"family": "arithmetic"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "3"
    assert hash(p) == hash(Problem("a", "What is 1 + 1?", "2", meta={"other": 1}))
    assert p != Problem("a", "What is 1 + 1?", "2", meta={"other": 1})
    assert Problem("b", "q", "1").meta == {}


# --- GSM8K records ----------------------------------------------------------------------------


def test_gsm8k_final_answer():
    assert gsm8k_final_answer(SOLUTION) == "72"
    assert gsm8k_final_answer("x\n#### 1,200") == "1200"
    assert gsm8k_final_answer("x\n#### -3") == "-3"
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k_final_answer("72")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_final_answer("x\n#### seventy")


def test_reasoning_steps():
    assert reasoning_steps(SOLUTION) == 2
    assert reasoning_steps("a\n\n  \nb\nc\n#### 1") == 3  # blank lines do not count
    assert reasoning_steps("#### 1") == 0
    assert reasoning_steps("a\nso 5 #### 5") == 2  # text before '####' on its line counts
    with pytest.raises(ValueError, match="no '####'"):
        reasoning_steps("a\nb")


def test_read_gsm8k_jsonl_counts_blank_lines(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(_record("First?") + "\n\n   \n" + _record("Second?", "a\nb\nc\n#### 1,080") + "\n")
    problems, report = read_gsm8k_jsonl(f, "train")
    assert [p.question for p in problems] == ["First?", "Second?"]
    assert [p.id for p in problems] == ["gsm8k/train/0", "gsm8k/train/1"]
    assert [p.answer for p in problems] == ["72", "1080"]
    assert problems[1].meta == {"family": "gsm8k", "split": "train", "n_steps": 3}
    assert problems[1].solution == "a\nb\nc\n#### 1,080"
    assert (report.n_lines, report.n_loaded, report.n_blank) == (4, 2, 2)
    assert "2 problems from 4 lines (2 blank lines skipped)" in str(report)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "Q?", "answer": "#### 1"', "invalid JSON"),
        ("not json", "invalid JSON"),
        ('["Q?", "#### 1"]', "expected a JSON object, got list"),
        ('{"answer": "#### 1"}', "missing field 'question'"),
        ('{"question": "Q?"}', "missing field 'answer'"),
        ('{"question": 3, "answer": "#### 1"}', "field 'question' must be a string, got int"),
        ('{"question": "Q?", "answer": null}', "field 'answer' must be a string, got NoneType"),
        ('{"question": " ", "answer": "#### 1"}', "field 'question' is empty"),
        ('{"question": "Q?", "answer": "so 72"}', "field 'answer': solution has no '####'"),
        (
            '{"question": "Q?", "answer": "#### lots"}',
            "field 'answer': text after '####' is not a number",
        ),
    ],
)
def test_malformed_line_reports_file_and_line(tmp_path, line, message):
    f = tmp_path / "train.jsonl"
    f.write_text(_record() + "\n\n" + line + "\n" + _record() + "\n")
    with pytest.raises(DataError, match=re.escape(f"{f}:3: {message}")):
        read_gsm8k_jsonl(f)


def test_invalid_utf8_reports_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_bytes(_record().encode() + b"\n" + b'{"question": "\xff"}\n')
    with pytest.raises(DataError, match=re.escape(f"{f}:2: not valid UTF-8")):
        read_gsm8k_jsonl(f)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- GSM8K path resolution --------------------------------------------------------------------


@pytest.fixture
def gsm8k_dir(tmp_path):
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "train.jsonl").write_text(_record("Train?") + "\n")
    (d / "test.jsonl").write_text(_record("Test 1?") + "\n" + _record("Test 2?") + "\n")
    return d


def test_load_from_explicit_folder_and_file(gsm8k_dir):
    assert [p.question for p in load_gsm8k("test", gsm8k_dir)] == ["Test 1?", "Test 2?"]
    assert [p.question for p in load_gsm8k("train", str(gsm8k_dir))] == ["Train?"]
    assert [p.question for p in load_gsm8k("test", gsm8k_dir / "train.jsonl")] == ["Train?"]


def test_env_var_is_used_and_explicit_path_wins(gsm8k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(GSM8K_ENV_VAR, str(gsm8k_dir))
    assert [p.question for p in load_gsm8k("train")] == ["Train?"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.jsonl").write_text(_record("Other?") + "\n")
    assert [p.question for p in load_gsm8k("train", other)] == ["Other?"]


def test_missing_local_split_is_a_clear_error(gsm8k_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        load_gsm8k("validation", gsm8k_dir)
    monkeypatch.setenv(GSM8K_ENV_VAR, str(gsm8k_dir / "nowhere"))
    with pytest.raises(FileNotFoundError, match=GSM8K_ENV_VAR):
        load_gsm8k("train")  # a set but wrong env var never falls back to the hub


def test_load_logs_the_report(gsm8k_dir, caplog):
    with caplog.at_level(logging.INFO, logger="grponorm.rl.data"):
        load_gsm8k("test", gsm8k_dir)
    assert "2 problems from 2 lines (0 blank lines skipped)" in caplog.text


def test_hub_without_datasets_package_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataUnavailableError, match=f"--gsm8k-dir.*{GSM8K_ENV_VAR}"):
        load_gsm8k("train")


def _fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_hub_offline_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(offline))
    with pytest.raises(DataUnavailableError, match="ConnectionError: hub unreachable.*--gsm8k-dir"):
        load_gsm8k("train")


def test_hub_rows_are_validated_like_local_lines(monkeypatch):
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return [{"question": "Hub?", "answer": SOLUTION}, {"question": "Bad?", "answer": "x"}]

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(fake_load))
    with pytest.raises(
        DataError, match=r"openai/gsm8k\[test\] row 1: field 'answer': solution has no '####'"
    ):
        load_gsm8k("test")
    assert calls == [("openai/gsm8k", "main", "test")]

    def good_load(name, config, split):
        return [{"question": "Hub?", "answer": SOLUTION}]

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(good_load))
    problems, report = load_gsm8k_with_report("test")
    assert [(p.id, p.answer) for p in problems] == [("gsm8k/test/0", "72")]
    assert report.source == "hub:openai/gsm8k" and report.n_loaded == 1


# --- real GSM8K (read in place, never copied) -------------------------------------------------


@pytest.fixture(scope="module")
def real_train():
    if not (REAL_GSM8K / "train.jsonl").is_file():
        pytest.skip(f"GSM8K not found at {REAL_GSM8K}")
    return load_gsm8k_with_report("train", REAL_GSM8K)


@needs_real_gsm8k
def test_real_gsm8k_sizes(real_train):
    problems, report = real_train
    assert (report.n_lines, report.n_loaded, report.n_blank) == (7473, 7473, 0)
    assert len(load_gsm8k("test", REAL_GSM8K)) == 1319
    assert len({p.id for p in problems}) == 7473


@needs_real_gsm8k
def test_real_gsm8k_step_histogram(real_train):
    problems, _ = real_train
    # Non-empty lines before '####'. The design notes' 2:1960, 4:1660, 5:954, 6+:750 counts raw
    # lines: three solutions contain one blank line each, which moves them up one step.
    assert step_histogram(problems) == {"2": 1961, "3": 2149, "4": 1659, "5": 955, "6+": 749}
    raw = step_histogram(
        [
            dataclasses.replace(p, meta={"n_steps": p.solution.split("####")[0].count("\n")})
            for p in problems
        ]
    )
    assert raw == {"2": 1960, "3": 2149, "4": 1660, "5": 954, "6+": 750}
    assert slice_sizes(split_by_steps(problems)) == {"easy": 4110, "hard": 3363, "total": 7473}


@needs_real_gsm8k
def test_real_gsm8k_references_verify_against_their_own_solutions(real_train):
    problems, _ = real_train
    assert all(correctness_reward(p.solution, p.answer) == 1.0 for p in problems)
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in problems)


# --- synthetic arithmetic ---------------------------------------------------------------------


def _operands(expression: str) -> list[int]:
    return [int(x) for x in re.findall(r"\(?(-?\d+)\)?", expression)]


def test_arithmetic_is_deterministic_by_seed():
    kwargs = {"n_ops": 2, "operand_range": (0, 20), "ops": ("+", "-", "*")}
    a = make_arithmetic(50, seed=1, **kwargs)
    assert a == make_arithmetic(50, seed=1, **kwargs)
    assert [p.question for p in a] != [p.question for p in make_arithmetic(50, seed=2, **kwargs)]
    assert make_arithmetic(10, seed=1, **kwargs) == a[:10]  # prefix-stable in n


@pytest.mark.parametrize("level", sorted(ARITHMETIC_LEVELS))
def test_arithmetic_answers_are_correct(level):
    spec = ARITHMETIC_LEVELS[level]
    problems = arithmetic_level(level, 200, seed=7)
    lo, hi = spec.operand_range
    for p in problems:
        expression = p.meta["expression"]
        assert p.question == f"What is {expression}?"
        assert int(p.answer) == eval(expression)  # Python's own precedence, independently
        assert all(lo <= x <= hi for x in _operands(expression))
        assert sum(expression.count(f" {op} ") for op in "+-*") == spec.n_ops
        assert all(f" {op} " not in expression for op in "+-*" if op not in spec.ops)
        assert correctness_reward(f"The answer is {p.answer}.", p.answer) == 1.0
        assert p.meta["level"] == level and p.meta["family"] == "arithmetic"
    assert len({p.id for p in problems}) == len(problems)


def test_arithmetic_uses_standard_precedence_and_parenthesized_negatives():
    problems = make_arithmetic(300, n_ops=3, operand_range=(-9, 9), ops=("+", "-", "*"), seed=3)
    assert any("(-" in p.question for p in problems)
    assert any("*" in p.question and ("+" in p.question or " - " in p.question) for p in problems)
    for p in problems:
        assert int(p.answer) == eval(p.meta["expression"])
    assert problems[0].meta["level"] == "ops3[+-*]-9..9"


def test_arithmetic_covers_the_operand_range():
    values = {
        x
        for p in make_arithmetic(400, operand_range=(3, 7), seed=0)
        for x in _operands(p.meta["expression"])
    }
    assert values == {3, 4, 5, 6, 7}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n >= 0"),
        ({"n": 3, "n_ops": 0}, "n_ops >= 1"),
        ({"n": 3, "operand_range": (5, 1)}, "low <= high"),
        ({"n": 3, "ops": ("/",)}, "subset"),
        ({"n": 3, "ops": ()}, "non-empty"),
    ],
)
def test_arithmetic_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_arithmetic(**kwargs)


def test_arithmetic_levels():
    assert {"add1", "add2", "mul1", "ops2", "ops3"} <= set(ARITHMETIC_LEVELS)
    assert make_arithmetic(0) == []
    with pytest.raises(KeyError, match="known"):
        arithmetic_level("add9", 3)


# --- prompts ----------------------------------------------------------------------------------


def test_build_messages_with_system_and_fewshot():
    messages = build_messages("What is 1 + 1?", system="S", fewshot=[("Q1", "A1"), ("Q2", "A2")])
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    assert build_messages("Q") == [{"role": "user", "content": "Q"}]


def test_build_messages_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        build_messages("  ")
    with pytest.raises(ValueError, match="example 1"):
        build_messages("Q", fewshot=[("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match="example 0"):
        build_messages("Q", fewshot=[("a", 5)])


def test_default_prompts():
    arith = problem_messages(make_arithmetic(1)[0])
    assert arith[0] == {"role": "system", "content": ARITHMETIC_SYSTEM}
    assert arith[1:3] == [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    assert len(arith) == 2 + 2 * len(ARITHMETIC_FEWSHOT)
    gsm = problem_messages(Problem("g", "How many?", "1", SOLUTION, {"family": "gsm8k"}))
    assert gsm[0] == {"role": "system", "content": GSM8K_SYSTEM}
    assert gsm[-1] == {"role": "user", "content": "How many?"}
    for system in (ARITHMETIC_SYSTEM, GSM8K_SYSTEM):
        assert "The answer is N." in system


def test_fewshot_examples_are_correct_and_rewarded():
    for question, answer in ARITHMETIC_FEWSHOT:
        value = eval(question.removeprefix("What is ").removesuffix("?"))
        assert correctness_reward(answer, str(value)) == 1.0
    for _, answer in GSM8K_FEWSHOT:
        assert correctness_reward(answer, "10") == 1.0
        assert "\n" in answer  # shows reasoning before the final line


# --- difficulty slices ------------------------------------------------------------------------


def _steps_problem(i: int, n_steps: int) -> Problem:
    return Problem(str(i), "q", "1", meta={"n_steps": n_steps})


def test_split_by_steps_boundary():
    problems = [_steps_problem(i, s) for i, s in enumerate([1, 2, 3, 4, 7])]
    slices = split_by_steps(problems, easy_max_steps=3)
    assert [p.id for p in slices["easy"]] == ["0", "1", "2"]
    assert [p.id for p in slices["hard"]] == ["3", "4"]
    assert slice_sizes(split_by_steps(problems, easy_max_steps=4)) == {
        "easy": 4,
        "hard": 1,
        "total": 5,
    }


def test_split_by_steps_falls_back_to_solution_and_rejects_unknown():
    with_solution = Problem("s", "q", "72", SOLUTION)
    assert split_by_steps([with_solution], easy_max_steps=1)["hard"] == [with_solution]
    with pytest.raises(ValueError, match="'x' has neither"):
        split_by_steps([Problem("x", "q", "1")])


def test_split_by_pass_rate():
    problems = [Problem(str(i), "q", "1") for i in range(4)]
    rates = {"0": 0.0, "1": 0.49, "2": 0.5, "3": 1.0, "unused": 0.3}
    slices = split_by_pass_rate(problems, rates, threshold=0.5)
    assert [p.id for p in slices["easy"]] == ["2", "3"]
    assert [p.id for p in slices["hard"]] == ["0", "1"]
    assert slice_sizes(slices) == {"easy": 2, "hard": 2, "total": 4}


def test_split_by_pass_rate_rejects_missing_and_invalid_rates():
    problems = [Problem(str(i), "q", "1") for i in range(3)]
    with pytest.raises(ValueError, match=r"2 problems have no pass rate, e.g. \['1', '2'\]"):
        split_by_pass_rate(problems, {"0": 0.5})
    with pytest.raises(ValueError, match="outside"):
        split_by_pass_rate(problems[:1], {"0": 1.5})


def test_step_histogram_pools_the_tail():
    problems = [_steps_problem(i, s) for i, s in enumerate([2, 2, 3, 6, 9, 12])]
    assert step_histogram(problems) == {"2": 2, "3": 1, "6+": 3}
    assert step_histogram(problems, cap=3) == {"2": 2, "3+": 4}
