"""The RLVR trainer: GRPO-style LoRA training of a causal LM with any registered normalizer.

One step, top to bottom:

1. take ``prompts_per_step`` problems from the shuffled training pool (the order is a pure
   function of ``seed`` and the step, so a resumed run sees the same problems);
2. sample ``G`` completions per prompt in one batched call (``rollout.RolloutEngine``), seeded
   by ``(seed, step)``;
3. reward each completion with ``rewards.correctness_reward`` (1/0);
4. turn the ``(prompts, G)`` reward matrix into advantages with ``grponorm.normalizers`` -- the
   only source of advantages -- and count the zero-variance groups;
5. ``updates_per_batch`` optimizer updates on ``loss.policy_gradient_loss`` (per-sequence mean =
   GRPO or token sum = Dr. GRPO; clipped ratio; optional k3 KL to the base model);
6. log one JSON line (``kind="train"``) to ``metrics.jsonl``; every ``eval_every`` steps also a
   held-out evaluation (``kind="eval"``, step = updates done so far, 0 = the base model).

Diagnostics (``diagnostics="fisher"``, every ``diag_every`` steps): between steps 4 and 5, on the
current policy (before the update), per prompt the Sophia-style Fisher trace
``G * ||grad mean_g log pi(o_g)||^2`` over the trainable parameters and the reward variance
``p_hat (1 - p_hat)`` of the same G samples (``grponorm.diagnostics.fisher``). By default the
prompts are the step's own training groups (same samples); ``diag_probe=n`` measures instead a
fixed probe set of ``n`` training problems (the same at every diagnostic step, so correlations
can be lagged across steps) on fresh samples seeded by ``(seed, step)``. Logged in the step's
record as lists, one entry per prompt in ``diag_problems`` order (``fisher_trace``,
``reward_var``, ``p_hat``, ``diag_completion_len``), with its cost in ``time_diag`` (of which
``time_diag_fisher`` is the backward passes). The diagnostic draws no global random numbers and
never writes ``.grad`` or the optimizer, so training metrics are unchanged by it.

Checkpoints (``checkpoint.pt``: trainable weights, optimizer state, Python/NumPy/torch RNG
states, data position, step) are written every ``checkpoint_every`` steps to a temporary file and
renamed into place, so a kill at any moment leaves the previous checkpoint intact. ``resume=DIR``
reloads the run's saved config, drops metric lines written after the checkpoint and continues;
on CPU the resumed metrics equal an uninterrupted run's except for timing fields
(:data:`TIMING_FIELDS`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..normalizers import normalize_with_stats
from ..runs import Run, environment, markdown_table, to_jsonable
from . import data as rl_data
from .attention import use_gqa_attention
from .loss import AGGREGATIONS, grouped_token_logprobs, policy_gradient_loss, token_logprobs
from .rewards import batch_rewards
from .rollout import ENGINES, RolloutEngine, make_engine

__all__ = [
    "TIMING_FIELDS",
    "TrainConfig",
    "build_problems",
    "measure_pass_rates",
    "probe_problems",
    "run",
]

#: Metric fields that depend on wall-clock time (excluded when comparing runs for equality).
TIMING_FIELDS = (
    "time_generate",
    "time_forward",
    "time_backward",
    "time_train",
    "time_other",
    "time_step",
    "tokens_per_s",
    "time_eval",
    "time_diag",
    "time_diag_fisher",
)
DIAGNOSTICS = ("", "fisher")
CHECKPOINT = "checkpoint.pt"
#: Steps averaged for the start/end training accuracy of a summary.
SUMMARY_WINDOW = 5
SLICE_RULES = ("level", "steps", "pass_rate", "judge")
OLD_LOGPROBS = ("auto", "rollout", "recompute")
ATTENTIONS = ("auto", "gqa", "model")


@dataclass
class TrainConfig:
    """Settings of one RLVR training run (``grponorm rl train``)."""

    model: str = "embedded"  # HF id, local model folder, .gguf file, or embedded (SmolLM2-135M)
    dtype: str = "bfloat16"  # parameter dtype: bfloat16 (faster on CPU, LoRA kept fp32) or float32
    lora_r: int = 16  # LoRA rank (0 = full fine-tuning)
    lora_alpha: float = 32.0  # LoRA alpha (update scaled by alpha / r)
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")  # modules given adapters
    task: str = "arithmetic"  # arithmetic or gsm8k
    levels: list = field(default_factory=lambda: ["add1", "mul1"])  # arithmetic presets pooled
    gsm8k_dir: str = ""  # local GSM8K folder ("" = $GRPONORM_GSM8K_DIR, else the hub)
    slice: str = "all"  # train on all, easy or hard problems
    slice_by: str = "level"  # level (first level easy), steps, pass_rate (base model) or judge
    judge_model: str = "embedded"  # slice_by=judge: model asked "Easy or Hard?" (paper: Qwen2-7B)
    easy_max_steps: int = 3  # slice_by=steps: easy = at most this many reasoning steps
    pass_rate_threshold: float = 0.5  # slice_by=pass_rate: easy = base pass rate >= this
    pass_rate_k: int = 8  # slice_by=pass_rate: samples per problem to measure it (cached)
    n_train: int = 256  # training problems (per level for arithmetic; 0 = all of GSM8K train)
    n_eval: int = 32  # held-out eval questions never trained on (per arithmetic level; 0 = none)
    data_seed: int = 0  # seed of the problem pool (kept fixed across training seeds)
    normalizer: str = "group_std"  # advantage normalizer (any name in grponorm.normalizers)
    normalizer_options: str = ""  # normalizer options, e.g. eps=1e-4,ddof=1
    G: int = 8  # completions sampled per prompt
    prompts_per_step: int = 4  # prompts (groups) per step
    steps: int = 40  # training steps
    lr: float = 5e-4  # AdamW learning rate (constant)
    max_grad_norm: float = 1.0  # gradient clipping threshold (0 = none)
    max_new_tokens: int = 12  # completion length limit
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts
    loss_agg: str = "seq_mean"  # seq_mean (GRPO) or token_sum (Dr. GRPO, / max_new_tokens)
    kl_coef: float = 0.0  # k3 KL penalty to the base model (0 = none)
    clip_eps: float = 0.2  # PPO clip range of the importance ratio (0 = none)
    updates_per_batch: int = 1  # optimizer updates per sampled batch (>1 uses the clip)
    micro_batch: int = 0  # rows per forward/backward chunk, whole groups (0 = whole batch)
    rollout: str = "decode"  # rollout engine: decode (own loop), generate (transformers) or vllm
    share_prompt: bool = True  # run each prompt once per group (KV cache shared; same math)
    share_prefix: bool = True  # run the token prefix common to a batch's prompts once (same math)
    old_logprobs: str = "auto"  # updates_per_batch>1: auto (engine's if given), rollout, recompute
    attention: str = "auto"  # rollout/log-prob attention: gqa (no KV copy), model, auto (CPU: gqa)
    eval_every: int = 10  # held-out eval every N steps (and at start and end; 0 = never)
    eval_temperature: float = 0.0  # eval sampling temperature (0 = greedy)
    checkpoint_every: int = 10  # checkpoint every N steps (0 = only at the end)
    seed: int = 0  # training seed (LoRA init, sampling, data order)
    threads: int = 0  # torch CPU threads (0 = torch's default)
    device: str = "auto"  # auto (CUDA GPU when present, else CPU), cpu, cuda or cuda:N
    out: str = "runs"  # root folder for run outputs
    run_dir: str = ""  # exact run folder ("" = <out>/rl_train/<timestamp>)
    resume: str = ""  # run folder to resume from its last checkpoint ("" = new run)
    cache_dir: str = ""  # model/pass-rate cache ("" = $GRPONORM_CACHE or ~/.cache/grponorm)
    diagnostics: str = ""  # "fisher" computes per-prompt Fisher traces and reward variances
    diag_every: int = 1  # run the diagnostics every k steps (before that step's update)
    diag_probe: int = 0  # 0 = on the step's training groups; n = fixed probe set of n problems

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work (before anything is loaded)."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(
            self.task in ("arithmetic", "gsm8k"), f"task must be arithmetic or gsm8k: {self.task!r}"
        )
        need(
            self.slice in ("all", "easy", "hard"),
            f"slice must be all, easy or hard: {self.slice!r}",
        )
        need(
            self.slice_by in SLICE_RULES,
            f"slice_by must be one of {SLICE_RULES}: {self.slice_by!r}",
        )
        if self.task == "arithmetic":
            need(bool(self.levels), "levels is empty: name at least one arithmetic preset")
            unknown = [lv for lv in self.levels if lv not in rl_data.ARITHMETIC_LEVELS]
            need(
                not unknown,
                f"unknown arithmetic level(s) {unknown}; known: "
                f"{', '.join(sorted(rl_data.ARITHMETIC_LEVELS))}",
            )
        else:
            need(
                self.slice_by != "level",
                "slice_by=level is for arithmetic; use steps, pass_rate or judge for gsm8k",
            )
        need(self.loss_agg in AGGREGATIONS, f"loss_agg must be one of {AGGREGATIONS}")
        need(self.rollout in ENGINES, f"rollout must be one of {ENGINES}: {self.rollout!r}")
        need(
            self.rollout != "vllm" or importlib.util.find_spec("vllm") is not None,
            "rollout=vllm needs vllm (GPU only): pip install vllm",
        )
        need(
            self.attention in ATTENTIONS,
            f"attention must be one of {ATTENTIONS}: {self.attention!r}",
        )
        need(
            self.old_logprobs in OLD_LOGPROBS,
            f"old_logprobs must be one of {OLD_LOGPROBS}: {self.old_logprobs!r}",
        )
        need(
            not (self.old_logprobs == "rollout" and self.rollout == "generate"),
            "old_logprobs=rollout needs an engine that returns log-probs (decode or vllm), "
            "not generate",
        )
        for name in (
            "G",
            "prompts_per_step",
            "steps",
            "max_new_tokens",
            "updates_per_batch",
            "pass_rate_k",
        ):
            need(getattr(self, name) >= 1, f"{name} must be >= 1; got {getattr(self, name)}")
        for name in (
            "n_train",
            "n_eval",
            "eval_every",
            "checkpoint_every",
            "micro_batch",
            "threads",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0; got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0; got {self.lr}")
        need(
            self.diagnostics in DIAGNOSTICS,
            f"diagnostics must be one of {DIAGNOSTICS[1:]} (or empty); got {self.diagnostics!r}",
        )
        need(self.diag_every >= 1, f"diag_every must be >= 1; got {self.diag_every}")
        need(self.diag_probe >= 0, f"diag_probe must be >= 0; got {self.diag_probe}")
        need(self.temperature > 0, "temperature must be > 0 for training rollouts")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1]; got {self.top_p}")
        need(self.kl_coef >= 0 and self.clip_eps >= 0, "kl_coef and clip_eps must be >= 0")
        need(
            self.kl_coef == 0 or self.lora_r > 0,
            "kl_coef > 0 needs LoRA (lora_r > 0): the reference is the adapters-off model",
        )
        options = parse_options(self.normalizer_options)
        try:  # unknown name or options fail here with the registry's own message
            normalize_with_stats(
                np.array([[0.0, 1.0] * max(1, self.G // 2)]), self.normalizer, **options
            )
        except TypeError as exc:
            raise ValueError(f"normalizer {self.normalizer!r}: bad option ({exc})") from None


def parse_options(text: str) -> dict[str, Any]:
    """``"eps=1e-4,ddof=1"`` -> ``{"eps": 1e-4, "ddof": 1}`` (ints, floats, true/false)."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in str(text or "").split(","))):
        if "=" not in part:
            raise ValueError(f"normalizer option {part!r} is not name=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return options


# ------------------------------------------------------------------------------------ data


def _cache_dir(cfg: TrainConfig) -> Path:
    from .models import default_cache_dir

    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


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
                ev = _distinct(rl_data.arithmetic_level(lv, 20 * cfg.n_eval + 50,
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


def _distinct(problems: list[rl_data.Problem], n: int) -> list[rl_data.Problem]:
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
    from tqdm.auto import tqdm

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
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "k": k,
                    "temperature": temperature,
                    "max_new_tokens": max_new_tokens,
                    "pass_rates": rates,
                }
            )
        )
        os.replace(tmp, cache_file)
    return rates


def _pass_rate_cache(cfg: TrainConfig, prompts: list[str], problems) -> Path:
    h = hashlib.sha256()
    for part in (
        cfg.model,
        cfg.dtype,
        cfg.pass_rate_k,
        cfg.temperature,
        cfg.max_new_tokens,
        cfg.data_seed,
    ):
        h.update(repr(part).encode())
    for p, text in zip(problems, prompts, strict=True):
        h.update(p.id.encode() + b"\0" + text.encode() + b"\0" + p.answer.encode())
    return _cache_dir(cfg) / "pass_rates" / f"{cfg.task}-{h.hexdigest()[:16]}.json"


def slice_labels(
    cfg: TrainConfig, problems: list[rl_data.Problem], pass_rates: dict[str, float] | None
) -> dict[str, str]:
    """``problem id -> "easy" | "hard"`` by the configured rule ("unjudged" is possible for
    slice_by=judge, whose verdicts come in ``pass_rates``'s place)."""
    if cfg.slice_by == "judge":
        from .judge import split_by_verdict

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


def difficulty_scores(cfg: TrainConfig, problems, prompt_of, loaded, progress: bool = False):
    """What `slice_labels` needs besides the problems: the base model's pass rates
    (slice_by=pass_rate) or the judge's verdicts (slice_by=judge), both cached; None otherwise.

    Args:
        prompt_of: problem -> the policy's chat prompt. loaded: (model, tokenizer, engine).
    """
    if cfg.slice_by == "pass_rate":
        prompts = [prompt_of(p) for p in problems]
        return measure_pass_rates(
            loaded[2], prompts, problems, k=cfg.pass_rate_k, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, seed=cfg.data_seed,
            cache_file=_pass_rate_cache(cfg, prompts, problems), progress=progress)
    if cfg.slice_by == "judge":
        return judge_verdicts(cfg, problems, loaded, progress)
    return None


def judge_verdicts(cfg: TrainConfig, problems, loaded, progress: bool = False) -> dict:
    """slice_by=judge: verdicts of ``cfg.judge_model`` (the policy itself when the names match,
    else loaded for the occasion and released), cached under the cache folder."""
    from .judge import judge_difficulty
    from .models import ModelConfig, load_model

    model, tok, engine = loaded
    if cfg.judge_model != cfg.model:
        model, tok = load_model(ModelConfig(model=cfg.judge_model, dtype=cfg.dtype,
                                            device=cfg.device, cache_dir=str(_cache_dir(cfg))))
        engine = make_engine(cfg.rollout, model, tok)
    return judge_difficulty(problems, engine, tok, judge_model=cfg.judge_model,
                            cache_dir=_cache_dir(cfg), progress=progress)


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


def _step_seed(seed: int, step: int, salt: int) -> int:
    return int(np.random.default_rng([seed, salt, step]).integers(2**31 - 1))


# ------------------------------------------------------------------------------------ checkpoint


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, step: int, extra: dict) -> None:
    """Write ``checkpoint.pt`` atomically (tmp file, fsync, rename) plus ``checkpoint.json``."""
    state = {
        "step": step,
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),  # noqa: NPY002 (global state)
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "data_position": extra.get("data_position"),
        "extra": extra,
    }
    target = path / CHECKPOINT
    tmp = path / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    info = path / "checkpoint.json"
    info_tmp = path / "checkpoint.json.tmp"
    info_tmp.write_text(json.dumps({"step": step, "file": CHECKPOINT}) + "\n")
    os.replace(info_tmp, info)


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG states from ``path/checkpoint.pt``; return it."""
    state = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    missing = [n for n in state["trainable"] if n not in params]
    if missing:
        raise ValueError(f"checkpoint does not match the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for n, t in state["trainable"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def _truncate_metrics(file: Path, last_step: int) -> None:
    """Keep only complete metric lines of steps <= ``last_step`` (written before the kill)."""
    if not file.exists():
        return
    keep = []
    for line in file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= last_step:
            keep.append(line)
    tmp = file.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, file)


# ------------------------------------------------------------------------------------ training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (user code may use it)
    torch.manual_seed(seed)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def sync_policy(engine) -> None:
    """Hand the current weights to an engine that keeps its own copy (vLLM) before it samples;
    engines that run the training model itself have nothing to do."""
    sync = getattr(engine, "sync_weights", None)
    if callable(sync):
        sync()


def _evaluate(engine, prompts, problems, labels, cfg: TrainConfig, step: int) -> dict:
    t0 = time.perf_counter()
    batch = engine.generate(
        prompts,
        1,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.eval_temperature,
        top_p=1.0,
        generator_seed=_step_seed(cfg.seed, step, 2),
    )
    r = batch_rewards(batch.texts, [p.answer for p in problems])
    rec = {"kind": "eval", "step": step, "eval_acc": _mean(r), "eval_n": len(r)}
    for name in ("easy", "hard"):
        rec[f"eval_acc_{name}"] = _mean(
            [x for x, p in zip(r, problems, strict=True) if labels[p.id] == name]
        )
    rec["time_eval"] = time.perf_counter() - t0
    return rec


def probe_problems(cfg: TrainConfig, train_pool: list) -> list:
    """The fixed probe set of ``diag_probe`` training problems (a pure function of
    ``data_seed`` and the pool, so every training seed and a resumed run probe the same ones)."""
    n = min(cfg.diag_probe, len(train_pool))
    order = np.random.default_rng([cfg.data_seed, 11]).permutation(len(train_pool))
    return [train_pool[int(i)] for i in order[:n]]


def _fisher_diagnostic(engine, model, cfg: TrainConfig, step, batch, rewards, problems, probe):
    """Per-prompt Fisher trace and reward variance on the current policy (see module doc).

    ``probe``: ``(problems, prompts)`` of the fixed probe set (fresh samples), or None to use
    the step's training ``batch``/``rewards``/``problems``.
    """
    from ..diagnostics.fisher import group_fisher_traces, reward_stats

    t0 = time.perf_counter()
    if probe is not None:
        problems, prompts = probe
        batch = engine.generate(
            prompts,
            cfg.G,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator_seed=_step_seed(cfg.seed, step, 3),
        )
        refs = [p.answer for p in problems for _ in range(cfg.G)]
        rewards = torch.tensor(batch_rewards(batch.texts, refs)).view(len(problems), cfg.G)
    est = group_fisher_traces(
        model, batch, temperature=cfg.temperature, share_prompt=cfg.share_prompt
    )
    st = reward_stats(rewards)
    lengths = batch.completion_lengths.view(len(problems), cfg.G).float().mean(dim=1)
    return {
        "diag_problems": [p.id for p in problems],
        "fisher_trace": est["fisher_trace"].tolist(),
        "reward_var": st["reward_var"].tolist(),
        "p_hat": st["p_hat"].tolist(),
        "diag_completion_len": lengths.tolist(),
        "time_diag_fisher": est["seconds"],
        "time_diag": time.perf_counter() - t0,
    }


def gqa_wanted(cfg: TrainConfig, model) -> bool:
    """Whether rollouts and log-prob passes use ``grponorm.rl.attention`` (``attention=auto``:
    on CPU, where it is faster; on a GPU the model's own kernel (sdpa/flash) is kept)."""
    if cfg.attention != "auto":
        return cfg.attention == "gqa"
    return next(model.parameters()).device.type == "cpu"


def _train_on_batch(model, optimizer, batch, adv, cfg: TrainConfig, ref_ctx) -> dict:
    """``updates_per_batch`` AdamW updates on one rollout batch; returns loss/grad stats."""
    if gqa_wanted(cfg, model):
        with use_gqa_attention(model):
            return _updates(model, optimizer, batch, adv, cfg, ref_ctx)
    return _updates(model, optimizer, batch, adv, cfg, ref_ctx)


def _updates(model, optimizer, batch, adv, cfg: TrainConfig, ref_ctx) -> dict:
    from contextlib import nullcontext

    B, C = batch.completion_ids.shape
    G = batch.G
    rows = max(G, (cfg.micro_batch // G) * G) if cfg.micro_batch else B  # whole groups
    chunks = [slice(s, min(s + rows, B)) for s in range(0, B, rows)]

    def logprobs(c):
        if cfg.share_prompt:
            return grouped_token_logprobs(
                model,
                batch.input_ids[c],
                batch.attention_mask[c],
                prompt_len=batch.prompt_len,
                group_size=G,
                share_prefix=cfg.share_prefix,
            )
        return token_logprobs(model, batch.input_ids[c], batch.attention_mask[c], completion_len=C)

    old = ref = None
    needs_old = cfg.updates_per_batch > 1
    if needs_old and cfg.old_logprobs != "recompute":
        if batch.logprobs is None and cfg.old_logprobs == "rollout":
            raise ValueError("old_logprobs=rollout, but the rollout engine returns no log-probs")
        old = batch.logprobs  # the sampling policy's, from the rollout: no extra pass
        needs_old = old is None
    if needs_old or cfg.kl_coef > 0:
        model.eval()
        with torch.no_grad():
            if needs_old:
                old = torch.cat([logprobs(c) for c in chunks])
            if cfg.kl_coef > 0:
                with ref_ctx() if ref_ctx else nullcontext():
                    ref = torch.cat([logprobs(c) for c in chunks])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    stats_acc: list[dict] = []
    grad_norms, losses = [], []
    t_fwd = t_bwd = 0.0
    gaps: list[torch.Tensor] = []  # |training - rollout log-prob| per token, first update
    for update in range(cfg.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, []
        for c in chunks:
            t0 = time.perf_counter()
            logp = logprobs(c)
            if update == 0 and batch.logprobs is not None:  # the policy that sampled
                m = batch.completion_mask[c].bool()
                gaps.append((logp.detach() - batch.logprobs[c])[m].abs())
            loss, st = policy_gradient_loss(
                logp,
                adv[c],
                batch.completion_mask[c],
                agg=cfg.loss_agg,
                old_logp=None if old is None else old[c],
                clip_eps=cfg.clip_eps or None,
                ref_logp=None if ref is None else ref[c],
                kl_coef=cfg.kl_coef,
                max_tokens=cfg.max_new_tokens,
            )
            w = (c.stop - c.start) / B  # both aggregations are means over rows
            t1 = time.perf_counter()
            (loss * w).backward()
            total += float(loss.detach()) * w
            t_fwd, t_bwd = t_fwd + t1 - t0, t_bwd + time.perf_counter() - t1
            parts.append((w, st))
        t1 = time.perf_counter()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        t_bwd += time.perf_counter() - t1  # the optimizer step counts with the backward pass
        grad_norms.append(float(gn))
        losses.append(total)
        stats_acc.append({k: sum(w * s[k] for w, s in parts) for k in parts[0][1]})
    model.eval()
    out = {k: float(np.mean([s[k] for s in stats_acc])) for k in stats_acc[0]}
    out["tokens"] = float(batch.n_tokens)
    out.update(loss=float(np.mean(losses)), grad_norm=float(np.mean(grad_norms)))
    if gaps:
        gap = torch.cat(gaps)
        out.update(logprob_gap=float(gap.mean()), logprob_gap_max=float(gap.max()))
    out.update(time_forward=t_fwd, time_backward=t_bwd)  # popped into the timing fields
    return out


def _load_saved_config(run_dir: Path) -> TrainConfig:
    file = run_dir / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"cannot resume: {file} not found (is {run_dir} a run folder?)")
    saved = json.loads(file.read_text())["config"]
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in names})
    if isinstance(cfg.lora_targets, list):
        cfg.lora_targets = tuple(cfg.lora_targets)
    return cfg


def _open_run(cfg: TrainConfig) -> tuple[TrainConfig, Run | None, bool]:
    """For ``resume``: the saved config, the run folder and whether it holds a checkpoint.

    A new run's folder is created later (:func:`_create_run`), once data and model have
    loaded, so a bad path or malformed data leaves no empty run folder behind.
    """
    if not cfg.resume:
        if cfg.run_dir and (Path(cfg.run_dir).expanduser() / "metrics.jsonl").exists():
            raise ValueError(f"run folder {cfg.run_dir} already holds a run; use --resume")
        return cfg, None, False
    path = Path(cfg.resume).expanduser()
    saved = _load_saved_config(path)
    saved.resume, saved.run_dir = str(path), str(path)
    return saved, Run(path), (path / CHECKPOINT).is_file()


def _create_run(cfg: TrainConfig) -> Run:
    if cfg.run_dir:
        run_ = Run(Path(cfg.run_dir).expanduser())
        run_.write_json("config.json", {"config": cfg, "environment": environment()})
        return run_
    return Run.create(cfg.out, "rl_train", cfg)


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) one run; returns the summary (with ``run_dir``)."""
    cfg.validate()
    cfg, out, has_ckpt = _open_run(cfg)
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from tqdm.auto import tqdm

    from .models import ModelConfig, apply_lora, chat_prompt, load_model, reference_context

    t_setup = time.perf_counter()
    train_pool, held = build_problems(cfg)  # data errors surface before the model loads
    if not train_pool:
        raise ValueError("the training pool is empty (n_train=0 or no data)")
    mcfg = ModelConfig(
        model=cfg.model,
        dtype=cfg.dtype,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_targets=tuple(cfg.lora_targets),
        device=cfg.device,
        **({"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}),
    )
    model, tok = load_model(mcfg)
    engine = make_engine(cfg.rollout, model, tok, share_prompt=cfg.share_prompt,
                         share_prefix=cfg.share_prefix, gqa_attention=gqa_wanted(cfg, model))

    def prompt_of(p):
        return chat_prompt(tok, rl_data.problem_messages(p))

    scores = difficulty_scores(cfg, train_pool + held, prompt_of, (model, tok, engine), progress)
    labels = slice_labels(cfg, train_pool + held, scores)
    if cfg.slice != "all":
        train_pool = [p for p in train_pool if labels[p.id] == cfg.slice]
        held = [p for p in held if labels[p.id] == cfg.slice]
        if not train_pool:
            raise ValueError(f"the {cfg.slice!r} slice of the training pool is empty")
    names = ("easy", "hard", "unjudged") if cfg.slice_by == "judge" else ("easy", "hard")
    sizes = {s: sum(labels[p.id] == s for p in train_pool) for s in names}
    train_prompts = [prompt_of(p) for p in train_pool]
    held_prompts = [prompt_of(p) for p in held]
    probe = None
    if cfg.diagnostics and cfg.diag_probe:
        probe_set = probe_problems(cfg, train_pool)
        probe = (probe_set, [prompt_of(p) for p in probe_set])

    if out is None:
        out = _create_run(cfg)
    _seed_everything(cfg.seed)
    model = apply_lora(model, mcfg)  # LoRA init draws from the seeded torch RNG
    engine.model = model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ref_ctx = (lambda: reference_context(model)) if cfg.kl_coef > 0 else None
    norm_opts = parse_options(cfg.normalizer_options)

    start, extra = 0, {}
    if has_ckpt:
        state = load_checkpoint(out.path, model, optimizer)
        start, extra = int(state["step"]), state["extra"]
        _truncate_metrics(out.file("metrics.jsonl"), start)
    elif cfg.resume:  # killed before the first checkpoint: start over in the same folder
        _truncate_metrics(out.file("metrics.jsonl"), -1)
    elapsed0 = float(extra.get("elapsed_s", 0.0))
    t_run = time.perf_counter()
    setup_s = time.perf_counter() - t_setup

    def do_eval(step):
        if not (cfg.eval_every and held):
            return None
        sync_policy(engine)
        rec = _evaluate(engine, held_prompts, held, labels, cfg, step)
        out.log(rec)
        return rec

    last_eval = extra.get("last_eval")
    if start == 0:
        ev = do_eval(0)
        last_eval = ev["eval_acc"] if ev else None
    bar = tqdm(
        range(start + 1, cfg.steps + 1),
        desc=f"rl {cfg.normalizer}/{cfg.slice}",
        disable=not progress,
        initial=start,
        total=cfg.steps,
    )
    ema = extra.get("ema_acc")
    for step in bar:
        t0 = time.perf_counter()
        idx = step_indices(len(train_pool), step, cfg.prompts_per_step, cfg.seed)
        probs = [train_pool[i] for i in idx]
        sync_policy(engine)
        batch = engine.generate(
            [train_prompts[i] for i in idx],
            cfg.G,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator_seed=_step_seed(cfg.seed, step, 1),
        )
        t_gen = time.perf_counter() - t0
        refs = [p.answer for p in probs for _ in range(cfg.G)]
        rewards = torch.tensor(batch_rewards(batch.texts, refs)).view(len(probs), cfg.G)
        adv, astats = normalize_with_stats(rewards, cfg.normalizer, **norm_opts)
        adv = adv.to(batch.input_ids.device)
        diag = None
        if cfg.diagnostics == "fisher" and step % cfg.diag_every == 0:
            diag = _fisher_diagnostic(engine, model, cfg, step, batch, rewards, probs, probe)
        t1 = time.perf_counter()
        tr = _train_on_batch(model, optimizer, batch, adv.reshape(-1), cfg, ref_ctx)
        t_train = time.perf_counter() - t1
        per_prompt = rewards.mean(dim=1).tolist()
        rec = {
            "kind": "train",
            "step": step,
            "reward_mean": float(rewards.mean()),
            "acc": float((rewards == 1).float().mean()),
        }
        for name in ("easy", "hard"):
            rec[f"acc_{name}"] = _mean(
                [a for a, p in zip(per_prompt, probs, strict=True) if labels[p.id] == name]
            )
        rec.update({k: v for k, v in astats.as_dict().items() if k != "n_groups"})
        rec.update(tr)
        rec["completion_len_mean"] = tr["tokens"] / batch.completion_ids.shape[0]
        rec["lr"] = optimizer.param_groups[0]["lr"]
        rec["data_position"] = step * cfg.prompts_per_step
        rec["problems"] = [p.id for p in probs]
        t_diag = 0.0
        if diag is not None:
            rec.update(diag)
            t_diag = diag["time_diag"]
        ema = rec["acc"] if ema is None else 0.9 * ema + 0.1 * rec["acc"]
        t_step = time.perf_counter() - t0
        rec.update(
            time_generate=t_gen,
            time_train=t_train,
            time_other=max(0.0, t_step - t_gen - t_train - t_diag),
            time_step=t_step,
            tokens_per_s=tr["tokens"] / t_gen if t_gen > 0 else None,
        )
        out.log(rec)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            ev = do_eval(step)
            last_eval = ev["eval_acc"] if ev else last_eval
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            elapsed = elapsed0 + time.perf_counter() - t_run
            save_checkpoint(
                out.path,
                model,
                optimizer,
                step,
                {
                    "data_position": step * cfg.prompts_per_step,
                    "ema_acc": ema,
                    "last_eval": last_eval,
                    "elapsed_s": elapsed,
                },
            )
        post = {"acc": f"{rec['acc']:.2f}", "ema": f"{ema:.2f}", "zv": rec["frac_zero_variance"]}
        if last_eval is not None:
            post["eval"] = f"{last_eval:.2f}"
        bar.set_postfix(post)
    bar.close()
    summary = summarize(out.path, cfg)
    summary.update(
        run_dir=str(out.path),
        slice_sizes=sizes,
        n_eval=len(held),
        setup_s=round(setup_s, 2),
        train_time_s=round(elapsed0 + time.perf_counter() - t_run, 2),
    )
    if cfg.diagnostics:
        diag_recs = [r for r in read_metrics(out.path) if "time_diag" in r]
        summary["diag_steps"] = len(diag_recs)
        summary["time_diag_s"] = (
            float(np.mean([r["time_diag"] for r in diag_recs])) if diag_recs else math.nan
        )
    if cfg.lora_r > 0 and hasattr(model, "save_pretrained"):
        model.save_pretrained(out.file("adapter"))
    out.write_text("table.md", _table(summary))
    out.finish(summary)
    return to_jsonable(summary)


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> list[dict]:
    """The records of ``metrics.jsonl`` (only ``kind`` ones unless kind is None)."""
    file = Path(run_dir) / "metrics.jsonl"
    recs = [json.loads(x) for x in file.read_text().splitlines() if x.strip()]
    return [r for r in recs if kind is None or r.get("kind") == kind]


def summarize(run_dir: str | Path, cfg: TrainConfig, window: int = SUMMARY_WINDOW) -> dict:
    """Start/end training accuracy (mean of the first/last ``window`` steps), evals, timing."""
    train = read_metrics(run_dir, "train")
    evals = read_metrics(run_dir, "eval")
    acc = [r["acc"] for r in train]
    w = max(1, min(window, len(acc) // 2 or 1))

    def avg(key, recs=train):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    tok = sum(r["tokens"] for r in train)
    gen = sum(r["time_generate"] for r in train)
    return {
        "normalizer": cfg.normalizer,
        "slice": cfg.slice,
        "seed": cfg.seed,
        "steps": len(train),
        "acc_start": float(np.mean(acc[:w])) if acc else math.nan,
        "acc_end": float(np.mean(acc[-w:])) if acc else math.nan,
        "eval_start": evals[0]["eval_acc"] if evals else None,
        "eval_end": evals[-1]["eval_acc"] if evals else None,
        "frac_zero_variance": avg("frac_zero_variance"),
        "time_generate_s": avg("time_generate"),
        "time_train_s": avg("time_train"),
        "time_forward_s": avg("time_forward"),
        "time_backward_s": avg("time_backward"),
        "time_other_s": avg("time_other"),
        "time_step_s": avg("time_step"),
        "tokens_per_s": tok / gen if gen else math.nan,
        "completion_len_mean": avg("completion_len_mean"),
    }


def summary_cells(s: dict) -> list:
    """Table cells of a run summary (or a mean of summaries): train accuracy start/end, eval
    start/end, zero-variance share, the time split and completion tokens/s. The time split ends
    with ``/ other`` when the summary has ``time_other_s``."""
    split = [s["time_generate_s"], s["time_forward_s"], s["time_backward_s"]]
    times = " / ".join(f"{t:.1f}" for t in split)
    if "time_other_s" in s:
        times += f" / {s['time_other_s']:.2f}"
    return [
        s["acc_start"],
        s["acc_end"],
        "-" if s["eval_start"] is None else f"{s['eval_start']:.3f}",
        "-" if s["eval_end"] is None else f"{s['eval_end']:.3f}",
        s["frac_zero_variance"],
        f"{s['time_step_s']:.1f} ({times})",
        s["tokens_per_s"],
    ]


def _table(s: dict) -> str:
    header = [
        "normalizer",
        "slice",
        "steps",
        "train acc start",
        "train acc end",
        "eval start",
        "eval end",
        "zero-var groups",
        "s/step (gen / fwd / bwd / other)",
        "tok/s",
    ]
    row = [s["normalizer"], s["slice"], s["steps"], *summary_cells(s)]
    return markdown_table(header, [row])
