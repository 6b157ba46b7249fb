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
group-wise normalizer. A singleton group gets 0 (no normalizer is called for it: ``rloo`` needs
``G >= 2``) and an all-equal group gets exactly 0. Differences from verl's built-ins: verl passes
a singleton's raw score through (``grpo``: ``score / (1 + 1e-6)``, ``rloo``: ``score``), and for
an all-equal group ``grpo`` returns the rounding residue ``(r - mean) / 1e-6`` where grponorm
returns exactly 0.

Batch-level normalizers (:data:`BATCH_LEVEL_NORMALIZERS`: ``batch_std``, ``gpg``, and ``bnpo``
unless ``alpha`` and ``beta`` are fixed) couple all groups through a batch-wide statistic, so
bucketing would give each bucket its own: they raise ValueError on ragged input (several group
sizes, singletons included) and are exact when every group has the same size.

Options. Normalizer options (``eps``, ``ddof``, ``alpha``, ...) come from two places, merged with
the run's config winning: the keyword arguments of :func:`estimator`, and the mapping
``algorithm.grponorm`` of verl's config (verl passes ``config=self.config.algorithm``, an OmegaConf
``DictConfig`` in struct mode, so the key is added with Hydra's ``+``:
``+algorithm.grponorm.eps=1e-4``). verl's ``AlgoConfig`` dataclass has fixed fields and no room
for extra keys: given one, no config options are read. ``norm_adv_by_std_in_grpo`` and
``epsilon`` belong to verl's ``grpo`` and are ignored here (pick ``grponorm_none`` instead).

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
``critic/advantages/{mean,max,min}``; grponorm's stats add the zero-variance fraction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from grponorm.normalizers import (
    AdvantageStats,
    advantage_stats,
    available_normalizers,
    get_normalizer,
    normalize,
    normalize_with_stats,
)

__all__ = [
    "BATCH_LEVEL_NORMALIZERS",
    "CONFIG_KEY",
    "PREFIX",
    "estimator",
    "group_ids",
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

#: Normalizers whose result couples groups through a batch-wide statistic, each with a predicate
#: of its options that is True when it does: exact only when every group has the same size,
#: ValueError on ragged input. Add an entry when registering such a normalizer.
BATCH_LEVEL_NORMALIZERS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "batch_std": lambda options: True,  # one batch-wide std
    "gpg": lambda options: True,  # one batch-wide alpha = B / M
    "bnpo": lambda options: options.get("alpha") is None,  # alpha, beta fitted over the batch
}


# --------------------------------------------------------------------------------------------
# Grouping (pure NumPy; no verl, no torch)
# --------------------------------------------------------------------------------------------


def group_ids(index: Any) -> tuple[np.ndarray, int]:
    """Maps each row's group label (uid) to a dense id, in order of first appearance.

    Args:
        index: One hashable label per row: a NumPy array (verl's object array of uid strings),
            a torch tensor, or any sequence.

    Returns:
        ``(inverse, n_groups)``: ``inverse`` has shape ``(bs,)``, dtype int64, values in
        ``0 .. n_groups - 1``.

    Raises:
        TypeError: If ``index`` is a string or a label is unhashable (e.g. a 2-D index).
    """
    if isinstance(index, (str, bytes)):
        raise TypeError("index must be a sequence of group labels, not a string")
    labels = index.tolist() if hasattr(index, "tolist") else list(index)
    ids: dict[Any, int] = {}
    inverse = np.fromiter(
        (ids.setdefault(label, len(ids)) for label in labels), dtype=np.int64, count=len(labels)
    )  # (bs,)
    return inverse, len(ids)


def size_buckets(inverse: np.ndarray, n_groups: int) -> dict[int, np.ndarray]:
    """Buckets groups by size: ``{G: rows}`` with ``rows`` of shape ``(k, G)``.

    Row ``j`` of ``rows`` holds the batch row indices of one group of size ``G`` in batch order;
    groups appear in id order. Every batch row appears exactly once over all buckets.

    Args:
        inverse: ``(bs,)`` dense group ids (see :func:`group_ids`).
        n_groups: Number of groups (``inverse.max() + 1``).
    """
    counts = np.bincount(inverse, minlength=n_groups)  # (n_groups,)
    order = np.argsort(inverse, kind="stable")  # (bs,) rows by group, batch order within
    starts = np.cumsum(counts) - counts  # (n_groups,) first position of each group in order
    buckets = {}
    for size in np.unique(counts[counts > 0]):
        groups = np.flatnonzero(counts == size)  # (k,)
        buckets[int(size)] = order[starts[groups][:, None] + np.arange(size)]  # (k, G)
    return buckets


def _zeros_like(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    return x.new_zeros(x.shape)


def _take(x: Any, rows: np.ndarray) -> Any:
    """``x[rows]`` for a NumPy array or a torch tensor (index moved to the tensor's device)."""
    if isinstance(x, np.ndarray):
        return x[rows]
    import torch

    return x[torch.as_tensor(rows, device=x.device)]


def _put(out: Any, rows: np.ndarray, values: Any) -> None:
    if isinstance(out, np.ndarray):
        out[rows] = values
        return
    import torch

    out[torch.as_tensor(rows, device=out.device)] = values


def _check_finite(scores: Any) -> None:
    finite = np.isfinite(scores) if isinstance(scores, np.ndarray) else scores.isfinite()
    bad = ~finite  # (bs,)
    if bool(bad.any()):
        row = int(np.flatnonzero(np.asarray(bad.tolist()))[0])
        raise ValueError(f"sequence scores must be finite; got {float(scores[row])!r} at row {row}")


def _is_batch_level(method: str, options: Mapping[str, Any]) -> bool:
    couples = BATCH_LEVEL_NORMALIZERS.get(method)
    return couples is not None and bool(couples(options))


def normalize_ragged(
    scores: Any, index: Any, method: str = "group_std", **options: Any
) -> tuple[Any, AdvantageStats]:
    """Per-sequence advantages for groups given by ``index``, ragged and interleaved allowed.

    Groups are bucketed by size (:func:`size_buckets`); each bucket is one rectangular
    ``(k, G)`` call of :func:`grponorm.normalizers.normalize_with_stats`, scattered back to the
    rows. Singleton groups get 0 without calling the normalizer; all-equal groups get exactly 0.

    Args:
        scores: ``(bs,)`` sequence scores, NumPy or torch (the result keeps type, dtype, device).
        index: ``(bs,)`` group labels (see :func:`group_ids`).
        method: Registered normalizer name.
        **options: Options of that normalizer.

    Returns:
        ``(advantages, stats)``: ``(bs,)`` advantages and batch :class:`AdvantageStats`
        (groups of size 1 count as zero-variance; the moments are over rows).

    Raises:
        ValueError: If lengths differ, a score is not finite, or ``method`` is batch-level
            (:data:`BATCH_LEVEL_NORMALIZERS`) and the groups are ragged.
        UnknownNormalizerError: If ``method`` is not registered.
    """
    get_normalizer(method)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (bs,); got {tuple(scores.shape)}")
    inverse, n_groups = group_ids(index)  # (bs,)
    if inverse.shape[0] != scores.shape[0]:
        raise ValueError(f"index has {inverse.shape[0]} labels for {scores.shape[0]} rows")
    _check_finite(scores)
    buckets = size_buckets(inverse, n_groups)
    if len(buckets) > 1 and _is_batch_level(method, options):
        raise ValueError(
            f"{method!r} uses one batch-wide scale and needs every group to have the same size; "
            f"got group sizes {sorted(buckets)}. Use a group-wise normalizer (e.g. 'group_std' "
            f"or 'none') or keep groups uniform"
        )
    out = _zeros_like(scores)  # (bs,)
    n_zero = 0
    for size, rows in buckets.items():  # rows: (k, G)
        if size == 1:
            n_zero += rows.shape[0]
            continue
        adv, stats = normalize_with_stats(_take(scores, rows), method, **options)  # (k, G)
        _put(out, rows, adv)
        n_zero += stats.n_zero_variance
    rows_adv = out if isinstance(out, np.ndarray) else out.detach().double().cpu().numpy()
    return out, advantage_stats(rows_adv, n_groups, n_zero)  # over the (bs,) rows, float64


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


def estimator(name: str, **options: Any) -> Callable[..., tuple[Any, Any]]:
    """A verl advantage estimator that applies the registry normalizer ``name`` per uid group.

    The options are checked once here on a tiny batch, so a bad name or option fails at
    construction. Options found in verl's config at call time (:func:`options_from_config`)
    override these.

    Args:
        name: Registered normalizer name (see :func:`grponorm.available_normalizers`).
        **options: Default options of that normalizer.

    Returns:
        ``fn(token_level_rewards, response_mask, index=None, config=None, **kwargs)`` ->
        ``(advantages, returns)``, both ``(bs, T)`` in ``token_level_rewards``' dtype; extra
        keyword arguments verl passes (``reward_baselines``, ...) are ignored. The function
        carries ``grponorm_method``, ``grponorm_options`` and ``last_stats`` (the
        :class:`AdvantageStats` of its last call, or None).
    """
    normalize(np.array([[0.0, 1.0]]), name, **options)  # fail fast on a bad name or option
    defaults = dict(options)

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
        merged = {**defaults, **options_from_config(config)}
        with torch.no_grad():
            scores = token_level_rewards.sum(dim=-1).double()  # (bs,)
            adv, stats = normalize_ragged(scores, index, name, **merged)  # (bs,)
            adv = (adv.unsqueeze(-1) * response_mask).to(token_level_rewards.dtype)  # (bs, T)
        grponorm_estimator.last_stats = stats
        return adv, adv

    grponorm_estimator.__name__ = grponorm_estimator.__qualname__ = f"{PREFIX}{name}"
    grponorm_estimator.__doc__ = f"verl advantage estimator: grponorm normalizer {name!r}."
    grponorm_estimator.grponorm_method = name
    grponorm_estimator.grponorm_options = defaults
    grponorm_estimator.last_stats = None
    return grponorm_estimator


def stats_metrics(stats: AdvantageStats | None, prefix: str = "grponorm/") -> dict[str, float]:
    """``{prefix + field: value}`` for verl's metrics dict; empty for None (nothing computed)."""
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
            core_algos.register_adv_est(key)(estimator(name))
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
