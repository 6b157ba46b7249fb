"""``grponorm rl train --backend trl``: one :class:`TrainConfig` run through TRL.

The run is :func:`grponorm.rl.trainer.run`'s: the same run layer (``grponorm.rl.session``:
preparation, record, eval cadence, EMA, log line, progress, summary). Only the engine that
samples and updates is TRL's (:class:`~grponorm.integrations.trl.NormalizedGRPOTrainer`, a real
``GRPOTrainer``), and this module holds only the TRL-specific mapping: :data:`TRL_MAPPING` says
for every :class:`TrainConfig` field how it maps to TRL or why it is refused.

* the same problems: ``build_problems`` + ``select_problems`` with the policy of ``load_policy``,
  prompts from ``policy.prompts``; the training rows are laid out in the native trainer's step
  order (``step_indices`` of every step, one after the other) and TRL reads them in that order
  (``shuffle_dataset=False``: TRL's ``RepeatSampler`` then walks the rows as given), so TRL's
  step ``s`` trains on the native step ``s``'s prompts -- checked at every step;
* the same policy at step 0: the model from ``load_policy``, its LoRA adapters attached by
  ``policy.attach_lora()`` after ``seed_everything(seed)`` (the native initialization), handed to
  TRL as a ``PeftModel``;
* the same reward (``correctness_reward`` against the ``answer`` column) and advantages (the
  registry normalizer ``cfg.normalizer`` on whole groups of the gathered rewards);
* the same files: ``config.json``, ``metrics.jsonl`` (``kind="train"`` per step, ``kind="eval"``
  at step 0, every ``eval_every`` steps and at the end), ``summary.json``
  (``rl.summary.summarize``), ``table.md``, ``adapter/``; TRL's own ``output_dir`` (its
  checkpoints) is ``<run>/trl``.

What differs from the native trainer: the rollouts are TRL's (transformers ``generate``, or vLLM
with ``rollout="vllm"``), which puts each prompt G times into the batch, so completions are not
the native ones even at equal seeds; the training records lack the fields TRL cannot give
(:data:`NATIVE_ONLY_FIELDS`) and carry TRL's token ``entropy``.

Held-out evaluation: :func:`grponorm.rl.session.evaluate` on the model TRL is training, with the
engine of ``rollout`` built by ``load_policy`` (``decode`` or ``generate``; ``vllm`` evaluates
with ``decode``, since TRL owns the vLLM instance), greedy at ``eval_temperature=0``: the same
function, prompts and seeds as the native backend, so eval numbers are comparable across
backends. It runs on the main process only.

Progress: the run layer's tqdm bar, or without it its log line every ``log_every`` steps.
Several processes (``accelerate launch``): the main process creates the run folder and names it
to the others, writes every record and runs the evals; each process loads its policy onto
``cuda:$LOCAL_RANK`` (not run here: no GPU).

Resume: ``resume=DIR`` continues from the last TRL checkpoint in ``DIR/trl``
(``resume_from_checkpoint``; TRL saves model, optimizer, scheduler, RNG states and the data
position every ``checkpoint_every`` steps and at the end); metric lines after that checkpoint
are dropped first. A run killed before its first checkpoint starts over in the same folder.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..rl.checkpoint import create_run
from ..rl.config import TrainConfig, parse_options
from ..rl.problems import step_indices
from ..rl.rewards import correctness_reward
from ..rl.session import Prepared, RunBook, finish, prepare, resume_metrics, seed_everything
from ..rl.session import train_record as session_record
from ..runs import Run
from .trl import NormalizedGRPOTrainer

__all__ = [
    "NATIVE_ONLY_FIELDS",
    "TRL_MAPPING",
    "TRL_ONLY_FIELDS",
    "Mapped",
    "OnlyAt",
    "check_supported",
    "grpo_config",
    "run",
    "train_dataset",
]

#: Fields of the native ``kind="train"`` record that this backend does not write: TRL logs no
#: separate policy-gradient loss or mean importance ratio, and has no rollout log-probs to
#: compare the training pass with (its ``generate`` returns none) or to build verl's
#: gradient-variance proxy from.
NATIVE_ONLY_FIELDS = ("pg_loss", "ratio_mean", "logprob_gap", "logprob_gap_max",
                      "variance_proxy")
#: Fields this backend writes that the native one does not: TRL's mean token entropy.
TRL_ONLY_FIELDS = ("entropy",)
_NO_CLIP = 1e9  # clip_eps=0 (no clipping): a PPO range that never binds


@dataclass(frozen=True)
class Mapped:
    """A :class:`TrainConfig` field TRL honours at every value: how it is carried."""

    how: str  # the GRPOConfig argument(s), or the grponorm step that carries it


@dataclass(frozen=True)
class OnlyAt:
    """A field TRL honours only at ``allowed``; any other value is refused with ``why``."""

    allowed: tuple  # the accepted values
    why: str  # why the others cannot be honoured


_GROUPS = "micro_batch (whole groups) -> per-device rows, the rest accumulated (refused if uneven)"
_DIAG = "the step diagnostics need the native trainer's rollout batch; use --backend native"

#: Every :class:`TrainConfig` field: how TRL carries it, or the values it refuses and why.
#: ``tests/test_trl_backend.py`` fails when a field has no entry.
TRL_MAPPING: dict[str, Mapped | OnlyAt] = {
    "model": Mapped("load_policy (the same model, handed to TRL)"),
    "dtype": Mapped("weights as load_policy loads them; bf16=False, fp16=False (no autocast)"),
    "lora_r": Mapped("policy.attach_lora() (peft LoraConfig, seeded as native)"),
    "lora_alpha": Mapped("policy.attach_lora()"),
    "lora_targets": Mapped("policy.attach_lora()"),
    "task": Mapped("build_problems"),
    "levels": Mapped("build_problems"),
    "gsm8k_dir": Mapped("build_problems"),
    "slice": Mapped("select_problems"),
    "slice_by": Mapped("select_problems"),
    "judge_model": Mapped("select_problems"),
    "easy_max_steps": Mapped("select_problems"),
    "pass_rate_threshold": Mapped("select_problems"),
    "pass_rate_k": Mapped("select_problems"),
    "n_train": Mapped("build_problems"),
    "n_eval": Mapped("build_problems"),
    "data_seed": Mapped("build_problems"),
    "normalizer": Mapped("NormalizedGRPOTrainer(normalizer=)"),
    "normalizer_options": Mapped("NormalizedGRPOTrainer(normalizer_options=)"),
    "G": Mapped("num_generations"),
    "prompts_per_step": Mapped("per_device_train_batch_size x gradient_accumulation_steps x "
                               "processes = prompts_per_step*G"),
    "steps": Mapped("max_steps = steps*updates_per_batch"),
    "lr": Mapped("learning_rate; constant schedule, no warm-up"),
    "optimizer": Mapped("optim: adamw -> adamw_torch (weight_decay 0, torch's betas/eps), "
                        "sgd -> sgd (torch SGD, no momentum)"),
    "max_grad_norm": Mapped("max_grad_norm (0 = no clipping in both)"),
    "max_new_tokens": Mapped("max_completion_length"),
    "temperature": Mapped("temperature"),
    "top_p": Mapped("top_p; top_k=0"),
    "loss_agg": Mapped("loss_type: seq_mean -> grpo, token_sum -> dr_grpo"),
    "kl_coef": Mapped("beta (reference: the adapters-off base model)"),
    "clip_eps": Mapped("epsilon (0 = no clipping -> a range that never binds)"),
    "updates_per_batch": Mapped("num_iterations (one record per sampled batch)"),
    "micro_batch": Mapped(_GROUPS),
    "rollout": Mapped("decode/generate -> use_vllm=False (TRL's generate); vllm -> "
                      "use_vllm=True, vllm_mode=colocate"),
    "share_prompt": OnlyAt((True,), "TRL repeats each prompt G times"),
    "share_prefix": OnlyAt((True,), "a setting of grponorm's own rollout, which TRL does not run"),
    "old_logprobs": OnlyAt(("auto", "recompute"), "TRL recomputes the old log-probs in one pass"),
    "attention": OnlyAt(("auto", "model"), "TRL runs the model's own attention"),
    "eval_every": Mapped("grponorm's eval (rl.session.evaluate) from the callback"),
    "eval_temperature": Mapped("grponorm's eval"),
    "checkpoint_every": Mapped("save_steps = checkpoint_every*updates_per_batch (0: at the end)"),
    "log_every": Mapped("the run layer's log line"),
    "seed": Mapped("seed (and LoRA init, data order: as native)"),
    "threads": Mapped("torch.set_num_threads"),
    "device": Mapped("use_cpu (model on CPU); GPUs: one per process (LOCAL_RANK)"),
    "out": Mapped("the run folder"),
    "run_dir": Mapped("the run folder; TRL's output_dir is <run>/trl"),
    "resume": Mapped("Trainer.train(resume_from_checkpoint=<run>/trl/checkpoint-N)"),
    "cache_dir": Mapped("load_policy / select_problems"),
    "diagnostics": OnlyAt(("",), _DIAG),
    "diag_every": OnlyAt((1,), _DIAG),
    "diag_probe": OnlyAt((0,), _DIAG),
    "backend": Mapped("this module"),
    "report_to": Mapped("report_to ([] -> none)"),
}
_OPTIM = {"adamw": "adamw_torch", "sgd": "sgd"}  # TrainConfig.optimizer -> TrainingArguments.optim


def _num_processes() -> int:
    """Processes of this launch (``accelerate launch`` / ``torchrun`` set WORLD_SIZE)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _batch_layout(cfg: TrainConfig, num_processes: int) -> tuple[int, int] | str:
    """``(per_device_train_batch_size, gradient_accumulation_steps)``, or why it cannot be."""
    rows = cfg.prompts_per_step * cfg.G
    if rows % num_processes:
        return (f"prompts_per_step*G = {rows} rows do not split evenly over {num_processes} "
                "processes")
    local = rows // num_processes
    if not cfg.micro_batch:
        return local, 1
    chunk = max(cfg.G, (cfg.micro_batch // cfg.G) * cfg.G)  # whole groups, as native
    if chunk >= local:
        return local, 1
    if local % chunk:
        return (f"micro_batch={cfg.micro_batch} gives chunks of {chunk} rows, which do not "
                f"divide the {local} rows per process (TRL accumulates equal chunks)")
    return chunk, local // chunk


def check_supported(cfg: TrainConfig, num_processes: int | None = None) -> None:
    """Raise one ValueError naming every setting TRL cannot honour (value and reason), from
    :data:`TRL_MAPPING`; a field missing from the table is refused too."""
    n = num_processes or _num_processes()
    bad: list[str] = []
    for f in fields(TrainConfig):
        entry = TRL_MAPPING.get(f.name)
        value = getattr(cfg, f.name)
        if entry is None:
            bad.append(f"{f.name}={value!r}: no TRL mapping declared for this field")
        elif isinstance(entry, OnlyAt) and value not in entry.allowed:
            bad.append(f"{f.name}={value!r}: {entry.why} (accepted: "
                       f"{', '.join(map(repr, entry.allowed))})")
    layout = _batch_layout(cfg, n)
    if isinstance(layout, str):
        bad.append(f"micro_batch/prompts_per_step: {layout}")
    if bad:
        raise ValueError("backend=trl cannot run this config:\n  " + "\n  ".join(bad))


def grpo_config(cfg: TrainConfig, output_dir: str = "", *, num_processes: int | None = None,
                use_cpu: bool | None = None) -> dict[str, Any]:
    """The ``trl.GRPOConfig`` keyword arguments of ``cfg`` (call :func:`check_supported` first;
    :data:`TRL_MAPPING` says where each field goes).

    Fixed: scale_rewards (ignored: the normalizer decides), shuffle_dataset=False,
    remove_unused_columns=False, mask_truncated_completions=False, logging_steps=1,
    activation_checkpointing=False, disable_tqdm=True (grponorm's bar), log_completions=False.
    """
    n = num_processes or _num_processes()
    layout = _batch_layout(cfg, n)
    if isinstance(layout, str):
        raise ValueError(f"backend=trl: {layout}")
    per_device, accumulation = layout
    max_steps = cfg.steps * cfg.updates_per_batch
    if use_cpu is None:
        use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir or None,
        seed=cfg.seed,
        use_cpu=use_cpu,
        bf16=False,
        fp16=False,
        max_steps=max_steps,
        num_generations=cfg.G,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_iterations=cfg.updates_per_batch,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim=_OPTIM[cfg.optimizer],
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        loss_type={"seq_mean": "grpo", "token_sum": "dr_grpo"}[cfg.loss_agg],
        beta=cfg.kl_coef,
        epsilon=cfg.clip_eps or _NO_CLIP,
        use_vllm=cfg.rollout == "vllm",
        shuffle_dataset=False,
        remove_unused_columns=False,
        mask_truncated_completions=False,
        activation_checkpointing=False,
        logging_steps=1,
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        report_to=list(cfg.report_to) or "none",
        save_strategy="steps",
        save_steps=(cfg.checkpoint_every * cfg.updates_per_batch) or max_steps,
        save_total_limit=1,
    )
    if cfg.rollout == "vllm":
        kwargs["vllm_mode"] = "colocate"
    return kwargs


def train_dataset(cfg: TrainConfig, pool: list, prompts: list[str]):
    """The training rows in the native step order: step 1's prompts, then step 2's, ...

    Columns: ``prompt`` (chat-formatted string: TRL does not template it again), ``answer``
    (read by the reward), ``problem_id`` (checked against the expected order every step).
    """
    from datasets import Dataset

    order = [i for s in range(1, cfg.steps + 1)
             for i in step_indices(len(pool), s, cfg.prompts_per_step, cfg.seed)]
    return Dataset.from_dict({
        "prompt": [prompts[i] for i in order],
        "answer": [pool[i].answer for i in order],
        "problem_id": [pool[i].id for i in order],
    })


def correctness(completions, answer, **_) -> list[float]:
    """TRL reward function: 1.0 when the completion's final answer equals ``answer``."""
    return [correctness_reward(c, a) for c, a in zip(completions, answer, strict=True)]


def _mean(xs) -> float | None:
    """Mean of TRL's logged values that are numbers (None and NaN left out)."""
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return float(np.mean(xs)) if xs else None


class BackendTrainer(NormalizedGRPOTrainer):
    """Keeps each sampled batch's gathered rewards, problems, tokens, stats and timings."""

    def __init__(self, *args, **kwargs):
        self.batches: list[dict] = []  # one entry per generation, consumed by the callback
        self._t_generate = 0.0
        self.time_forward = 0.0  # training forward passes since the last record
        super().__init__(*args, **kwargs)

    def _generate(self, prompts):
        t0 = time.perf_counter()
        out = super()._generate(prompts)
        self._t_generate += time.perf_counter() - t0
        return out

    def compute_loss(self, model, inputs, *args, **kwargs):
        t0 = time.perf_counter()
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if self.model.training:
            self.time_forward += time.perf_counter() - t0
        return loss

    def _record_metrics(self, mode, result):
        super()._record_metrics(mode, result)
        self._last_stats, self._last_adv = result.stats, result.all

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        self._t_generate = 0.0
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        rewards = self._gathered_rewards.sum(dim=1).detach().float().cpu()  # one function
        ids = gather_object([x["problem_id"] for x in inputs])
        tokens = self.accelerator.gather(output["completion_mask"].sum().reshape(1))
        self.batches.append({
            "rewards": rewards,
            "ids": ids,
            "tokens": float(tokens.sum()),
            "stats": self._last_stats,
            "adv": self._last_adv.detach().float().cpu(),  # (n_total,) trained on
            "time_generate": self._t_generate,
            "time_score": time.perf_counter() - t0,
        })
        return output


class RecordCallback(TrainerCallback):
    """Turns the TRL log lines of each sampled batch into the run layer's train record; the
    main process hands it to the :class:`~grponorm.rl.session.RunBook`."""

    def __init__(self, prep: Prepared, book: RunBook | None):
        self.prep, self.book = prep, book  # book: None on the other processes
        self.trainer: BackendTrainer | None = None
        self.logs: list[dict] = []  # TRL log lines of the current sampled batch
        self.step_time = 0.0
        self.t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_time += time.perf_counter() - self.t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary line
            return
        self.logs.append(dict(logs))
        upd = self.prep.cfg.updates_per_batch
        if state.global_step % upd:
            return
        step = state.global_step // upd
        rec = self.record(step, self.trainer.batches.pop(0))
        self.logs, self.step_time = [], 0.0
        if self.book is not None:
            self.book.step_done(rec)

    def record(self, step: int, batch: dict) -> dict:
        """The train record of one sampled batch: TRL's logs mapped onto the native fields."""
        cfg, pool = self.prep.cfg, self.prep.pool
        problems = batch["ids"][:: cfg.G]
        expected = [pool[i].id for i in
                    step_indices(len(pool), step, cfg.prompts_per_step, cfg.seed)]
        if problems != expected:
            raise RuntimeError(f"step {step}: TRL sampled problems {problems}, the native "
                               f"order is {expected} (did TRL's sampler change?)")
        logs = self.logs
        t_gen, t_score, t_step = batch["time_generate"], batch["time_score"], self.step_time
        t_train = max(0.0, t_step - t_score)  # log-prob passes, backward, optimizer
        t_fwd = min(self.trainer.time_forward, t_train)
        self.trainer.time_forward = 0.0
        update = {
            "kl": _mean(x.get("kl") for x in logs) or 0.0,  # TRL logs kl only when beta > 0
            "clip_frac": _mean(x.get("clip_ratio/region_mean") for x in logs) or 0.0,
            "tokens": batch["tokens"],
            "loss": _mean(x.get("loss") for x in logs),
            "grad_norm": _mean(x.get("grad_norm") for x in logs),
            "entropy": _mean(x.get("entropy") for x in logs),
            "time_forward": t_fwd,
            "time_backward": t_train - t_fwd,  # backward, clipping and the optimizer step
        }
        times = dict(time_generate=t_gen, time_train=t_train,
                     time_other=max(0.0, t_score - t_gen),  # tokenize, rewards, old logp
                     time_step=t_step)
        rewards = batch["rewards"].view(-1, cfg.G)  # (prompts, G)
        return session_record(cfg, step, rewards, problems, self.prep.labels, batch["stats"],
                              update, batch["tokens"], logs[-1].get("learning_rate"), times,
                              adv=batch["adv"].view(-1, cfg.G))


def _local_cfg(cfg: TrainConfig) -> TrainConfig:
    """With several processes on GPUs, each loads its policy onto its own GPU (LOCAL_RANK)."""
    rank = os.environ.get("LOCAL_RANK")
    if _num_processes() > 1 and rank is not None and cfg.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return replace(cfg, device=f"cuda:{int(rank)}")
    return cfg


def _shared_create(state: PartialState):
    """A run-folder maker: the main process creates it and names it to the others."""
    def create(cfg: TrainConfig) -> Run:
        path = [str(create_run(cfg).path) if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(path)
        return Run(Path(path[0]))
    return create


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) one run through TRL; returns the summary (with ``run_dir``)."""
    from trl import GRPOConfig

    state = PartialState()
    prep = prepare(cfg, progress, check=check_supported, policy_cfg=_local_cfg,
                   create=_shared_create(state))
    cfg, out = prep.cfg, prep.out
    data = train_dataset(cfg, prep.pool, prep.policy.prompts(prep.pool))
    trl_dir = out.path / "trl"
    checkpoint = get_last_checkpoint(str(trl_dir)) if prep.resuming and trl_dir.is_dir() else None
    start = int(Path(checkpoint).name.split("-")[-1]) // cfg.updates_per_batch if checkpoint else 0
    if state.is_main_process:  # drop lines after the checkpoint (or all)
        resume_metrics(prep, start if checkpoint else None)

    seed_everything(cfg.seed)
    model = prep.policy.attach_lora()  # LoRA init from the seeded RNG: the native policy
    use_cpu = next(model.parameters()).device.type == "cpu"
    args = GRPOConfig(**grpo_config(cfg, str(trl_dir), num_processes=state.num_processes,
                                    use_cpu=use_cpu))
    main = state.is_main_process
    book = RunBook(prep, start, None, progress, sinks=False, tag=" [trl]") if main else None
    callback = RecordCallback(prep, book)
    trainer = BackendTrainer(
        model=model,
        reward_funcs=correctness,
        args=args,
        train_dataset=data,
        processing_class=prep.policy.tokenizer,
        callbacks=[callback],
        normalizer=cfg.normalizer,
        normalizer_options=parse_options(cfg.normalizer_options),
    )
    trainer.remove_callback(PrinterCallback)  # grponorm's bar and records instead of log dicts
    callback.trainer = trainer
    setup_s = time.perf_counter() - prep.t_setup

    t_run = time.perf_counter()
    try:
        if book is not None:
            book.begin(start)
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if book is not None:
            book.close()
    train_time_s = time.perf_counter() - t_run
    if not main:
        return {"run_dir": str(out.path)}
    return finish(prep, trainer.model, setup_s, train_time_s, {"backend": "trl"})
