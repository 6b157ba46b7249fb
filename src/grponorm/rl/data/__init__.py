"""Problems for the RLVR trainer, one module per job: the :class:`Problem` record
(``problem``), GSM8K (``gsm8k``), synthetic arithmetic (``arithmetic``), chat prompts
(``prompts``) and difficulty slices (``slices``).

Every task yields ``Problem`` records whose ``answer`` is a canonical number string that
``grponorm.rl.rewards.correctness_reward`` verifies.
"""

from .arithmetic import ARITHMETIC_LEVELS, ArithmeticLevel, arithmetic_level, make_arithmetic
from .gsm8k import (
    GSM8K_ENV_VAR,
    gsm8k_final_answer,
    load_gsm8k,
    load_gsm8k_with_report,
    read_gsm8k_jsonl,
    reasoning_steps,
)
from .problem import DataError, DataUnavailableError, LoadReport, Problem
from .prompts import (
    ARITHMETIC_FEWSHOT,
    ARITHMETIC_SYSTEM,
    GSM8K_FEWSHOT,
    GSM8K_SYSTEM,
    build_messages,
    problem_messages,
)
from .slices import split_by_pass_rate, split_by_steps

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
    "split_by_pass_rate",
    "split_by_steps",
]
