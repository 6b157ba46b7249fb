"""The problems of a run: the training pool and held-out set, difficulty slices (level,
reasoning steps, the base model's pass rate, an LLM judge), the per-step draw and probe sets.

Everything here is a pure function of the config (and, for pass rates and judge verdicts, of the
base model, cached on disk), so every seed, a resumed run and a diagnostic see the same problems.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..runs import atomic_write
from . import data as rl_data
from .choices import DIFFICULTIES
from .config import TrainConfig
from .judge import judge_difficulty, split_by_verdict
from .models import resolved_dtype
from .policy import Policy, load_policy
from .rewards import batch_rewards
from .rollout import RolloutEngine

__all__ = [
    "build_problems",
    "difficulty_scores",
    "distinct_questions",
    "measure_pass_rates",
    "pass_rate_cache",
    "probe_problems",
    "select_problems",
    "slice_labels",
    "step_indices",
    "step_seed",
]


def build_problems(cfg: TrainConfig) -> tuple[list[rl_data.Problem], list[rl_data.Problem]]:
    """The training pool and the held-out eval problems, before slicing.

    Arithmetic: per level, ``n_eval`` distinct questions drawn with seed ``data_seed + 1`` are
    held out, and the training pool is the first ``n_train`` problems of seed ``data_seed``
    whose question is not held out -- so evaluation measures questions never trained on (a
    one-digit level has only 100 distinct questions: the default keeps 32 of them out).
    GSM8K: the first ``n_train`` train problems (0 = all) and the first ``n_eval`` test ones.

    Raises:
        ValueError / FileNotFoundError: unknown level, missing or malformed data (clear
            one-line messages for the CLI).
    """
    if cfg.task == "arithmetic":
        train, held = [], []
        for lv in cfg.levels:
            try:
                ev = distinct_questions(rl_data.arithmetic_level(lv, 20 * cfg.n_eval + 50,
                                                        seed=cfg.data_seed + 1), cfg.n_eval)
                out = {p.question for p in ev}
                cand = rl_data.arithmetic_level(lv, 4 * cfg.n_train + 100, seed=cfg.data_seed)
            except KeyError as exc:
                raise ValueError(str(exc.args[0])) from None
            tr = [p for p in cand if p.question not in out][: cfg.n_train]
            if len(ev) < cfg.n_eval or len(tr) < cfg.n_train:
                raise ValueError(
                    f"level {lv!r} has too few distinct questions for n_eval={cfg.n_eval} "
                    f"held out and n_train={cfg.n_train}: lower n_eval")
            train, held = train + tr, held + ev
        return train, held
    path = cfg.gsm8k_dir or None
    try:
        train = rl_data.load_gsm8k("train", path)
        held = rl_data.load_gsm8k("test", path) if cfg.n_eval else []
    except rl_data.DataUnavailableError as exc:
        raise ValueError(str(exc)) from None
    return (train[: cfg.n_train] if cfg.n_train else train), held[: cfg.n_eval]


def distinct_questions(problems: list[rl_data.Problem], n: int) -> list[rl_data.Problem]:
    """The first ``n`` problems with distinct questions."""
    seen, out = set(), []
    for p in problems:
        if p.question not in seen and len(out) < n:
            seen.add(p.question)
            out.append(p)
    return out


def measure_pass_rates(
    engine: RolloutEngine,
    prompts: list[str],
    problems: list[rl_data.Problem],
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    cache_file: Path | None = None,
    batch_prompts: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Base-model pass rate of each problem: the fraction of ``k`` samples that are correct.

    Results are cached as JSON in ``cache_file`` (if given): the key is in the file name, so a
    change of model, prompt, settings or problems measures again.
    """
    if cache_file is not None and cache_file.is_file():
        return json.loads(cache_file.read_text())["pass_rates"]
    rates: dict[str, float] = {}
    starts = range(0, len(problems), batch_prompts)
    for s in tqdm(starts, desc="pass rates", disable=not progress, leave=False):
        chunk = problems[s : s + batch_prompts]
        batch = engine.generate(
            prompts[s : s + batch_prompts],
            k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=1.0,
            generator_seed=seed + s,
        )
        r = batch_rewards(batch.texts, [p.answer for p in chunk for _ in range(k)])
        for i, p in enumerate(chunk):
            rates[p.id] = sum(r[i * k : (i + 1) * k]) / k
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            cache_file,
            json.dumps(
                {
                    "k": k,
                    "temperature": temperature,
                    "max_new_tokens": max_new_tokens,
                    "pass_rates": rates,
                }
            ),
        )
    return rates


def pass_rate_cache(cfg: TrainConfig, prompts: list[str], problems) -> Path:
    h = hashlib.sha256()
    for part in (
        cfg.model,
        resolved_dtype(cfg.model_config())[0],  # "auto" keys by what it resolved to
        cfg.pass_rate_k,
        cfg.temperature,
        cfg.max_new_tokens,
        cfg.data_seed,
    ):
        h.update(repr(part).encode())
    for p, text in zip(problems, prompts, strict=True):
        h.update(p.id.encode() + b"\0" + text.encode() + b"\0" + p.answer.encode())
    return cfg.cache_path() / "pass_rates" / f"{cfg.task}-{h.hexdigest()[:16]}.json"


def slice_labels(
    cfg: TrainConfig, problems: list[rl_data.Problem], pass_rates: dict[str, float] | None
) -> dict[str, str]:
    """``problem id -> "easy" | "hard"`` by the configured rule ("unjudged" is possible for
    slice_by=judge, whose verdicts come in ``pass_rates``'s place)."""
    if cfg.slice_by == "judge":
        slices = split_by_verdict(problems, pass_rates or {})
        return {p.id: name for name, items in slices.items() for p in items}
    if cfg.slice_by == "level":
        easy_level = cfg.levels[0]
        return {p.id: "easy" if p.meta.get("level") == easy_level else "hard" for p in problems}
    if cfg.slice_by == "steps":
        if cfg.task == "arithmetic":  # one reasoning step per operation
            problems = [
                rl_data.Problem(
                    p.id, p.question, p.answer, p.solution, {**p.meta, "n_steps": p.meta["n_ops"]}
                )
                for p in problems
            ]
        slices = rl_data.split_by_steps(problems, cfg.easy_max_steps)
    else:
        slices = rl_data.split_by_pass_rate(problems, pass_rates or {}, cfg.pass_rate_threshold)
    return {p.id: name for name, items in slices.items() for p in items}


def difficulty_scores(cfg: TrainConfig, problems, policy: Policy, progress: bool = False):
    """What `slice_labels` needs besides the problems: the base model's pass rates
    (slice_by=pass_rate) or the judge's verdicts (slice_by=judge), both cached; None otherwise.
    """
    if cfg.slice_by == "pass_rate":
        prompts = policy.prompts(problems)
        return measure_pass_rates(
            policy.engine, prompts, problems, k=cfg.pass_rate_k, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, seed=cfg.data_seed,
            cache_file=pass_rate_cache(cfg, prompts, problems), progress=progress)
    if cfg.slice_by == "judge":
        return judge_verdicts(cfg, problems, policy, progress)
    return None


def judge_verdicts(cfg: TrainConfig, problems, policy: Policy, progress: bool = False) -> dict:
    """slice_by=judge: verdicts of ``cfg.judge_model`` (the policy itself when the names match,
    else loaded for the occasion and released), cached under the cache folder."""
    judge = policy if cfg.judge_model == cfg.model else load_policy(cfg, model=cfg.judge_model)
    return judge_difficulty(problems, judge.engine, judge.tokenizer, judge_model=cfg.judge_model,
                            cache_dir=cfg.cache_path(), progress=progress)


def step_indices(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Pool indices of the problems of ``step`` (1-based): epochs of seeded permutations.

    A pure function of its arguments, which is what makes the data position resumable.
    """
    out = []
    for pos in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(pos, n)
        perm = np.random.default_rng([seed, 7, epoch]).permutation(n)
        out.append(int(perm[i]))
    return out


def step_seed(seed: int, step: int, salt: int) -> int:
    """The sampling seed of ``step`` for one purpose (``salt``: 1 rollout, 2 eval, 3 probe)."""
    return int(np.random.default_rng([seed, salt, step]).integers(2**31 - 1))


def probe_problems(cfg: TrainConfig, train_pool: list) -> list:
    """The fixed probe set of ``diag_probe`` training problems (a pure function of
    ``data_seed`` and the pool, so every training seed and a resumed run probe the same ones)."""
    n = min(cfg.diag_probe, len(train_pool))
    order = np.random.default_rng([cfg.data_seed, 11]).permutation(len(train_pool))
    return [train_pool[int(i)] for i in order[:n]]


def select_problems(cfg: TrainConfig, train_pool: list, held: list, policy: Policy,
                    progress: bool = False):
    """The training pool and held-out problems of ``cfg.slice``, every problem's label
    (``problem id -> easy | hard``) and the slice sizes of the training pool."""
    scores = difficulty_scores(cfg, train_pool + held, policy, progress)
    labels = slice_labels(cfg, train_pool + held, scores)
    if cfg.slice != "all":
        train_pool = [p for p in train_pool if labels[p.id] == cfg.slice]
        held = [p for p in held if labels[p.id] == cfg.slice]
        if not train_pool:
            raise ValueError(f"the {cfg.slice!r} slice of the training pool is empty")
    names = (*DIFFICULTIES, "unjudged") if cfg.slice_by == "judge" else DIFFICULTIES
    sizes = {s: sum(labels[p.id] == s for p in train_pool) for s in names}
    return train_pool, held, labels, sizes
