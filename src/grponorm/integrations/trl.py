"""TRL backend: a ``GRPOTrainer`` whose advantages come from grponorm's normalizer registry.

Tested with TRL 1.16.0 (transformers 5.25.0, accelerate 1.16.0, torch 2.13.0, CPU, one and two
processes). TRL has no public advantage hook: its maintainers say to subclass and override
``_generate_and_score_completions`` (trl#4525); a ``_transform_advantages`` hook is only proposed
(trl#7291, PR #7298). The subclass therefore stays thin and overrides three methods:

* ``_calculate_rewards``: unchanged result; it keeps the reward matrix that TRL has just gathered
  from all processes, ``(n_total, n_reward_funcs)``.
* ``_generate_and_score_completions``: runs TRL's method unchanged, then replaces its advantages.
  TRL's combined per-sample reward (reward weights, ``nansum`` over reward functions, NaN where
  every function returned None) is normalized by the registry over whole groups of the gathered
  batch, so a group split across processes is normalized as one; each process keeps its own rows
  (TRL's ``process_index`` slice). The completions table (``_logs["advantages"]``) gets the
  advantages that are trained on, and grponorm's metrics go to ``self._metrics[mode]``.
* ``log``: adds the normalizer's name and options, as strings, to the first log line
  (``grponorm/normalizer``, ``grponorm/normalizer_options``): TRL's ``_metrics`` averages numbers
  and cannot carry a string, but ``Trainer.log`` passes it on to ``state.log_history`` and the
  ``report_to`` backends.

TRL's own normalization still runs (it is cheap) and its result is discarded, so
``args.scale_rewards`` has no effect; TRL's ``frac_reward_zero_std`` metric is left as it is.
Rows that no reward function scored get advantage 0 and stay out of their group's statistics, as
in TRL; a batch with such rows is normalized over its scored rows as ragged groups
(:func:`grponorm.normalizers.normalize_ragged`): group-wise normalizers per group, batch-level
ones with their ragged implementation or a ValueError. Only
``multi_objective_aggregation="sum_then_normalize"`` is accepted (``gdpo`` is the registry's
normalize-then-sum).

Context and state (only what the normalizer's spec needs is gathered: the context is built by
:meth:`~grponorm.normalizers.NormalizerContext.build`, whose sources are called only for the
fields the normalizer needs -- the same needs on every process, so the gathers stay collective):

* ``lengths``: the completion lengths, ``completion_mask.sum(1)``, gathered from all processes;
* ``prompt_ids``: the dataset column ``prompt_id`` if the rows have one, else a SHA-1 of the
  prompt (text or chat messages, as JSON), gathered;
* ``components``: TRL's gathered ``rewards_per_func`` ``(n_total, n_funcs)``, unweighted; for
  ``gdpo`` the weights default to TRL's ``reward_weights``.

A stateful normalizer's state (``make_state``) lives in the trainer (``normalizer_state``) and is
saved in every TRL checkpoint as ``grponorm_normalizer_state.json``
(:data:`STATE_FILE`, ``_save_checkpoint``) and restored on ``resume_from_checkpoint``
(``_load_from_checkpoint``). Every process computes the same gathered advantages, so every
process holds the same state; the main process writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import torch
from trl import GRPOTrainer

from grponorm.files import atomic_write
from grponorm.normalizers import (
    AdvantageStats,
    NormalizerContext,
    NormalizerOptionError,
    advantage_stats,
    check_options,
    make_state,
    normalize_ragged_with_stats,
    normalize_with_stats,
)

__all__ = [
    "STATE_FILE",
    "GatheredAdvantages",
    "NormalizedGRPOTrainer",
    "advantages_from_gathered",
    "check_normalizer",
    "combined_rewards",
    "prompt_id",
]

logger = logging.getLogger(__name__)

#: File of the normalizer state in a TRL checkpoint folder.
STATE_FILE = "grponorm_normalizer_state.json"


def check_normalizer(name: str, options: dict[str, Any]) -> None:
    """Fails early on an unknown normalizer name or options it does not accept
    (:func:`grponorm.normalizers.check_options`, with the options named in the message).

    Raises:
        UnknownNormalizerError: ``name`` is not registered (the message lists the names).
        NormalizerOptionError: an option the normalizer does not take or a value it rejects
            (a TypeError and a ValueError).
    """
    try:
        check_options(name, options)
    except NormalizerOptionError as err:
        raise NormalizerOptionError(
            f"normalizer_options {options!r} do not fit {name!r}: {err}"
        ) from err


def prompt_id(row: dict[str, Any]) -> str:
    """A stable id of a dataset row's prompt: its ``prompt_id`` column if present, else the
    SHA-1 of the prompt (text, or chat messages as sorted JSON)."""
    if row.get("prompt_id") is not None:
        return str(row["prompt_id"])
    text = json.dumps(row.get("prompt"), sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def combined_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TRL's per-sample reward: weighted ``nansum`` over functions; NaN where none scored.

    Args:
        rewards_per_func: ``(n, n_funcs)`` rewards, NaN where a function returned None.
        weights: ``(n_funcs,)`` reward weights.

    Returns:
        ``(n,)`` rewards.
    """
    w = weights.to(rewards_per_func.device)[None, :]  # (1, n_funcs)
    rewards = (rewards_per_func * w).nansum(dim=1)  # (n,)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


@dataclasses.dataclass(frozen=True)
class GatheredAdvantages:
    """Advantages of one gathered batch and what is logged about them."""

    all: torch.Tensor  # (n_total,) every process's rows, in gather order
    local: torch.Tensor  # (n_local,) this process's rows
    stats: AdvantageStats
    group_reward_std: torch.Tensor  # (n_groups,) Bessel std of each group's scored rewards


def _normalize_partial(
    rewards: torch.Tensor, num_generations: int, method: str, options: dict[str, Any],
    context: NormalizerContext | None, state: Any,
):
    """Registry advantages when some rewards are NaN (unscored) or G < 2: the scored rows as
    ragged groups (:func:`grponorm.normalizers.normalize_ragged_with_stats`); unscored rows get
    0. Stats: a group with no scored row counts as flat; the others as the ragged call counts
    them (flat over their scored rows, components included when the normalizer reads them)."""
    grouped = rewards.view(-1, num_generations)  # (n_groups, G)
    scored = ~torch.isnan(rewards)  # (n_total,)
    adv = torch.zeros_like(rewards)  # (n_total,)
    n_groups = int(grouped.shape[0])
    n_flat = n_groups  # every group unscored until counted
    if bool(scored.any()):
        rows = scored.nonzero().flatten()  # (n_scored,)
        labels = (torch.arange(rewards.numel(), device=rewards.device) // num_generations)[rows]
        sub = None
        if context is not None:
            sub = NormalizerContext(**{
                name: _select(getattr(context, name), rows) for name in context.given()
            })
        adv[rows], part = normalize_ragged_with_stats(
            rewards[rows], labels, method, context=sub, state=state, **options
        )
        n_flat = part.n_flat + n_groups - part.n_groups  # + the groups with no scored row
    grouped_adv = adv.view(-1, num_generations)  # (n_groups, G)
    n_zero_adv = int((grouped_adv == 0).all(dim=1).sum())
    return grouped_adv, advantage_stats(adv.float(), n_groups, n_flat, n_zero_adv)


def _select(value: Any, rows: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)]
    return [value[i] for i in rows.tolist()]


def _grouped(context: NormalizerContext | None, num_generations: int):
    """Row-form context ``(n_total, ...)`` -> grouped form ``(n_groups, G, ...)``."""
    if context is None:
        return None
    g = num_generations
    return NormalizerContext(
        lengths=None if context.lengths is None else context.lengths.view(-1, g),
        prompt_ids=None if context.prompt_ids is None else list(context.prompt_ids)[::g],
        components=(
            None if context.components is None
            else context.components.view(-1, g, context.components.shape[-1])
        ),
    )


def _group_reward_std(grouped: torch.Tensor) -> torch.Tensor:
    """Bessel std over each group's scored rewards, NaN with fewer than 2. (n_groups,)"""
    scored = ~torch.isnan(grouped)
    count = scored.sum(dim=1)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    sq = ((grouped - mean) ** 2).nan_to_num(0.0).sum(dim=1)
    return torch.where(count >= 2, sq / (count - 1).clamp(min=1), float("nan")).sqrt()


def advantages_from_gathered(
    rewards: torch.Tensor,
    num_generations: int,
    process_index: int,
    n_local: int,
    method: str,
    options: dict[str, Any] | None = None,
    *,
    context: NormalizerContext | None = None,
    state: Any = None,
) -> GatheredAdvantages:
    """Normalizes the gathered rewards by whole groups and slices this process's rows.

    Args:
        rewards: ``(n_total,)`` rewards of all processes in gather order, each group's
            ``num_generations`` samples contiguous (TRL's layout); NaN marks an unscored row.
        num_generations: Group size G.
        process_index: This process's rank; its rows are
            ``[process_index * n_local, (process_index + 1) * n_local)``, as in TRL.
        n_local: Rows per process.
        method: Registry normalizer name; ``options`` are its keyword options.
        context: Row-form :class:`~grponorm.normalizers.NormalizerContext` of the gathered rows
            (lengths ``(n_total,)``, prompt_ids ``(n_total,)``, components
            ``(n_total, n_funcs)``), with what the normalizer needs.
        state: The normalizer's per-run state, if it keeps one (updated in place).

    Returns:
        :class:`GatheredAdvantages` (advantages in ``rewards``' dtype and device).
    """
    options = options or {}
    grouped = rewards.view(-1, num_generations)  # (n_groups, G)
    if num_generations >= 2 and not bool(torch.isnan(grouped).any()):
        adv, stats = normalize_with_stats(
            grouped, method, context=_grouped(context, num_generations), state=state, **options
        )
    else:
        adv, stats = _normalize_partial(rewards, num_generations, method, options, context, state)
    flat = adv.reshape(-1)  # (n_total,)
    local = flat[process_index * n_local : (process_index + 1) * n_local]  # (n_local,)
    return GatheredAdvantages(flat, local, stats, _group_reward_std(grouped))


class NormalizedGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with advantages from a grponorm registry normalizer.

    Args:
        *args, **kwargs: Everything ``trl.GRPOTrainer`` takes.
        normalizer: Registry name (``grponorm.normalizers.available_normalizers()``). TRL's own
            ``scale_rewards="group"`` is ``normalizer="group_std"`` with ``{"eps": 1e-4}``
            (Bessel std is the default); ``"none"`` is ``scale_rewards="none"``.
        normalizer_options: Keyword options of that normalizer (e.g. ``{"eps": 1e-4}``).

    Raises:
        UnknownNormalizerError, TypeError, ValueError: bad normalizer or options (before TRL
            builds anything), or an unsupported ``multi_objective_aggregation``.
    """

    _tag_names = [*GRPOTrainer._tag_names, "grponorm"]

    def __init__(
        self,
        *args: Any,
        normalizer: str = "group_std",
        normalizer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = dict(normalizer_options or {})
        check_normalizer(normalizer, options)
        self.normalizer = normalizer
        self.normalizer_options = options
        self.normalizer_state = make_state(normalizer, **options)
        self._gathered_rewards: torch.Tensor | None = None
        self._normalizer_logged = False
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "NormalizedGRPOTrainer normalizes TRL's summed reward; "
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported"
            )
        logger.info("grponorm: advantages from normalizer %r %s", normalizer, options)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's gathered rewards ``(n_total, n_funcs)``, kept for the advantage step."""
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._gathered_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's batch, with the registry's advantages in place of TRL's."""
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        rewards = combined_rewards(self._gathered_rewards, self.reward_weights)  # (n_total,)
        options = dict(self.normalizer_options)
        if self.normalizer == "gdpo" and options.get("weights") is None:
            options["weights"] = [float(w) for w in self.reward_weights.tolist()]
        result = advantages_from_gathered(
            rewards,
            group,
            self.accelerator.process_index,
            len(inputs),
            self.normalizer,
            options,
            context=self._gathered_context(inputs, output, options),
            state=self.normalizer_state,
        )
        output["advantages"] = result.local.to(output["advantages"].dtype)
        self._replace_logged_advantages(result.all)
        self._record_metrics(mode, result)
        return output

    def _gathered_context(self, inputs, output, options) -> NormalizerContext | None:
        """The context the normalizer needs, gathered from all processes (row form), built by
        :meth:`NormalizerContext.build`: only the needed fields are gathered."""

        def lengths():
            local = output["completion_mask"].sum(dim=1).to(torch.float64)  # (n_local,)
            return self.accelerator.gather(local)  # (n_total,)

        def prompt_ids():
            from accelerate.utils import gather_object

            return list(gather_object([prompt_id(row) for row in inputs]))  # (n_total,)

        return NormalizerContext.build(
            self.normalizer, options, caller="the TRL trainer", lengths=lengths,
            prompt_ids=prompt_ids,
            components=lambda: self._gathered_rewards,  # (n_total, n_funcs)
        )

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint, plus the normalizer's state (:data:`STATE_FILE`)."""
        super()._save_checkpoint(model, trial)
        if self.normalizer_state is None or not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        payload = {
            "normalizer": self.normalizer,
            "options": self.normalizer_options,
            "state": self.normalizer_state.state_dict(),
        }
        atomic_write(os.path.join(folder, STATE_FILE), json.dumps(payload))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        """TRL's resume, plus the normalizer's state if the checkpoint has one."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if self.normalizer_state is None:
            return
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {STATE_FILE}: normalizer {self.normalizer!r} "
                f"keeps state across steps and cannot resume without it"
            )
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if payload.get("normalizer") != self.normalizer:
            raise ValueError(
                f"{path} holds the state of normalizer {payload.get('normalizer')!r}, "
                f"not {self.normalizer!r}"
            )
        self.normalizer_state.load_state_dict(payload["state"])

    def _replace_logged_advantages(self, advantages: torch.Tensor) -> None:
        """Swaps the rows TRL just appended to the completions table for ``advantages``."""
        logged = self._logs["advantages"]
        for _ in range(min(advantages.numel(), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())

    def _record_metrics(self, mode: str, result: GatheredAdvantages) -> None:
        """Appends grponorm's metrics to TRL's ``self._metrics[mode]`` (averaged per log)."""
        metrics = self._metrics[mode]
        stats = result.stats
        metrics["grponorm/frac_flat"].append(stats.frac_flat)
        metrics["grponorm/frac_zero_adv"].append(stats.frac_zero_adv)
        metrics["grponorm/adv_mean"].append(stats.adv_mean)
        metrics["grponorm/adv_std"].append(stats.adv_std)
        metrics["grponorm/adv_abs_max"].append(stats.adv_abs_max)
        std = result.group_reward_std[~torch.isnan(result.group_reward_std)]
        for name, fn in (("mean", torch.mean), ("min", torch.min), ("max", torch.max)):
            value = float(fn(std)) if std.numel() else float("nan")  # NaN is skipped by TRL
            metrics[f"grponorm/group_reward_std/{name}"].append(value)

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        """TRL's log; the first line also names the normalizer (strings, once)."""
        if not self._normalizer_logged:
            logs["grponorm/normalizer"] = self.normalizer
            logs["grponorm/normalizer_options"] = json.dumps(self.normalizer_options)
            self._normalizer_logged = True
        super().log(logs, start_time)
