"""Normalization of ragged, interleaved groups: one row per sample, a group label per row.

Used by verl (groups from the ``index`` uids, any sizes, rows anywhere in the batch) and by TRL
(groups with unscored rows, normalized over their scored rows). Rules:

- group-wise normalizers: rows are bucketed by group size (:func:`size_buckets`), each bucket is
  one rectangular ``(k, G)`` call of :func:`grponorm.normalizers.normalize_with_stats` (with the
  context sliced alike and the state passed through), results scattered back -- exact;
- batch-level normalizers (``spec.is_batch_level(options)``): with every group the same size,
  one rectangular call (exact); on ragged groups the normalizer's own ``ragged``
  implementation if it registered one, else ValueError -- never a per-bucket batch statistic;
- singleton groups get 0 without calling the normalizer when the normalizer zeroes flat groups
  (a singleton is trivially flat; ``rloo`` would refuse ``G = 1``); a normalizer with
  ``zero_flat=False`` is called on them too, and they get what its formula gives.

The stats count flat groups (singletons included; with the components when the normalizer reads
them) and groups whose advantages are all 0 over the whole batch, as
:class:`~grponorm.normalizers.AdvantageStats` defines them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .context import prepare
from .core import advantage_stats, normalize_with_stats
from .registry import MissingContextError, NormalizerContext, get_spec

__all__ = ["group_ids", "normalize_ragged", "normalize_ragged_with_stats", "size_buckets"]


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


def _is_np(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _zeros_like(x: Any) -> Any:
    return np.zeros_like(x) if _is_np(x) else x.new_zeros(x.shape)


def _take(x: Any, rows: np.ndarray) -> Any:
    """``x[rows]`` for a NumPy array, a torch tensor (index moved to its device) or a list."""
    if _is_np(x):
        return x[rows]
    if isinstance(x, (list, tuple)):
        return np.asarray(x, dtype=object)[rows]
    import torch

    return x[torch.as_tensor(rows, device=x.device)]


def _put(out: Any, rows: np.ndarray, values: Any) -> None:
    if _is_np(out):
        out[rows] = values
        return
    import torch

    out[torch.as_tensor(rows, device=out.device)] = values


def _check_finite(scores: Any) -> None:
    finite = np.isfinite(scores) if _is_np(scores) else scores.isfinite()
    bad = ~finite  # (bs,)
    if bool(bad.any()):
        row = int(np.flatnonzero(np.asarray(bad.tolist()))[0])
        raise ValueError(f"sequence scores must be finite; got {float(scores[row])!r} at row {row}")


def _bucket_context(context: NormalizerContext | None, rows: np.ndarray) -> Any:
    """The grouped-form context of one bucket ``rows (k, G)`` from the row-form context."""
    if context is None:
        return None
    fields = {}
    if context.lengths is not None:
        fields["lengths"] = _take(_rows(context.lengths), rows)  # (k, G)
    if context.prompt_ids is not None:
        ids = np.asarray(
            context.prompt_ids.tolist() if hasattr(context.prompt_ids, "tolist")
            else list(context.prompt_ids), dtype=object,
        )
        fields["prompt_ids"] = ids[rows[:, 0]]  # (k,) the id of each group's first row
    if context.components is not None:
        fields["components"] = _take(_rows(context.components), rows)  # (k, G, K)
    for name in ("pi_star", "hessian_norm"):  # row form (bs,): each group's first row
        if getattr(context, name) is not None:
            fields[name] = np.asarray(getattr(context, name), dtype=np.float64)[rows[:, 0]]
    return NormalizerContext(**fields)


def _rows(x: Any) -> Any:
    return x if _is_np(x) or hasattr(x, "device") else np.asarray(x, dtype=np.float64)


def _check_rows(context: NormalizerContext | None, bs: int) -> None:
    if context is None:
        return
    for name in context.given():
        n = len(getattr(context, name))
        if n != bs:
            raise ValueError(f"context {name} has {n} rows for {bs} scores")


def normalize_ragged_with_stats(
    scores: Any,
    index: Any,
    method: str = "group_std",
    *,
    context: NormalizerContext | None = None,
    state: Any = None,
    **options: Any,
) -> tuple[Any, Any]:
    """Per-sequence advantages for groups given by ``index``, ragged and interleaved allowed.

    See the module docstring for the rules.

    Args:
        scores: ``(bs,)`` sequence scores, NumPy or torch (the result keeps type, dtype, device).
        index: ``(bs,)`` group labels (see :func:`group_ids`).
        method: Registered normalizer name.
        context: Row-form :class:`NormalizerContext`: lengths ``(bs,)``, prompt_ids ``(bs,)``,
            components ``(bs, K)``.
        state: The normalizer's per-run state, if it keeps one.
        **options: Options of that normalizer.

    Returns:
        ``(advantages, stats)``: ``(bs,)`` advantages and batch
        :class:`~grponorm.normalizers.AdvantageStats` (groups of size 1 count as flat; the
        moments are over rows).

    Raises:
        ValueError: If lengths differ, a score is not finite, or ``method`` is batch-level
            without a ragged implementation and the groups are ragged.
        UnknownNormalizerError: If ``method`` is not registered.
    """
    spec = get_spec(method)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (bs,); got {tuple(scores.shape)}")
    inverse, n_groups = group_ids(index)  # (bs,)
    if inverse.shape[0] != scores.shape[0]:
        raise ValueError(f"index has {inverse.shape[0]} labels for {scores.shape[0]} rows")
    _check_finite(scores)
    _check_rows(context, int(scores.shape[0]))
    buckets = size_buckets(inverse, n_groups)
    if len(buckets) > 1 and spec.is_batch_level(options):
        if spec.ragged is None:
            raise ValueError(
                f"{method!r} uses one batch-wide statistic and needs every group to have the "
                f"same size; got group sizes {sorted(buckets)}. Use a group-wise normalizer "
                f"(e.g. 'group_std' or 'none'), keep groups uniform, or register {method!r} "
                f"with a ragged= implementation"
            )
        return _ragged_call(spec, scores, inverse, n_groups, context, state, options)
    out = _zeros_like(scores)  # (bs,)
    n_flat = 0
    for size, rows in buckets.items():  # rows: (k, G)
        if size == 1 and spec.zeroes_flat(options):
            n_flat += rows.shape[0]
            continue
        adv, stats = normalize_with_stats(
            _take(scores, rows), method, context=_bucket_context(context, rows), state=state,
            **options,
        )  # (k, G)
        _put(out, rows, adv)
        n_flat += stats.n_flat
    rows_adv = out if _is_np(out) else out.detach().double().cpu().numpy()
    n_zero_adv = _count_zero_adv(rows_adv, inverse, n_groups)
    return out, advantage_stats(rows_adv, n_groups, n_flat, n_zero_adv)  # over the rows, float64


def _count_zero_adv(rows_adv: np.ndarray, inverse: np.ndarray, n_groups: int) -> int:
    """Groups whose rows' advantages ``(bs,)`` are all exactly 0."""
    nonzero = np.zeros(n_groups, dtype=bool)
    np.logical_or.at(nonzero, inverse, rows_adv != 0)  # (n_groups,)
    return int((~nonzero).sum())


def _group_flat(values: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups,)`` True where every row of the group has the same value in every column of
    ``values`` (``(bs,)`` or ``(bs, K)``, float64)."""
    v = values.reshape(values.shape[0], -1)  # (bs, K)
    lo = np.full((n_groups, v.shape[1]), np.inf)
    hi = np.full((n_groups, v.shape[1]), -np.inf)
    np.minimum.at(lo, inverse, v)
    np.maximum.at(hi, inverse, v)
    return ~(hi > lo).any(axis=1)  # singletons included


def _ragged_call(spec, scores, inverse, n_groups, context, state, options):
    """A batch-level normalizer's own ragged implementation, with the central rules applied."""
    x = np.asarray(scores, dtype=np.float64) if _is_np(scores) else scores
    _, x2, kwargs = prepare(x[None, :], spec.name, options, None, state, needs=())  # (1, bs)
    for name in spec.needs(options):
        value = None if context is None else getattr(context, name)
        if value is None:
            raise MissingContextError(
                f"normalizer {spec.name!r} needs context {name}: pass "
                f"context=NormalizerContext({name}=...) (row form)"
            )
        kwargs[name] = [str(v) for v in value] if name == "prompt_ids" else _rows(value)
    adv = spec.ragged(x2[0], inverse, n_groups, **options, **kwargs)  # (bs,)
    s = x2[0] if _is_np(x2) else x2[0].detach().double().cpu().numpy()
    same = _group_flat(s, inverse, n_groups)  # (n_groups,) all-equal groups, singletons included
    flat = same
    if "components" in kwargs:  # flat in every component too (AdvantageStats.n_flat)
        comp = kwargs["components"]
        comp = comp if _is_np(comp) else comp.detach().double().cpu().numpy()
        flat = same & _group_flat(np.asarray(comp, dtype=np.float64), inverse, n_groups)
    if spec.zeroes_flat(options):
        row_flat = same[inverse]  # (bs,)
        if _is_np(adv):
            adv = np.where(row_flat, 0.0, adv)
        else:
            import torch

            adv = torch.where(torch.as_tensor(row_flat, device=adv.device), 0.0, adv)
    if not _is_np(scores):
        adv = adv.to(scores.dtype)
    rows_adv = adv if _is_np(adv) else adv.detach().double().cpu().numpy()
    n_zero_adv = _count_zero_adv(rows_adv, inverse, n_groups)
    return adv, advantage_stats(rows_adv, n_groups, int(flat.sum()), n_zero_adv)


def normalize_ragged(
    scores: Any,
    index: Any,
    method: str = "group_std",
    *,
    context: NormalizerContext | None = None,
    state: Any = None,
    **options: Any,
) -> Any:
    """:func:`normalize_ragged_with_stats` without the stats: ``(bs,)`` advantages."""
    adv, _ = normalize_ragged_with_stats(
        scores, index, method, context=context, state=state, **options
    )
    return adv
