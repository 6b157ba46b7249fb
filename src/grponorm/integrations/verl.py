"""grponorm's normalizers as verl advantage estimators: ``algorithm.adv_estimator=grponorm_<name>``.

verl (0.9.x) looks advantage estimators up by name in ``verl.trainer.ppo.core_algos``'s registry
(``register_adv_est`` / ``get_adv_estimator_fn``) and calls them as::

    advantages, returns = fn(token_level_rewards=..., response_mask=..., config=algorithm_cfg,
                             index=uids, [reward_baselines=...])

:func:`register` adds every normalizer of :mod:`grponorm.normalizers` under ``grponorm_<name>``
(``grponorm_group_std``, ``grponorm_none``, ``grponorm_rloo``, ...). verl's own ``grpo`` is a
hard-wired branch of ``ray_trainer.compute_advantage``, hence new names rather than a replacement.

What an estimator computes (as verl's ``compute_grpo_outcome_advantage`` does): the sequence score
``token_level_rewards.sum(-1)``, rows grouped by their ``index`` uid, the registry normalizer
applied per group, and the scalar advantage broadcast over ``response_mask``; ``returns`` is the
same tensor. Groups may be ragged (different sizes) and interleaved (rows of a group anywhere in
the batch): rows are bucketed by group size, each bucket is one rectangular ``(k, G)`` call to
:func:`grponorm.normalizers.normalize`, and the results are scattered back -- exact for every
group-wise normalizer. For a normalizer that zeroes flat groups (the registry's ``zero_flat``,
e.g. ``group_std``, ``none``, ``rloo``) a singleton group gets 0 (no normalizer is called for it:
``rloo`` needs ``G >= 2``) and an all-equal group gets exactly 0; a normalizer whose formula moves
flat groups (``zero_flat=False``: ``batch_zscore``, ``running_std``, ``krpo``, ...) is called on
them too. Differences from verl's built-ins: verl passes a singleton's raw score through
(``grpo``: ``score / (1 + 1e-6)``, ``rloo``: ``score``), and for an all-equal group ``grpo``
returns the rounding residue ``(r - mean) / 1e-6`` where grponorm returns exactly 0.

Batch-level normalizers (those whose registry spec says so: ``get_spec(name).is_batch_level
(options)``; e.g. ``batch_std``, ``gpg``, ``bnpo`` unless ``alpha`` and ``beta`` are fixed, and
any user-registered one declared ``batch_level=True``) couple all groups through a batch-wide
statistic, so bucketing would give each bucket its own: on ragged input (several group sizes,
singletons included) they run their registered ragged implementation (``reinforce_pp_baseline``,
``batch_zscore``, ``running_std``) or raise ValueError; they are exact when every group has the
same size. The grouping is :func:`grponorm.normalizers.normalize_ragged`, shared with TRL.

Context and state. ``lengths`` come from ``response_mask.sum(-1)``, ``prompt_ids`` from
``index``. verl's ``uid`` is a fresh ``uuid4`` per prompt per step, so it cannot key state across
steps: ``krpo`` with ``persist=True`` is refused (use ``persist=False``, the authors' form).
verl passes no reward components to a custom estimator (only its own ``gdpo`` branch gets
``non_tensor_batch``; verl PR #7473), so ``grponorm_gdpo`` is refused with that message. A
stateful normalizer (``running_std``) keeps its state in the estimator function
(``grponorm_state``), i.e. in the process that computes advantages (the driver / the
``TaskRunnerV1`` actor); it is not saved in verl's checkpoints.

Options. Normalizer options (``eps``, ``ddof``, ``alpha``, ...) come from two places, merged with
the run's config winning (:func:`merged_options`): the keyword arguments of :func:`estimator`,
and the mapping ``algorithm.grponorm`` of verl's config (verl passes
``config=self.config.algorithm``, an OmegaConf ``DictConfig`` in struct mode, so the key is added
with Hydra's ``+``: ``+algorithm.grponorm.eps=1e-4``). verl's ``AlgoConfig`` dataclass has fixed
fields and no room for extra keys: given one, no config options are read.
``norm_adv_by_std_in_grpo`` and ``epsilon`` belong to verl's ``grpo`` and are ignored here (pick
``grponorm_none`` instead).

Plugin. ``import verl`` (verl/__init__.py) imports each module named in
``VERL_USE_EXTERNAL_MODULES`` and then loads every entry point of the group ``verl.plugins``
(policy ``VERL_USE_EXTERNAL_PLUGINS``: ``auto`` default, ``none``, or a comma list of entry point
names); a failing plugin is logged at DEBUG level only. ``EntryPoint.load()`` imports the module
and resolves the attribute but calls nothing, so the entry point names the attribute
:data:`plugin`, which this module resolves lazily (PEP 562 ``__getattr__``) by calling
:func:`register`::

    [project.entry-points."verl.plugins"]
    grponorm = "grponorm.integrations.verl:plugin"

Importing this module while verl is already imported also registers (this covers
``VERL_USE_EXTERNAL_MODULES=grponorm.integrations.verl``). Every process that imports verl --
the launcher, the ``TaskRunnerV1`` actor where advantages are computed, the workers -- thus has
the names; a ``register()`` call in the launch script alone would not reach the actor.

Diagnostics. A verl estimator returns only ``(advantages, returns)`` and ``compute_advantage``
writes only those two into the batch, so grponorm's :class:`~grponorm.normalizers.AdvantageStats`
cannot travel through verl's return value. Each estimator keeps the last batch's stats in its
``last_stats`` attribute (process-local: the Ray actor ``TaskRunnerV1``, where verl computes
advantages), and :func:`stats_metrics` turns them into a ``{"grponorm/...": value}`` dict.
Reaching verl's logger needs a trainer subclass: the v1 ``PPOTrainer._compute_advantage(batch,
metrics)`` receives the step's metrics dict (override it, call ``super()``, then
``metrics.update(stats_metrics(...))``), and ``verl.trainer.ppo.v1.register_trainer(name)`` plus
``trainer.v1.trainer_mode=<name>`` would select it inside the actor. Not shipped: that module
imports TransferQueue, absent from the test venv, so it cannot be tested here. The legacy
``RayPPOTrainer.fit`` calls ``compute_advantage`` inline with a local metrics dict, so there only
a copy of ``fit`` could log them. verl already logs token-weighted
``critic/advantages/{mean,max,min}``; grponorm's stats add ``grponorm/n_flat`` and
``grponorm/frac_flat`` (flat groups: all scores equal, singletons included) and
``grponorm/n_zero_adv`` and ``grponorm/frac_zero_adv`` (groups whose advantages are all 0; they
differ for normalizers that move flat groups), besides ``grponorm/n_groups`` and the moments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from grponorm.normalizers import (
    AdvantageStats,
    NormalizerContext,
    available_normalizers,
    check_options,
    get_spec,
    make_state,
    normalize_ragged_with_stats,
)
from grponorm.normalizers.ragged import group_ids, size_buckets

__all__ = [
    "CONFIG_KEY",
    "PREFIX",
    "estimator",
    "group_ids",
    "merged_options",
    "normalize_ragged",
    "options_from_config",
    "register",
    "size_buckets",
    "stats_metrics",
]

#: verl estimator name = PREFIX + normalizer name.
PREFIX = "grponorm_"

#: Key of the normalizer options mapping in verl's ``algorithm`` config section.
CONFIG_KEY = "grponorm"

def normalize_ragged(
    scores: Any, index: Any, method: str = "group_std", **options: Any
) -> tuple[Any, AdvantageStats]:
    """Per-sequence advantages for ragged, interleaved groups: ``(advantages (bs,), stats)``.

    :func:`grponorm.normalizers.normalize_ragged_with_stats` (kept here under its old name; see
    there for the rules and the ``context=`` / ``state=`` keywords).
    """
    return normalize_ragged_with_stats(scores, index, method, **options)


def refusal(name: str, options: Mapping[str, Any]) -> str | None:
    """Why verl cannot run normalizer ``name`` with ``options``, or None if it can."""
    spec = get_spec(name)
    needs = spec.needs(options)
    if "components" in needs:
        return (
            f"{PREFIX}{name}: verl passes no reward components to a custom advantage estimator "
            f"(only its own 'gdpo' branch receives non_tensor_batch; verl PR #7473). Use verl's "
            f"algorithm.adv_estimator=gdpo with algorithm.gdpo_reward_keys instead"
        )
    if "prompt_ids" in needs and spec.has_state(options):
        return (
            f"{PREFIX}{name}: verl's index is a fresh uuid4 per prompt per step, so state keyed "
            f"by prompt id would never be found again; use {name} with persist=False"
        )
    return None


# --------------------------------------------------------------------------------------------
# verl estimators
# --------------------------------------------------------------------------------------------


def options_from_config(config: Any) -> dict[str, Any]:
    """Normalizer options from verl's algorithm config: the mapping under :data:`CONFIG_KEY`.

    Args:
        config: ``None``, a mapping (OmegaConf ``DictConfig``, dict) or verl's ``AlgoConfig``
            (whose fixed fields never hold the key: no options).

    Returns:
        A plain dict of options (empty if the key is absent or null).

    Raises:
        TypeError: If the key holds something other than a mapping.
    """
    if config is None or not hasattr(config, "get"):
        return {}
    options = config.get(CONFIG_KEY, None)
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"algorithm.{CONFIG_KEY} must be a mapping of normalizer options (e.g. "
            f"+algorithm.{CONFIG_KEY}.eps=1e-4); got {type(options).__name__}"
        )
    return {str(key): value for key, value in options.items()}


def merged_options(defaults: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """The options an estimator call runs with: its own ``defaults`` (the keyword arguments of
    :func:`estimator`) overridden key by key by those of verl's config
    (:func:`options_from_config`): the run's config wins.

    Args:
        defaults: The estimator's options.
        config: verl's algorithm config (see :func:`options_from_config`).

    Returns:
        A new dict; neither input is changed.
    """
    return {**defaults, **options_from_config(config)}


def estimator(name: str, **options: Any) -> Callable[..., tuple[Any, Any]]:
    """A verl advantage estimator that applies the registry normalizer ``name`` per uid group.

    The options are checked once here (:func:`grponorm.normalizers.check_options`), so a bad
    name or option fails at construction, as does a normalizer verl cannot feed
    (:func:`refusal`). Options found in verl's config at call time (:func:`options_from_config`)
    override these (checked once per distinct set).

    Args:
        name: Registered normalizer name (see :func:`grponorm.available_normalizers`).
        **options: Default options of that normalizer.

    Returns:
        ``fn(token_level_rewards, response_mask, index=None, config=None, **kwargs)`` ->
        ``(advantages, returns)``, both ``(bs, T)`` in ``token_level_rewards``' dtype; extra
        keyword arguments verl passes (``reward_baselines``, ...) are ignored. The function
        carries ``grponorm_method``, ``grponorm_options``, ``last_stats`` (the
        :class:`AdvantageStats` of its last call, or None) and ``grponorm_state`` (the
        normalizer's per-run state, or None).
    """
    defaults = check_options(name, options)
    reason = refusal(name, defaults)
    if reason is not None:
        raise ValueError(reason)
    return _estimator(name, defaults)


def _estimator(name: str, defaults: dict[str, Any]) -> Callable[..., tuple[Any, Any]]:
    checked: set[str] = set()

    def grponorm_estimator(
        token_level_rewards: Any,
        response_mask: Any,
        index: Sequence[Any] | np.ndarray | None = None,
        config: Any = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        import torch

        if index is None:
            raise ValueError(
                f"{PREFIX}{name} groups rows by their uid: verl passes index=uid when the batch "
                f"has non_tensor_batch['uid']"
            )
        merged = merged_options(defaults, config)
        key = repr(sorted(merged.items()))
        if key not in checked:
            check_options(name, merged)
            reason = refusal(name, merged)
            if reason is not None:
                raise ValueError(reason)
            checked.add(key)
        spec = get_spec(name)
        if spec.has_state(merged) and grponorm_estimator.grponorm_state is None:
            grponorm_estimator.grponorm_state = make_state(name, **merged)
        state = grponorm_estimator.grponorm_state if spec.has_state(merged) else None
        with torch.no_grad():
            scores = token_level_rewards.sum(dim=-1).double()  # (bs,)
            context = NormalizerContext.build(  # row form; verl has no reward components
                name, merged, caller="verl",
                lengths=lambda: response_mask.sum(dim=-1).double(),  # (bs,)
                prompt_ids=lambda: index,  # (bs,) the uids
            )
            adv, stats = normalize_ragged_with_stats(
                scores, index, name, context=context, state=state, **merged
            )  # (bs,)
            adv = (adv.unsqueeze(-1) * response_mask).to(token_level_rewards.dtype)  # (bs, T)
        grponorm_estimator.last_stats = stats
        return adv, adv

    grponorm_estimator.__name__ = grponorm_estimator.__qualname__ = f"{PREFIX}{name}"
    grponorm_estimator.__doc__ = f"verl advantage estimator: grponorm normalizer {name!r}."
    grponorm_estimator.grponorm_method = name
    grponorm_estimator.grponorm_options = defaults
    grponorm_estimator.last_stats = None
    grponorm_estimator.grponorm_state = None
    return grponorm_estimator


def _refusing_estimator(name: str, reason: str) -> Callable[..., tuple[Any, Any]]:
    """A registered name that explains, when called, why verl cannot run it."""

    def grponorm_estimator(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        raise ValueError(reason)

    grponorm_estimator.__name__ = grponorm_estimator.__qualname__ = f"{PREFIX}{name}"
    grponorm_estimator.grponorm_method = name
    grponorm_estimator.grponorm_options = {}
    grponorm_estimator.last_stats = None
    grponorm_estimator.grponorm_state = None
    return grponorm_estimator


def stats_metrics(stats: AdvantageStats | None, prefix: str = "grponorm/") -> dict[str, float]:
    """``{prefix + field: value}`` for verl's metrics dict, one per
    :class:`~grponorm.normalizers.AdvantageStats` field (``n_groups``, ``n_flat``, ``frac_flat``,
    ``n_zero_adv``, ``frac_zero_adv``, ``adv_mean``, ``adv_std``, ``adv_abs_max``); empty for None
    (nothing computed)."""
    if stats is None:
        return {}
    return {prefix + key: float(value) for key, value in stats.as_dict().items()}


def register(names: Sequence[str] | None = None) -> list[str]:
    """Registers normalizers in verl's estimator registry as ``grponorm_<name>``.

    Idempotent: a name this module already registered is kept (verl's ``register_adv_est``
    rejects a second, different function under the same name). Call it again after registering
    a new normalizer to add that one.

    Args:
        names: Normalizer names; default every registered one (:func:`available_normalizers`).

    Returns:
        The verl estimator names, in the order of ``names``.

    Raises:
        ImportError: If verl is not installed.
        ValueError: If a ``grponorm_<name>`` estimator was registered by someone else.
    """
    from verl.trainer.ppo import core_algos  # optional heavy dependency

    keys = []
    for name in available_normalizers() if names is None else names:
        key = PREFIX + name
        try:
            current = core_algos.get_adv_estimator_fn(key)
        except ValueError:
            current = None
        if current is None:
            reason = refusal(name, {})
            fn = _estimator(name, {}) if reason is None else _refusing_estimator(name, reason)
            core_algos.register_adv_est(key)(fn)
        elif getattr(current, "grponorm_method", None) != name:
            raise ValueError(f"verl estimator {key!r} is already registered by {current!r}")
        keys.append(key)
    return keys


def __getattr__(name: str) -> Any:
    """PEP 562 hook: resolving ``plugin`` (the ``verl.plugins`` entry point) registers."""
    if name == "plugin":
        register()
        return register
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "verl" in sys.modules:  # imported by verl (VERL_USE_EXTERNAL_MODULES) or after it
    register()
