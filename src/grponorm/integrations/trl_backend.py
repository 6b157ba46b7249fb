"""``grponorm rl train --backend trl``: one :class:`TrainConfig` run through TRL.

The run mirrors :func:`grponorm.rl.trainer.run`; only the engine that samples and updates is
TRL's (:class:`~grponorm.integrations.trl.NormalizedGRPOTrainer`, a real ``GRPOTrainer``):

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

Held-out evaluation: :func:`grponorm.rl.trainer.evaluate` on the model TRL is training, with the
engine of ``rollout`` built by ``load_policy`` (``decode`` or ``generate``; ``vllm`` evaluates
with ``decode``, since TRL owns the vLLM instance), greedy at ``eval_temperature=0``: the same
function, prompts and seeds as the native backend, so eval numbers are comparable across
backends. It runs on the main process only.

Progress: the native tqdm bar, or without it ``rl.trainer.log_line`` every ``log_every`` steps.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rl.checkpoint import create_run, open_run, truncate_metrics
from ..rl.config import TrainConfig, parse_options
from ..rl.policy import load_policy
from ..rl.problems import build_problems, select_problems, step_indices
from ..rl.rewards import correctness_reward
from ..rl.summary import reward_fields, summarize, summary_table
from ..rl.trainer import evaluate, log_line, seed_everything
from ..runs import Run, to_jsonable

__all__ = [
    "NATIVE_ONLY_FIELDS",
    "TRL_ONLY_FIELDS",
    "check_supported",
    "grpo_config",
    "run",
    "train_dataset",
]

#: Fields of the native ``kind="train"`` record that this backend does not write: TRL logs no
#: separate policy-gradient loss or mean importance ratio, and has no rollout log-probs to
#: compare the training pass with (its ``generate`` returns none).
NATIVE_ONLY_FIELDS = ("pg_loss", "ratio_mean", "logprob_gap", "logprob_gap_max")
#: Fields this backend writes that the native one does not: TRL's mean token entropy.
TRL_ONLY_FIELDS = ("entropy",)

#: TrainConfig fields without a TRL meaning: only these values are accepted.
_DEFAULT_ONLY = {
    "share_prompt": (True,),  # TRL repeats each prompt G times; True is "same math" anyway
    "share_prefix": (True,),
    "attention": ("auto", "model"),  # TRL runs the model's own attention
    "old_logprobs": ("auto", "recompute"),  # TRL recomputes them in one pass
}
_NO_CLIP = 1e9  # clip_eps=0 (no clipping): a PPO range that never binds


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
    """Raise one ValueError naming every setting TRL cannot honour (value and reason).

    Accepted besides the mapped fields (:func:`grpo_config`): ``rollout`` decode/generate (both
    mean TRL's own ``generate``) and vllm; ``old_logprobs`` auto/recompute (TRL recomputes the
    old log-probs in one pass); ``attention`` auto/model (TRL uses the model's attention);
    ``share_prompt``/``share_prefix`` True (speed settings of the native trainer).
    """
    n = num_processes or _num_processes()
    bad: list[str] = []
    for name, allowed in _DEFAULT_ONLY.items():
        value = getattr(cfg, name)
        if value not in allowed:
            bad.append(f"{name}={value!r}: a setting of grponorm's own rollout/log-prob passes, "
                       f"which TRL does not run (accepted: {', '.join(map(repr, allowed))})")
    if cfg.diagnostics:
        bad.append(f"diagnostics={cfg.diagnostics!r}: the step diagnostic needs the native "
                   "trainer's rollout batch; use --backend native")
    layout = _batch_layout(cfg, n)
    if isinstance(layout, str):
        bad.append(f"micro_batch/prompts_per_step: {layout}")
    if bad:
        raise ValueError("backend=trl cannot run this config:\n  " + "\n  ".join(bad))


def grpo_config(cfg: TrainConfig, output_dir: str = "", *, num_processes: int | None = None,
                use_cpu: bool | None = None) -> dict[str, Any]:
    """The ``trl.GRPOConfig`` keyword arguments of ``cfg`` (call :func:`check_supported` first).

    ===========================  =================================================================
    TrainConfig                  TRL (GRPOConfig unless said)
    ===========================  =================================================================
    G                            num_generations
    prompts_per_step, G,         per_device_train_batch_size x gradient_accumulation_steps x
    micro_batch                  processes = prompts_per_step*G; micro_batch (whole groups) ->
                                 per_device rows, the rest accumulated (refused if uneven)
    steps, updates_per_batch     max_steps = steps*updates_per_batch; num_iterations =
                                 updates_per_batch (one record per sampled batch)
    lr                           learning_rate; constant schedule, no warm-up, adamw_torch,
                                 weight_decay 0 (torch AdamW's betas/eps, as native)
    max_grad_norm                max_grad_norm (0 = no clipping in both)
    max_new_tokens               max_completion_length
    temperature, top_p           temperature, top_p; top_k=0
    loss_agg                     loss_type: seq_mean -> "grpo", token_sum -> "dr_grpo"
    kl_coef                      beta (reference: the adapters' initial copy = the base model)
    clip_eps                     epsilon (0 = no clipping -> 1e9, a range that never binds)
    rollout                      decode/generate -> use_vllm=False (TRL's generate);
                                 vllm -> use_vllm=True, vllm_mode="colocate"
    seed                         seed (and LoRA init, data order: as native)
    dtype                        weights as load_policy loads them; bf16=False, fp16=False (no
                                 autocast: LoRA stays fp32, the native arithmetic)
    device                       use_cpu (model on CPU); GPUs: one per process (LOCAL_RANK)
    checkpoint_every             save_steps = checkpoint_every*updates_per_batch (0: at the end)
    report_to                    report_to ([] -> "none")
    normalizer(+_options)        NormalizedGRPOTrainer(normalizer=, normalizer_options=)
    lora_r/alpha/targets         policy.attach_lora() (peft LoraConfig, seeded as native)
    model, cache_dir, task,      load_policy / build_problems / select_problems (unchanged)
    data and slice fields
    eval_every,                  grponorm's eval (rl.trainer.evaluate) from a callback
    eval_temperature
    resume                       Trainer.train(resume_from_checkpoint=<run>/trl/checkpoint-N)
    threads                      torch.set_num_threads
    ===========================  =================================================================

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
        optim="adamw_torch",
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
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return float(np.mean(xs)) if xs else None


_TRAINER_CLASS = None


def _trainer_class():
    """NormalizedGRPOTrainer plus what the metrics record needs (built once, trl imported)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from accelerate.utils import gather_object

    from .trl import NormalizedGRPOTrainer

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
            self._last_stats = result.stats

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
                "time_generate": self._t_generate,
                "time_score": time.perf_counter() - t0,
            })
            return output

    _TRAINER_CLASS = BackendTrainer
    return BackendTrainer


def _make_callback(cfg: TrainConfig, out: Run, policy, pool, held, held_prompts, labels,
                   start_step: int, progress: bool):
    """The TrainerCallback that writes grponorm's records (main process) and runs the evals."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    upd = cfg.updates_per_batch

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.logs: list[dict] = []  # TRL log lines of the current sampled batch
            self.step_time = 0.0
            self.t0 = 0.0
            self.ema = None
            self.last_eval = None
            self.interval: list[dict] = []  # records since the last log line
            self.bar = tqdm(range(start_step + 1, cfg.steps + 1),
                            desc=f"rl {cfg.normalizer}/{cfg.slice} [trl]",
                            disable=not progress, initial=start_step, total=cfg.steps)

        def eval_record(self, step: int):
            if not (cfg.eval_every and held):
                return None
            model = policy.model
            was_training = model.training
            model.eval()
            try:
                rec = evaluate(policy, held_prompts, held, labels, cfg, step)
            finally:
                model.train(was_training)
            out.log(rec)
            self.last_eval = rec["eval_acc"]
            return rec

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_time += time.perf_counter() - self.t0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:  # the end-of-training summary line
                return
            self.logs.append(dict(logs))
            if state.global_step % upd:
                return
            step = state.global_step // upd
            batch = self.trainer.batches.pop(0)
            rec = self.record(step, batch)
            self.logs, self.step_time = [], 0.0
            if not state.is_world_process_zero:
                return
            out.log(rec)
            self.ema = rec["acc"] if self.ema is None else 0.9 * self.ema + 0.1 * rec["acc"]
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                self.eval_record(step)
            self.interval.append(rec)
            if not progress and cfg.log_every and (step % cfg.log_every == 0
                                                   or step == cfg.steps):
                print(log_line(self.interval, cfg.steps, self.last_eval), flush=True)
                self.interval = []
            post = {"acc": f"{rec['acc']:.2f}", "ema": f"{self.ema:.2f}",
                    "zv": rec["frac_zero_variance"]}
            if self.last_eval is not None:
                post["eval"] = f"{self.last_eval:.2f}"
            self.bar.update(1)
            self.bar.set_postfix(post)

        def record(self, step: int, batch: dict) -> dict:
            """The native ``kind="train"`` record of one sampled batch (module docstring)."""
            G = cfg.G
            problems = batch["ids"][::G]
            expected = [pool[i].id for i in
                        step_indices(len(pool), step, cfg.prompts_per_step, cfg.seed)]
            if problems != expected:
                raise RuntimeError(f"step {step}: TRL sampled problems {problems}, the native "
                                   f"order is {expected} (did TRL's sampler change?)")
            rewards = batch["rewards"].view(-1, G)  # (prompts, G)
            logs = self.logs
            rec: dict[str, Any] = {"kind": "train", "step": step,
                                   **reward_fields(rewards, problems, labels)}
            rec.update({k: v for k, v in batch["stats"].as_dict().items() if k != "n_groups"})
            rec["kl"] = _mean(x.get("kl") for x in logs) or 0.0  # TRL logs kl only when beta>0
            rec["clip_frac"] = _mean(x.get("clip_ratio/region_mean") for x in logs) or 0.0
            rec["tokens"] = batch["tokens"]
            rec["loss"] = _mean(x.get("loss") for x in logs)
            rec["grad_norm"] = _mean(x.get("grad_norm") for x in logs)
            rec["entropy"] = _mean(x.get("entropy") for x in logs)
            t_gen, t_score, t_step = batch["time_generate"], batch["time_score"], self.step_time
            t_train = max(0.0, t_step - t_score)  # log-prob passes, backward, optimizer
            t_fwd = min(self.trainer.time_forward, t_train)
            self.trainer.time_forward = 0.0
            rec["time_forward"] = t_fwd
            rec["time_backward"] = t_train - t_fwd  # backward, clipping and the optimizer step
            rec["completion_len_mean"] = batch["tokens"] / rewards.numel()
            rec["lr"] = logs[-1].get("learning_rate")
            rec["data_position"] = step * cfg.prompts_per_step
            rec["problems"] = problems
            rec["group_acc"] = [float(a) for a in (rewards == 1).float().mean(dim=1)]
            rec.update(
                time_generate=t_gen,
                time_train=t_train,
                time_other=max(0.0, t_score - t_gen),  # tokenize, rewards, advantages, old logp
                time_step=t_step,
                tokens_per_s=batch["tokens"] / t_gen if t_gen > 0 else None,
            )
            return rec

    return MetricsCallback()


def _local_cfg(cfg: TrainConfig) -> TrainConfig:
    """With several processes on GPUs, each loads its policy onto its own GPU (LOCAL_RANK)."""
    rank = os.environ.get("LOCAL_RANK")
    if _num_processes() > 1 and rank is not None and cfg.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return replace(cfg, device=f"cuda:{int(rank)}")
    return cfg


def _shared_run(cfg: TrainConfig, out: Run | None, is_main: bool, num_processes: int) -> Run:
    """The run folder, created by the main process and named to the others."""
    if out is not None:
        return out
    path = [str(create_run(cfg).path) if is_main else None]
    if num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(path)
    return Run(Path(path[0]))


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) one run through TRL; returns the summary (with ``run_dir``)."""
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOConfig

    cfg.validate()
    cfg, out, _ = open_run(cfg)
    cfg.validate()
    check_supported(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = PartialState()
    t_setup = time.perf_counter()
    train_pool, held = build_problems(cfg)  # data errors surface before the model loads
    if not train_pool:
        raise ValueError("the training pool is empty (n_train=0 or no data)")
    policy = load_policy(_local_cfg(cfg))
    pool, held, labels, sizes = select_problems(cfg, train_pool, held, policy, progress)
    held_prompts = policy.prompts(held)
    data = train_dataset(cfg, pool, policy.prompts(pool))

    out = _shared_run(cfg, out, state.is_main_process, state.num_processes)
    trl_dir = out.path / "trl"
    checkpoint = get_last_checkpoint(str(trl_dir)) if cfg.resume and trl_dir.is_dir() else None
    start = int(Path(checkpoint).name.split("-")[-1]) // cfg.updates_per_batch if checkpoint else 0
    if state.is_main_process and cfg.resume:  # drop lines after the checkpoint (or all)
        truncate_metrics(out.file("metrics.jsonl"), start if checkpoint else -1)

    seed_everything(cfg.seed)
    model = policy.attach_lora()  # LoRA init from the seeded RNG: the native initial policy
    use_cpu = next(model.parameters()).device.type == "cpu"
    args = GRPOConfig(**grpo_config(cfg, str(trl_dir), num_processes=state.num_processes,
                                    use_cpu=use_cpu))
    callback = _make_callback(cfg, out, policy, pool, held, held_prompts, labels, start,
                              progress and state.is_main_process)
    trainer = _trainer_class()(
        model=model,
        reward_funcs=correctness,
        args=args,
        train_dataset=data,
        processing_class=policy.tokenizer,
        callbacks=[callback],
        normalizer=cfg.normalizer,
        normalizer_options=parse_options(cfg.normalizer_options),
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # grponorm's bar and records instead of log dicts
    callback.trainer = trainer
    setup_s = time.perf_counter() - t_setup

    t_run = time.perf_counter()
    if start == 0 and state.is_main_process:
        callback.eval_record(0)
    trainer.train(resume_from_checkpoint=checkpoint)
    callback.bar.close()
    train_time_s = time.perf_counter() - t_run
    if not state.is_main_process:
        return {"run_dir": str(out.path)}
    return _finish(cfg, out, trainer.model, sizes, len(held), setup_s, train_time_s)


def _finish(cfg: TrainConfig, out: Run, model, sizes: dict, n_eval: int, setup_s: float,
            train_time_s: float) -> dict:
    """Summary, table and adapter, as the native trainer writes them."""
    summary = summarize(out.path, cfg)
    summary.update(run_dir=str(out.path), slice_sizes=sizes, n_eval=n_eval,
                   setup_s=round(setup_s, 2), train_time_s=round(train_time_s, 2), backend="trl")
    if cfg.lora_r > 0 and hasattr(model, "save_pretrained"):
        model.save_pretrained(out.file("adapter"))
    out.write_text("table.md", summary_table(summary))
    out.finish(summary)
    return to_jsonable(summary)
