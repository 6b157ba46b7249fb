"""The RLVR trainer: GRPO-style LoRA training of a causal LM with any registered normalizer.

One step (:func:`train_step`), top to bottom:

1. take ``prompts_per_step`` problems from the shuffled training pool (the order is a pure
   function of ``seed`` and the step, so a resumed run sees the same problems);
2. sample ``G`` completions per prompt in one batched call (``rollout.RolloutEngine``), seeded
   by ``(seed, step)``;
3. reward each completion with ``rewards.correctness_reward`` (1/0);
4. turn the ``(prompts, G)`` reward matrix into advantages with ``grponorm.normalizers`` -- the
   only source of advantages -- and count the flat groups and those left with all-zero
   advantages;
5. (every ``diag_every`` steps, when a diagnostic is given) measure the current policy before
   the update, e.g. ``grponorm.diagnostics.fisher.trainer_diagnostic``;
6. ``updates_per_batch`` optimizer updates on ``loss.policy_gradient_loss`` (``update.py``);
7. return one JSON record (``kind="train"``) for ``metrics.jsonl``.

:func:`run` loads everything, loops over the steps, evaluates on held-out problems every
``eval_every`` steps (``kind="eval"``, step = updates done so far, 0 = the base model), writes
atomic checkpoints every ``checkpoint_every`` steps (``checkpoint.py``) and the summary
(``summary.py``). ``resume=DIR`` continues a run from its last checkpoint; on CPU the resumed
metrics equal an uninterrupted run's except for the timing fields (``summary.TIMING_FIELDS``).
A diagnostic draws no global random numbers and never writes ``.grad`` or the optimizer, so the
training metrics do not depend on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..normalizers import NormalizerContext, make_state, normalize_with_stats
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, parse_options
from .models import reference_context
from .policy import Policy
from .problems import step_indices, step_seed
from .rewards import batch_rewards
from .session import (
    RunBook,
    finish,
    prepare,
    resume_metrics,
    seed_everything,
    sync_policy,
    train_record,
)
from .summary import read_metrics
from .update import train_on_batch

__all__ = ["StepDiagnostic", "TrainConfig", "run", "train_step"]

#: ``(step, batch, rewards, problems) -> record fields`` measured before the step's update.
StepDiagnostic = Callable[[int, Any, torch.Tensor, list], dict]
#: Builds a :data:`StepDiagnostic` once the policy and the training pool are known.
DiagnosticFactory = Callable[[TrainConfig, Policy, list], StepDiagnostic]


@dataclass
class Loop:
    """What every step of one run needs (built once by :func:`run`)."""

    cfg: TrainConfig
    policy: Policy
    optimizer: torch.optim.Optimizer
    pool: list  # training problems (after slicing)
    prompts: list[str]  # their chat prompts
    labels: dict[str, str]  # problem id -> easy / hard
    ref_ctx: Callable | None  # reference-model context for the KL term (None: no KL)
    norm_options: dict  # options of cfg.normalizer
    norm_state: Any = None  # the normalizer's state across steps (None: it keeps none)
    diagnostic: StepDiagnostic | None = None


def train_step(loop: Loop, step: int) -> dict:
    """One training step (module docstring, 1-7); returns its metrics record."""
    cfg, engine = loop.cfg, loop.policy.engine
    t0 = time.perf_counter()
    # 1-2. this step's problems and their rollouts
    idx = step_indices(len(loop.pool), step, cfg.prompts_per_step, cfg.seed)
    problems = [loop.pool[i] for i in idx]
    sync_policy(engine)
    batch = engine.generate(
        [loop.prompts[i] for i in idx],
        cfg.G,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        generator_seed=step_seed(cfg.seed, step, 1),
    )
    t_gen = time.perf_counter() - t0
    # 3-4. rewards and advantages
    refs = [p.answer for p in problems for _ in range(cfg.G)]
    rewards = torch.tensor(batch_rewards(batch.texts, refs)).view(len(problems), cfg.G)
    context = normalizer_context(cfg, loop.norm_options, batch, rewards, problems)
    adv, astats = normalize_with_stats(rewards, cfg.normalizer, context=context,
                                       state=loop.norm_state, **loop.norm_options)  # (n, G)
    adv = adv.to(batch.input_ids.device)
    # 5. diagnostics on the policy before the update
    diag = None
    if loop.diagnostic is not None and step % cfg.diag_every == 0:
        diag = loop.diagnostic(step, batch, rewards, problems)
    # 6. the update
    t1 = time.perf_counter()
    model = loop.policy.model
    tr = train_on_batch(model, loop.optimizer, batch, adv.reshape(-1), cfg, loop.ref_ctx)
    t_train = time.perf_counter() - t1
    # 7. the record
    t_diag = diag["time_diag"] if diag is not None else 0.0
    t_step = time.perf_counter() - t0
    times = dict(time_generate=t_gen, time_train=t_train,
                 time_other=max(0.0, t_step - t_gen - t_train - t_diag), time_step=t_step)
    rec = train_record(cfg, step, rewards, [p.id for p in problems], loop.labels, astats, tr,
                       tr["tokens"], loop.optimizer.param_groups[0]["lr"], times, diag, adv,
                       batch)
    return rec


def normalizer_context(cfg: TrainConfig, options: dict, batch, rewards: torch.Tensor,
                       problems: list) -> NormalizerContext | None:
    """What the normalizer asks for beyond the rewards (``get_spec(...).needs``), built by
    :meth:`NormalizerContext.build`: completion lengths ``(n, G)`` in tokens, the problem ids
    ``(n,)`` (stable across steps: a stateful normalizer keys its state by them), and the reward
    components ``(n, G, 1)`` (this trainer has one reward, correctness)."""
    n, G = rewards.shape
    return NormalizerContext.build(
        cfg.normalizer, options, caller="the native trainer",
        lengths=lambda: batch.completion_mask.sum(dim=1).view(n, G).cpu(),  # (n, G)
        prompt_ids=lambda: [p.id for p in problems],  # (n,)
        components=lambda: rewards.unsqueeze(-1),  # (n, G, 1)
    )


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW (no weight decay) or plain SGD (no momentum) at the constant ``cfg.lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def run(cfg: TrainConfig, progress: bool = True,
        diagnostic: DiagnosticFactory | None = None) -> dict:
    """Train (or resume) one run; returns the summary (with ``run_dir``).

    Args:
        diagnostic: builds the step diagnostic that ``cfg.diagnostics`` names (the experiment
            layer passes ``grponorm.diagnostics.fisher.trainer_diagnostic`` for "fisher").
    """
    if cfg.diagnostics and diagnostic is None:
        raise ValueError(f"diagnostics={cfg.diagnostics!r} needs its diagnostic: run it "
                         "through grponorm.experiments.rl_train.run (or `grponorm rl train`)")
    prep = prepare(cfg, progress)
    cfg, policy = prep.cfg, prep.policy
    measure = diagnostic(cfg, policy, prep.pool) if cfg.diagnostics else None

    seed_everything(cfg.seed)
    model = policy.attach_lora()  # LoRA init draws from the seeded torch RNG
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    ref_ctx = (lambda: reference_context(model)) if cfg.kl_coef > 0 else None
    options = parse_options(cfg.normalizer_options)
    loop = Loop(cfg, policy, optimizer, prep.pool, policy.prompts(prep.pool), prep.labels,
                ref_ctx, options, make_state(cfg.normalizer, **options), measure)

    start, state = 0, {}
    if prep.has_checkpoint:
        ckpt = load_checkpoint(prep.out.path, model, optimizer)
        start, state = int(ckpt["step"]), ckpt["extra"]
        if loop.norm_state is not None:  # a stateful normalizer continues where it was
            if "normalizer_state" not in state:
                raise ValueError(f"{prep.out.path}: the checkpoint holds no state of the "
                                 f"stateful normalizer {cfg.normalizer!r}")
            loop.norm_state.load_state_dict(state["normalizer_state"])
    resume_metrics(prep, start if prep.has_checkpoint else None)
    setup_s = time.perf_counter() - prep.t_setup

    book = RunBook(prep, start, state, progress)
    try:
        book.begin(start)
        for step in range(start + 1, cfg.steps + 1):
            book.step_done(train_step(loop, step))
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                extra = book.state(step)
                if loop.norm_state is not None:
                    extra["normalizer_state"] = loop.norm_state.state_dict()
                save_checkpoint(prep.out.path, model, optimizer, step, extra)
    finally:
        book.close()
    extra = {}
    if cfg.diagnostics:
        diag_recs = [r for r in read_metrics(prep.out.path) if "time_diag" in r]
        extra["diag_steps"] = len(diag_recs)
        extra["time_diag_s"] = (
            float(np.mean([r["time_diag"] for r in diag_recs])) if diag_recs else math.nan
        )
    return finish(prep, model, setup_s, book.elapsed(), extra)
