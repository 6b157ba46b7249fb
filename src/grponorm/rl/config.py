"""``TrainConfig``: every setting of one RLVR run, its validation and option parsing.

Experiments that train (``rl compare``, ``diag fisher``) extend this class instead of copying
its fields; ``HIDDEN`` names the fields such a subclass sets per run (they get no flag).
"""

from __future__ import annotations

import importlib.util
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..normalizers import check_options, get_spec, make_state, normalize, probe_context
from ..normalizers.registry import ORACLE_FIELDS
from . import data as rl_data
from .choices import (
    Attention,
    Backend,
    Diagnostic,
    OldLogprobs,
    Optimizer,
    Rollout,
    Slice,
    SliceRule,
    Task,
)
from .loss import AGGREGATIONS
from .models import ModelConfig, default_cache_dir
from .sinks import INSTALL, missing_sinks

__all__ = ["TrainConfig", "load_saved_config", "parse_options", "singletons_learn"]

SINKS = tuple(INSTALL)  # metric sinks besides metrics.jsonl
#: slice_by="auto": the rule each task's problems carry the information for.
DEFAULT_SLICE_RULE = {"arithmetic": "level", "gsm8k": "steps"}


@dataclass
class TrainConfig:
    """Settings of one RLVR training run (``grponorm rl train``)."""

    HIDDEN: ClassVar[tuple[str, ...]] = ()  # fields a subclass sets per run (no flag)

    model: str = "embedded"  # HF id, local model folder, .gguf file, or embedded (SmolLM2-135M)
    dtype: str = "auto"  # auto (bf16 on CUDA and native-bf16 CPUs, else fp32), bfloat16, float32
    lora_r: int = 16  # LoRA rank (0 = full fine-tuning)
    lora_alpha: float = 32.0  # LoRA alpha (update scaled by alpha / r)
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")  # modules given adapters
    task: Task = "arithmetic"  # arithmetic or gsm8k
    levels: list = field(default_factory=lambda: ["add1", "mul1"])  # arithmetic presets pooled
    gsm8k_dir: str = ""  # local GSM8K folder ("" = $GRPONORM_GSM8K_DIR, else the hub)
    slice: Slice = "all"  # train on all, easy or hard problems
    slice_by: SliceRule = "auto"  # level (first level easy), steps, pass_rate, judge; auto: task's
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
    lr: float = 5e-4  # learning rate of the optimizer (constant)
    optimizer: Optimizer = "adamw"  # adamw (no weight decay) or sgd (plain, no momentum)
    max_grad_norm: float = 1.0  # gradient clipping threshold (0 = none)
    max_new_tokens: int = 12  # completion length limit
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts
    loss_agg: str = "seq_mean"  # seq_mean (GRPO) or token_sum (Dr. GRPO, / max_new_tokens)
    kl_coef: float = 0.0  # k3 KL penalty to the base model (0 = none)
    clip_eps: float = 0.2  # PPO clip range of the importance ratio (0 = none)
    updates_per_batch: int = 1  # optimizer updates per sampled batch (>1 uses the clip)
    micro_batch: int = 0  # rows per forward/backward chunk, whole groups (0 = whole batch)
    rollout: Rollout = "decode"  # rollout engine: decode (own loop), generate (HF) or vllm
    share_prompt: bool = True  # run each prompt once per group (KV cache shared; same math)
    share_prefix: bool = True  # run the token prefix common to a batch's prompts once (same math)
    old_logprobs: OldLogprobs = "auto"  # updates_per_batch>1: auto (engine's), rollout, recompute
    attention: Attention = "auto"  # rollout/log-prob attention: gqa (no KV copy), model, auto
    eval_every: int = 10  # held-out eval every N steps (and at start and end; 0 = never)
    eval_temperature: float = 0.0  # eval sampling temperature (0 = greedy)
    checkpoint_every: int = 10  # checkpoint every N steps (0 = only at the end)
    log_every: int = 1  # without a progress bar: one log line per N steps (0 = none)
    seed: int = 0  # training seed (LoRA init, sampling, data order)
    threads: int = 0  # torch CPU threads (0 = auto: the cores this process may use, at most 8)
    device: str = "auto"  # auto (CUDA GPU when present, else CPU), cpu, cuda or cuda:N
    out: str = "runs"  # root folder for run outputs
    run_dir: str = ""  # exact run folder ("" = <out>/rl_train/<timestamp>)
    resume: str = ""  # run folder to resume from its last checkpoint ("" = new run)
    cache_dir: str = ""  # model/pass-rate cache ("" = $GRPONORM_CACHE or ~/.cache/grponorm)
    diagnostics: Diagnostic = ""  # "fisher" computes per-prompt Fisher traces and reward variances
    diag_every: int = 1  # run the diagnostics every k steps (before that step's update)
    diag_probe: int = 0  # 0 = on the step's training groups; n = fixed probe set of n problems
    backend: Backend = "native"  # native (grponorm's trainer) or trl (TRL's GRPOTrainer)
    report_to: list = field(default_factory=list)  # also log to: tensorboard, wandb (JSONL always)

    def __post_init__(self) -> None:
        if self.slice_by == "auto":  # a default that follows the task
            self.slice_by = DEFAULT_SLICE_RULE.get(self.task, "auto")

    def model_config(self) -> ModelConfig:
        """The :class:`~grponorm.rl.models.ModelConfig` of this run's policy."""
        return ModelConfig(
            model=self.model,
            dtype=self.dtype,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_targets=tuple(self.lora_targets),
            device=self.device,
            **({"cache_dir": self.cache_dir} if self.cache_dir else {}),
        )

    def cache_path(self) -> Path:
        """The model / pass-rate cache folder (``cache_dir`` or the default)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def train_fields(self) -> dict[str, Any]:
        """This config's :class:`TrainConfig` fields (for a subclass: what one run inherits)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainConfig)}

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work (before anything is loaded)."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        for name, choices in literal_fields(type(self)).items():
            value = getattr(self, name)
            need(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}; "
                                   f"got {value!r}")
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
        need(
            self.rollout != "vllm" or importlib.util.find_spec("vllm") is not None,
            "rollout=vllm needs vllm (GPU only): pip install vllm",
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
            "log_every",
            "micro_batch",
            "threads",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0; got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0; got {self.lr}")
        need(self.diag_every >= 1, f"diag_every must be >= 1; got {self.diag_every}")
        need(self.diag_probe >= 0, f"diag_probe must be >= 0; got {self.diag_probe}")
        need(
            self.backend != "trl" or importlib.util.find_spec("trl") is not None,
            "backend=trl needs TRL: pip install 'grponorm[trl]'",
        )
        bad = [s for s in self.report_to if s not in SINKS]
        need(not bad, f"report_to: unknown sink(s) {bad}; known: {', '.join(SINKS)}")
        missing = missing_sinks(self.report_to)
        need(not missing, "report_to needs " + "; ".join(f"{m}: {INSTALL[m]}" for m in missing))
        need(self.temperature > 0, "temperature must be > 0 for training rollouts")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1]; got {self.top_p}")
        need(self.kl_coef >= 0 and self.clip_eps >= 0, "kl_coef and clip_eps must be >= 0")
        need(
            self.kl_coef == 0 or self.lora_r > 0,
            "kl_coef > 0 needs LoRA (lora_r > 0): the reference is the adapters-off model",
        )
        options = parse_options(self.normalizer_options)
        check_options(self.normalizer, options)  # the registry's one check (CLI, TRL, verl)
        oracle = [f for f in get_spec(self.normalizer).needs(options) if f in ORACLE_FIELDS]
        need(not oracle, f"normalizer {self.normalizer!r} needs {', '.join(oracle)}, the "
             "bandit's oracle context (a question's true curvature), which a language model "
             "does not have; run it with `grponorm bandit sampled`")
        if self.G == 1:
            need(singletons_learn(self.normalizer, options),
                 f"G=1: every group is a single completion, and normalizer "
                 f"{self.normalizer!r} gives a singleton group zero advantage, so the run "
                 "would never learn; sample G >= 2 completions per prompt")


#: The probe of :func:`singletons_learn`: two singleton groups, one wrong and one right.
SINGLETON_PROBE = ((0.0,), (1.0,))


def singletons_learn(normalizer: str, options: dict[str, Any]) -> bool:
    """Whether ``normalizer`` gives a batch of singleton groups (``G = 1``) any non-zero
    advantage: one call on :data:`SINGLETON_PROBE` ``(2, 1)``, with synthetic context of the
    right shapes (:func:`grponorm.normalizers.probe_context`: lengths, prompt ids, components)
    and a fresh state, so normalizers that need context or state are probed like the others.

    Raises:
        ValueError: the normalizer refuses singleton groups itself (``rloo``, ``grpo_passk``:
            "needs G >= 2"), which refuses ``G = 1`` as well.
    """
    probe = np.array(SINGLETON_PROBE)  # (2, 1)
    adv = normalize(probe, normalizer, context=probe_context(normalizer, options, probe),
                    state=make_state(normalizer, **options), **options)
    return bool(np.any(adv != 0))


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


def load_saved_config(run_dir: Path, cls=TrainConfig):
    """The config a run folder was started with (``config.json``), as ``cls``."""
    file = Path(run_dir) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"cannot resume: {file} not found (is {run_dir} a run folder?)")
    saved = json.loads(file.read_text())["config"]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(saved) - names)
    if unknown:
        raise ValueError(f"{file}: settings {unknown} are not {cls.__name__} fields (saved by "
                         "another grponorm version?); a run is only resumed with every setting "
                         "it was started with")
    cfg = cls(**saved)
    if isinstance(cfg.lora_targets, list):
        cfg.lora_targets = tuple(cfg.lora_targets)
    return cfg


def literal_fields(cls) -> dict[str, tuple]:
    """``{field: allowed values}`` for the fields of dataclass ``cls`` typed with a ``Literal``
    (the tables of ``rl.choices``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls)
            if typing.get_origin(hints.get(f.name)) is typing.Literal}
