"""The RLVR trainer: GRPO-style LoRA training of a causal LM with any registered normalizer.

One step (:func:`train_step`), top to bottom:

1. take ``prompts_per_step`` problems from the shuffled training pool (the order is a pure
   function of ``seed`` and the step, so a resumed run sees the same problems);
2. sample ``G`` completions per prompt in one batched call (``rollout.RolloutEngine``), seeded
   by ``(seed, step)``;
3. reward each completion with ``rewards.correctness_reward`` (1/0);
4. turn the ``(prompts, G)`` reward matrix into advantages with ``grponorm.normalizers`` -- the
   only source of advantages -- and count the zero-variance groups;
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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..normalizers import normalize_with_stats
from ..runs import Run, to_jsonable
from .checkpoint import create_run, load_checkpoint, open_run, save_checkpoint, truncate_metrics
from .config import TrainConfig, parse_options
from .models import reference_context
from .policy import Policy, load_policy
from .problems import build_problems, select_problems, step_indices, step_seed
from .rewards import batch_rewards
from .sinks import MetricSinks
from .summary import read_metrics, reward_fields, summarize, summary_table
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
    diagnostic: StepDiagnostic | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (LoRA init, user code)."""
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
    adv, astats = normalize_with_stats(rewards, cfg.normalizer, **loop.norm_options)  # (n, G)
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
    rec = {"kind": "train", "step": step,
           **reward_fields(rewards, [p.id for p in problems], loop.labels)}
    rec.update({k: v for k, v in astats.as_dict().items() if k != "n_groups"})
    rec.update(tr)
    rec["completion_len_mean"] = tr["tokens"] / batch.completion_ids.shape[0]
    rec["lr"] = loop.optimizer.param_groups[0]["lr"]
    rec["data_position"] = step * cfg.prompts_per_step
    rec["problems"] = [p.id for p in problems]
    rec["group_acc"] = [float(a) for a in (rewards == 1).float().mean(dim=1)]  # per problem
    t_diag = 0.0
    if diag is not None:
        rec.update(diag)
        t_diag = diag["time_diag"]
    t_step = time.perf_counter() - t0
    rec.update(
        time_generate=t_gen,
        time_train=t_train,
        time_other=max(0.0, t_step - t_gen - t_train - t_diag),
        time_step=t_step,
        tokens_per_s=tr["tokens"] / t_gen if t_gen > 0 else None,
    )
    return rec


def log_line(recs: list[dict], steps: int, last_eval: float | None) -> str:
    """One line for the steps in ``recs`` (means over them): what a run without a progress
    bar prints every ``log_every`` steps."""
    def mean(key):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    line = (f"step {recs[-1]['step']:>{len(str(steps))}}/{steps} | reward {mean('reward_mean'):.3f}"
            f" | acc {mean('acc'):.3f} | loss {mean('loss'):+.4f} | zero-var "
            f"{mean('frac_zero_variance'):.2f} | {mean('time_step'):.2f} s/step")
    return line + (f" | eval {last_eval:.3f}" if last_eval is not None else "")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW (no weight decay) or plain SGD (no momentum) at the constant ``cfg.lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def evaluate(policy: Policy, prompts, problems, labels, cfg: TrainConfig, step: int) -> dict:
    """Held-out accuracy of the current policy (``eval_temperature``, one sample each)."""
    t0 = time.perf_counter()
    sync_policy(policy.engine)
    batch = policy.engine.generate(
        prompts,
        1,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.eval_temperature,
        top_p=1.0,
        generator_seed=step_seed(cfg.seed, step, 2),
    )
    r = batch_rewards(batch.texts, [p.answer for p in problems])
    rec = {"kind": "eval", "step": step, "eval_acc": _mean(r), "eval_n": len(r)}
    for name in ("easy", "hard"):
        rec[f"eval_acc_{name}"] = _mean(
            [x for x, p in zip(r, problems, strict=True) if labels[p.id] == name]
        )
    rec["time_eval"] = time.perf_counter() - t0
    return rec


def run(cfg: TrainConfig, progress: bool = True,
        diagnostic: DiagnosticFactory | None = None) -> dict:
    """Train (or resume) one run; returns the summary (with ``run_dir``).

    Args:
        diagnostic: builds the step diagnostic that ``cfg.diagnostics`` names (the experiment
            layer passes ``grponorm.diagnostics.fisher.trainer_diagnostic`` for "fisher").
    """
    cfg.validate()
    cfg, out, has_ckpt = open_run(cfg)
    cfg.validate()
    if cfg.diagnostics and diagnostic is None:
        raise ValueError(f"diagnostics={cfg.diagnostics!r} needs its diagnostic: run it "
                         "through grponorm.experiments.rl_train.run (or `grponorm rl train`)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_setup = time.perf_counter()
    train_pool, held = build_problems(cfg)  # data errors surface before the model loads
    if not train_pool:
        raise ValueError("the training pool is empty (n_train=0 or no data)")
    policy = load_policy(cfg)
    pool, held, labels, sizes = select_problems(cfg, train_pool, held, policy, progress)
    held_prompts = policy.prompts(held)
    measure = diagnostic(cfg, policy, pool) if cfg.diagnostics else None

    if out is None:
        out = create_run(cfg)
    seed_everything(cfg.seed)
    model = policy.attach_lora()  # LoRA init draws from the seeded torch RNG
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    ref_ctx = (lambda: reference_context(model)) if cfg.kl_coef > 0 else None
    loop = Loop(cfg, policy, optimizer, pool, policy.prompts(pool), labels, ref_ctx,
                parse_options(cfg.normalizer_options), measure)

    start, extra = 0, {}
    if has_ckpt:
        state = load_checkpoint(out.path, model, optimizer)
        start, extra = int(state["step"]), state["extra"]
        truncate_metrics(out.file("metrics.jsonl"), start)
    elif cfg.resume:  # killed before the first checkpoint: start over in the same folder
        truncate_metrics(out.file("metrics.jsonl"), -1)
    elapsed0 = float(extra.get("elapsed_s", 0.0))
    t_run = time.perf_counter()
    setup_s = time.perf_counter() - t_setup

    sinks = MetricSinks(cfg.report_to, out.path, cfg.train_fields())

    def log(rec: dict) -> None:  # metrics.jsonl, then the sinks of report_to
        out.log(rec)
        sinks.log(rec)

    def do_eval(step):
        if not (cfg.eval_every and held):
            return None
        rec = evaluate(policy, held_prompts, held, labels, cfg, step)
        log(rec)
        return rec

    last_eval = extra.get("last_eval")
    if start == 0:
        ev = do_eval(0)
        last_eval = ev["eval_acc"] if ev else None
    bar = tqdm(range(start + 1, cfg.steps + 1), desc=f"rl {cfg.normalizer}/{cfg.slice}",
               disable=not progress, initial=start, total=cfg.steps)
    ema = extra.get("ema_acc")
    interval: list[dict] = []
    for step in bar:
        rec = train_step(loop, step)
        log(rec)
        interval.append(rec)
        ema = rec["acc"] if ema is None else 0.9 * ema + 0.1 * rec["acc"]
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            ev = do_eval(step)
            last_eval = ev["eval_acc"] if ev else last_eval
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            elapsed = elapsed0 + time.perf_counter() - t_run
            extra = {"data_position": step * cfg.prompts_per_step, "ema_acc": ema,
                     "last_eval": last_eval, "elapsed_s": elapsed}
            save_checkpoint(out.path, model, optimizer, step, extra)
        if not progress and cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            print(log_line(interval, cfg.steps, last_eval), flush=True)
            interval = []
        post = {"acc": f"{rec['acc']:.2f}", "ema": f"{ema:.2f}", "zv": rec["frac_zero_variance"]}
        if last_eval is not None:
            post["eval"] = f"{last_eval:.2f}"
        bar.set_postfix(post)
    bar.close()
    sinks.close()
    return _finish(cfg, out, model, sizes, len(held), setup_s,
                   elapsed0 + time.perf_counter() - t_run)


def _finish(cfg: TrainConfig, out: Run, model, sizes: dict, n_eval: int, setup_s: float,
            train_time_s: float) -> dict:
    """Write the summary, table and adapter of a finished run; return the summary."""
    summary = summarize(out.path, cfg)
    summary.update(run_dir=str(out.path), slice_sizes=sizes, n_eval=n_eval,
                   setup_s=round(setup_s, 2), train_time_s=round(train_time_s, 2))
    if cfg.diagnostics:
        diag_recs = [r for r in read_metrics(out.path) if "time_diag" in r]
        summary["diag_steps"] = len(diag_recs)
        summary["time_diag_s"] = (
            float(np.mean([r["time_diag"] for r in diag_recs])) if diag_recs else math.nan
        )
    if cfg.lora_r > 0 and hasattr(model, "save_pretrained"):
        model.save_pretrained(out.file("adapter"))
    out.write_text("table.md", summary_table(summary))
    out.finish(summary)
    return to_jsonable(summary)
