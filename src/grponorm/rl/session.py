"""The run layer: everything one RLVR run does around its training steps, for every backend.

The native trainer (``rl.trainer``) and the TRL backend (``integrations.trl_backend``) differ
only in who samples and updates. Everything else is written here, once:

1. :func:`prepare` -- the config check, the problems (training pool, held-out eval, slice
   labels), the policy, the run folder and whether it resumes;
2. :func:`train_record` -- the ``kind="train"`` record of one step (one schema, both backends);
3. :class:`RunBook` -- per step: metrics.jsonl and the sinks, the EMA of the training accuracy,
   the eval cadence (step 0, every ``eval_every`` steps and the last), the log line and the
   progress bar; the bookkeeping a checkpoint carries (:meth:`RunBook.state`);
4. :func:`finish` -- summary, table and adapter.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..hardware import available_cores, decide_threads
from ..normalizers.gain import gains, score_norm_proxy, variance_proxy
from ..runs import Run, to_jsonable
from .checkpoint import create_run, open_run, truncate_metrics
from .choices import DIFFICULTIES
from .config import TrainConfig
from .models import resolved_dtype
from .policy import Policy, load_policy
from .problems import build_problems, select_problems, step_seed
from .random_model import random_model_facts
from .rewards import batch_rewards
from .shapes import is_random
from .sinks import MetricSinks
from .summary import reward_fields, summarize, summary_table

__all__ = [
    "Prepared",
    "RunBook",
    "evaluate",
    "finish",
    "log_line",
    "prepare",
    "resume_metrics",
    "seed_everything",
    "sync_policy",
    "train_record",
]


@dataclass
class Prepared:
    """A run ready to train: what :func:`prepare` loaded (the backend adds model and optimizer)."""

    cfg: TrainConfig  # the run's config (the saved one when resuming)
    out: Run  # its folder
    resuming: bool  # cfg.resume names this folder (a checkpoint may or may not exist)
    has_checkpoint: bool  # the folder holds a native checkpoint.pt
    policy: Policy  # model, tokenizer, rollout engine, prompt format
    pool: list  # training problems (after slicing)
    held: list  # held-out eval problems
    held_prompts: list[str]  # their chat prompts
    labels: dict[str, str]  # problem id -> easy / hard
    sizes: dict  # slice sizes (recorded in the summary)
    t_setup: float  # perf_counter() when setup began
    threads: tuple[int, str]  # torch threads applied, and why (recorded in the summary)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (LoRA init, user code)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (user code may use it)
    torch.manual_seed(seed)


def prepare(cfg: TrainConfig, progress: bool, *,
            check: Callable[[TrainConfig], None] | None = None,
            policy_cfg: Callable[[TrainConfig], TrainConfig] | None = None,
            create: Callable[[TrainConfig], Run] = create_run) -> Prepared:
    """Check ``cfg``, load problems and policy, and open the run folder (new or resumed).

    Args:
        check: the backend's own check of the (saved, when resuming) config, run before
            anything loads (TRL: the settings it cannot honour).
        policy_cfg: the config the policy is loaded with (TRL: one GPU per process).
        create: makes a new run's folder (TRL: the main process makes it, the others are told).
    """
    cfg, out, has_ckpt = open_run(cfg)
    cfg.validate()
    if check is not None:
        check(cfg)
    threads = run_threads(cfg.threads)
    torch.set_num_threads(threads[0])
    t_setup = time.perf_counter()
    train_pool, held = build_problems(cfg)  # data errors surface before the model loads
    if not train_pool:
        raise ValueError("the training pool is empty (n_train=0 or no data)")
    policy = load_policy(policy_cfg(cfg) if policy_cfg else cfg)
    pool, held, labels, sizes = select_problems(cfg, train_pool, held, policy, progress)
    resuming = out is not None
    if out is None:  # created only now: bad data or a bad model leaves no empty folder
        out = create(cfg)
    return Prepared(cfg, out, resuming, has_ckpt, policy, pool, held, policy.prompts(held),
                    labels, sizes, t_setup, threads)


def run_threads(requested: int) -> tuple[int, str]:
    """``(torch threads, reason)`` of a run: ``requested``, or for 0 the cores this process
    may use (affinity and cgroup quota), at most ``hardware.MAX_AUTO_THREADS``. Deterministic
    per machine (no load average), so a rerun computes with the same thread count; the CLI sets
    ``OMP_WAIT_POLICY=PASSIVE`` so that threads sharing busy cores sleep instead of spinning."""
    return decide_threads(requested, available_cores(), None, os.environ.get("OMP_WAIT_POLICY"))


def resume_metrics(prep: Prepared, start: int | None) -> None:
    """Drop the metric lines a resumed run will write again: those after the checkpoint of
    step ``start``, or all of them when the run was killed before its first (``None``)."""
    if prep.resuming:
        truncate_metrics(prep.out.file("metrics.jsonl"), -1 if start is None else start)


def sync_policy(engine) -> None:
    """Hand the current weights to an engine that keeps its own copy (vLLM) before it samples;
    engines that run the training model itself have nothing to do."""
    sync = getattr(engine, "sync_weights", None)
    if callable(sync):
        sync()


def _mean(xs) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def evaluate(policy: Policy, prompts, problems, labels, cfg: TrainConfig, step: int) -> dict:
    """Held-out accuracy of the current policy (``eval_temperature``, one sample each); the
    engines sample in eval mode themselves (``rollout.eval_mode``)."""
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
    for name in DIFFICULTIES:
        rec[f"eval_acc_{name}"] = _mean(
            [x for x, p in zip(r, problems, strict=True) if labels[p.id] == name]
        )
    rec["time_eval"] = time.perf_counter() - t0
    return rec


def train_record(cfg: TrainConfig, step: int, rewards: torch.Tensor, problem_ids: list[str],
                 labels: dict[str, str], astats, update: dict, tokens: float, lr: float | None,
                 times: dict, diag: dict | None = None, adv: torch.Tensor | None = None,
                 batch=None) -> dict:
    """The ``kind="train"`` record of one step, the same schema for every backend.

    Args:
        rewards: ``(prompts, G)`` rewards of the step's groups.
        astats: the step's ``AdvantageStats``.
        update: the backend's update fields (loss, grad_norm, clip_frac, kl, tokens, ...).
        tokens: completion tokens sampled in the step.
        times: ``time_generate``, ``time_train``, ``time_other``, ``time_step`` (seconds).
        diag: fields of the step diagnostic, when one ran.
        adv: ``(prompts, G)`` advantages trained on: each group's gain over ``none``
            (``normalizers.gain.gains``) is recorded beside its success rate (``group_acc``),
            the curve of ``grponorm normalizers show`` measured on the run.
        batch: the step's rollout batch; when its engine gave ``logprobs`` and ``sum_pi_sq``
            (the decode engine), verl's gradient-variance proxy ``E[A^2 W]``
            (``normalizers.gain.variance_proxy``) is recorded beside ``frac_flat`` and
            ``frac_zero_adv`` (the flat groups, the groups with all-zero advantages:
            ``normalizers.AdvantageStats``).
    """
    rec: dict[str, Any] = {"kind": "train", "step": step,
                           **reward_fields(rewards, problem_ids, labels)}
    rec.update({k: v for k, v in astats.as_dict().items() if k != "n_groups"})
    if adv is not None and batch is not None and batch.sum_pi_sq is not None \
            and batch.logprobs is not None:
        m = batch.completion_mask.float().cpu()  # (B, C)
        w = score_norm_proxy(batch.logprobs.float().cpu().numpy(),
                             batch.sum_pi_sq.float().cpu().numpy(), m.numpy())  # (B,)
        rec["variance_proxy"] = variance_proxy(adv.detach().float().cpu().numpy().reshape(-1),
                                               w, valid=m.sum(dim=1).numpy() > 0)
    rec.update(update)
    rec["completion_len_mean"] = tokens / rewards.numel()
    rec["lr"] = lr
    rec["data_position"] = step * cfg.prompts_per_step
    rec["problems"] = list(problem_ids)
    rec["group_acc"] = [float(a) for a in (rewards == 1).float().mean(dim=1)]  # per problem
    if adv is not None:
        a = adv.detach().float().cpu().numpy().reshape(rewards.shape)
        rec["group_gain"] = [float(x) for x in gains(a, rewards.float().numpy())]  # (prompts,)
    if diag is not None:
        rec.update(diag)
    t_gen = times["time_generate"]
    rec.update(time_generate=t_gen, time_train=times["time_train"],
               time_other=times["time_other"], time_step=times["time_step"],
               tokens_per_s=tokens / t_gen if t_gen > 0 else None)
    return rec


def log_line(recs: list[dict], steps: int, last_eval: float | None) -> str:
    """One line for the steps in ``recs`` (means over them): what a run without a progress
    bar prints every ``log_every`` steps. ``flat``: the share of flat groups (all rewards
    equal), ``zero-adv``: of groups whose advantages are all 0 (they differ for normalizers
    that move flat groups)."""
    def mean(key):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    line = (f"step {recs[-1]['step']:>{len(str(steps))}}/{steps} | reward {mean('reward_mean'):.3f}"
            f" | acc {mean('acc'):.3f} | loss {mean('loss'):+.4f} | flat "
            f"{mean('frac_flat'):.2f} | zero-adv {mean('frac_zero_adv'):.2f} | "
            f"{mean('time_step'):.2f} s/step")
    return line + (f" | eval {last_eval:.3f}" if last_eval is not None else "")


class RunBook:
    """The per-step bookkeeping of one run: records, EMA, eval cadence, log line, progress.

    Args:
        prep: the prepared run.
        start: steps already done (a resumed run), 0 for a new one.
        state: the bookkeeping saved with the checkpoint of step ``start`` (:meth:`state`).
        progress: show a tqdm bar (else one :func:`log_line` every ``log_every`` steps).
        sinks: also send records to ``cfg.report_to`` (TensorBoard, W&B); the TRL backend
            leaves that to TRL's own ``report_to``.
        tag: appended to the bar's label (e.g. " [trl]").
    """

    def __init__(self, prep: Prepared, start: int, state: dict | None, progress: bool, *,
                 sinks: bool = True, tag: str = ""):
        cfg = prep.cfg
        self.prep, self.cfg, self.out = prep, cfg, prep.out
        state = state or {}
        self.ema: float | None = state.get("ema_acc")
        self.last_eval: float | None = state.get("last_eval")
        self._elapsed0 = float(state.get("elapsed_s", 0.0))
        self._t_run = time.perf_counter()
        self.progress = progress
        self.interval: list[dict] = []  # records since the last log line
        self.sinks = MetricSinks(cfg.report_to if sinks else [], self.out.path,
                                 cfg.train_fields())
        self.bar = tqdm(total=cfg.steps, initial=start, disable=not progress,
                        desc=f"rl {cfg.normalizer}/{cfg.slice}{tag}")

    def log(self, rec: dict) -> None:
        """metrics.jsonl, then the sinks of ``report_to``."""
        self.out.log(rec)
        self.sinks.log(rec)

    def evaluate(self, step: int) -> dict | None:
        """Held-out eval at ``step`` (recorded); None when the run has no eval."""
        p = self.prep
        if not (self.cfg.eval_every and p.held):
            return None
        rec = evaluate(p.policy, p.held_prompts, p.held, p.labels, self.cfg, step)
        self.log(rec)
        self.last_eval = rec["eval_acc"]
        return rec

    def begin(self, start: int) -> None:
        """The base model's eval (step 0) of a run that starts from scratch."""
        if start == 0:
            self.evaluate(0)

    def step_done(self, rec: dict) -> None:
        """Record one finished step; eval, log line and bar as the settings ask."""
        cfg, step = self.cfg, rec["step"]
        self.log(rec)
        self.ema = rec["acc"] if self.ema is None else 0.9 * self.ema + 0.1 * rec["acc"]
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            self.evaluate(step)
        self.interval.append(rec)
        if not self.progress and cfg.log_every and (step % cfg.log_every == 0
                                                    or step == cfg.steps):
            print(log_line(self.interval, cfg.steps, self.last_eval), flush=True)
            self.interval = []
        post = {"acc": f"{rec['acc']:.2f}", "ema": f"{self.ema:.2f}",
                "flat": rec["frac_flat"], "zero_adv": rec["frac_zero_adv"]}
        if self.last_eval is not None:
            post["eval"] = f"{self.last_eval:.2f}"
        self.bar.update(1)
        self.bar.set_postfix(post)

    def elapsed(self) -> float:
        """Training seconds of the run so far, resumed parts included."""
        return self._elapsed0 + time.perf_counter() - self._t_run

    def state(self, step: int) -> dict:
        """The bookkeeping a checkpoint of ``step`` carries (restored by ``RunBook(state=)``)."""
        return {"data_position": step * self.cfg.prompts_per_step, "ema_acc": self.ema,
                "last_eval": self.last_eval, "elapsed_s": self.elapsed()}

    def close(self) -> None:
        """Close the bar and the sinks (call it in ``finally``: a crash closes them too)."""
        self.bar.close()
        self.sinks.close()


def finish(prep: Prepared, model, setup_s: float, train_time_s: float,
           extra: dict | None = None) -> dict:
    """Write the summary, table and adapter of a finished run; return the summary.

    Args:
        extra: backend fields appended to the summary (diagnostic counts, ``backend``).
    """
    cfg, out = prep.cfg, prep.out
    summary = summarize(out.path, cfg)
    summary.update(run_dir=str(out.path), slice_sizes=prep.sizes, n_eval=len(prep.held),
                   setup_s=round(setup_s, 2), train_time_s=round(train_time_s, 2))
    dtype, dtype_reason = resolved_dtype(cfg.model_config())
    threads, threads_reason = prep.threads
    summary.update(dtype=dtype, dtype_reason=dtype_reason, threads=threads,
                   threads_reason=threads_reason)
    if is_random(cfg.model):  # a random-weight model of a named shape: say which, EOS on/off
        summary.update(random_model_facts(cfg.model))
    summary.update(extra or {})
    if cfg.lora_r > 0 and hasattr(model, "save_pretrained"):
        model.save_pretrained(out.file("adapter"))
    out.write_text("table.md", summary_table(summary))
    out.finish(summary)
    return to_jsonable(summary)
