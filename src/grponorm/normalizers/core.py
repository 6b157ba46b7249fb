"""The entry points: :func:`normalize`, :func:`normalize_with_stats`, :func:`check_options`
and :class:`AdvantageStats` (re-exported by :mod:`grponorm.normalizers`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .context import prepare, probe_context
from .ops import (
    Array,
    _first_position,
    _is_torch,
    _std,
    _where,
    _zero_variance_mask,
    flat_mask,
    zero_advantage_mask,
)
from .registry import NormalizerContext, NormalizerOptionError, check_names, get_spec

__all__ = ["AdvantageStats", "advantage_stats", "check_options", "normalize",
           "normalize_with_stats"]

_PROBE = [[0.0, 1.0, 1.0, 0.0]]  # one binary group: every built-in normalizer accepts it

# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdvantageStats:
    """Summary of one batch of advantages (for logging).

    Two group counts, which differ for normalizers whose formula moves flat groups
    (``zero_flat=False``: ``batch_zscore``, ``running_std``, ``shrinkage``, ``krpo``, ``gdpo``)
    and for groups that are not flat yet get no signal (e.g. ``grpo_passk`` off its argmax):

    Attributes:
        n_groups: Number of groups (prompts) in the batch.
        n_flat: Flat groups: all rewards equal and, for a normalizer that reads per-component
            rewards (context ``components``, e.g. ``gdpo``), every component equal within the
            group too (:func:`~grponorm.normalizers.ops.flat_mask`). A singleton is flat. Their
            advantage is exactly 0 when the normalizer zeroes flat groups (``zero_flat``), else
            whatever its formula gives.
        frac_flat: ``n_flat / n_groups`` (0 for no groups).
        n_zero_adv: Groups whose advantages are all exactly 0 (they contribute no gradient).
        frac_zero_adv: ``n_zero_adv / n_groups`` (0 for no groups).
        adv_mean: Mean advantage over all ``n_groups * G`` entries.
        adv_std: Population std (ddof=0) of the advantages over all entries.
        adv_abs_max: Largest absolute advantage.
    """

    n_groups: int
    n_flat: int
    frac_flat: float
    n_zero_adv: int
    frac_zero_adv: float
    adv_mean: float
    adv_std: float
    adv_abs_max: float

    def as_dict(self) -> dict[str, float | int]:
        """Returns the fields as a plain dict (e.g. for a JSONL metrics line)."""
        return dataclasses.asdict(self)


def _apply(
    rewards: Any, method: str, options: dict[str, Any], context: Any, state: Any
) -> tuple[Array, Array]:
    """``(advantages (n_groups, G), flat (n_groups,))``: the normalizer's result with the
    central rules applied, and the flat groups (:func:`flat_mask`, components included when
    the normalizer reads them)."""
    spec, x, kwargs = prepare(rewards, method, options, context, state)  # x: (n_groups, G)
    flat = flat_mask(x, kwargs.get("components"))  # (n_groups,)
    adv = spec.fn(x, **options, **kwargs)
    if _is_torch(x) != _is_torch(adv):
        raise TypeError(
            f"normalizer {method!r} returned {type(adv).__name__} for {type(x).__name__} input"
        )
    if tuple(adv.shape) != tuple(x.shape):
        raise ValueError(
            f"normalizer {method!r} returned shape {tuple(adv.shape)}; expected {tuple(x.shape)}"
        )
    adv = adv.to(dtype=x.dtype) if _is_torch(x) else np.asarray(adv, dtype=np.float64)
    mask = _zero_variance_mask(x)  # (n_groups,)
    if spec.zeroes_flat(options):
        adv = _where(mask[:, None], 0.0, adv)  # exact zeros, never an eps-amplified residue
    bad = ~(adv.isfinite() if _is_torch(adv) else np.isfinite(adv))
    if bool(bad.any()):
        i, j = _first_position(bad)
        raise FloatingPointError(
            f"normalizer {method!r} produced a non-finite advantage {float(adv[i, j])!r} at "
            f"(group {i}, sample {j}); the rewards are too large for this normalizer"
        )
    return adv, flat


def normalize(
    rewards: Any,
    method: str = "group_std",
    *,
    context: NormalizerContext | None = None,
    state: Any = None,
    **options: Any,
) -> Array:
    """Turns grouped rewards into advantages with the registered normalizer ``method``.

    Args:
        rewards: ``(n_groups, G)`` rewards: a NumPy array (or nested list) or a torch tensor.
        method: Registered normalizer name; see :func:`available_normalizers`.
        context: :class:`NormalizerContext` (grouped form) with what the normalizer needs
            (``get_spec(method).needs(options)``); extra fields are ignored.
        state: The normalizer's per-run state (:func:`make_state`) if it keeps one; updated in
            place. Must be None for a stateless normalizer.
        **options: Keyword options of that normalizer (e.g. ``eps``, ``ddof``, ``alpha``); an
            option it does not take raises :class:`NormalizerOptionError` (a TypeError).

    Returns:
        ``(n_groups, G)`` advantages: NumPy float64 for NumPy input; for a tensor, a tensor of
        the same floating dtype (float32 for integer/bool input) on the same device. Groups whose
        rewards are all equal get exactly 0 (unless the spec declares ``zero_flat=False``:
        normalizers whose formula moves such a group, e.g. a batch-mean baseline).

    Raises:
        ValueError: If rewards are not 2-D, have an empty dimension, or contain NaN/inf (the
            message names the first bad (group, sample)), or an option value is invalid.
        UnknownNormalizerError: If ``method`` is not registered.
        TypeError: If an option is not accepted by the normalizer.
        MissingContextError: If the normalizer needs context or state the call did not give.
    """
    adv, _ = _apply(rewards, method, options, context, state)
    return adv


def normalize_with_stats(
    rewards: Any,
    method: str = "group_std",
    *,
    context: NormalizerContext | None = None,
    state: Any = None,
    **options: Any,
) -> tuple[Array, AdvantageStats]:
    """Like :func:`normalize`, and also returns :class:`AdvantageStats` for the batch
    (``n_flat``: the flat groups, ``n_zero_adv``: the groups whose advantages are all 0)."""
    adv, flat = _apply(rewards, method, options, context, state)
    n_zero_adv = int(zero_advantage_mask(adv).sum())
    return adv, advantage_stats(adv, int(flat.shape[0]), int(flat.sum()), n_zero_adv)


def advantage_stats(adv: Any, n_groups: int, n_flat: int, n_zero_adv: int) -> AdvantageStats:
    """:class:`AdvantageStats` of advantage values of any shape (NumPy or torch): mean,
    population std and largest magnitude over all entries (0 for no entries), with the group
    counts given (``n_flat`` flat groups, ``n_zero_adv`` groups with all-zero advantages; see
    :class:`AdvantageStats`). Half-precision tensors are summarized in float32 (their own
    reductions are too coarse for logging); other dtypes as they are."""
    a = adv.detach() if _is_torch(adv) else np.asarray(adv, dtype=np.float64)
    if _is_torch(a) and a.dtype.itemsize < 4:
        a = a.float()
    empty = (a.numel() if _is_torch(a) else a.size) == 0
    return AdvantageStats(
        n_groups=n_groups,
        n_flat=n_flat,
        frac_flat=n_flat / n_groups if n_groups else 0.0,
        n_zero_adv=n_zero_adv,
        frac_zero_adv=n_zero_adv / n_groups if n_groups else 0.0,
        adv_mean=0.0 if empty else float(a.mean()),
        adv_std=0.0 if empty else float(_std(a, axis=None, ddof=0).reshape(())),
        adv_abs_max=0.0 if empty else float(abs(a).max()),
    )


def check_options(method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validates a normalizer name and its options without any real rewards.

    Checks, in order: the name (registered), the option names (by the function's signature),
    the normalizer's declared value checks (``spec.check``), then one probe call on a small
    binary batch with synthetic context and a fresh state, so that value checks written inside
    the function run too.

    Args:
        method: Registered normalizer name.
        options: Its keyword options.

    Returns:
        The options as a plain dict.

    Raises:
        UnknownNormalizerError: ``method`` is not registered (a KeyError and a ValueError; the
            message lists the names).
        NormalizerOptionError: an option it does not take, or a value it rejects (a TypeError
            and a ValueError; the message names the normalizer and the option).
    """
    opts = dict(options or {})
    spec = get_spec(method)
    check_names(spec, opts)
    try:
        if spec.check is not None:
            spec.check(opts)
        probe = np.asarray(_PROBE)  # (1, 4)
        context = probe_context(method, opts, probe)
        normalize(probe, method, context=context, state=spec.make_state(opts), **opts)
    except NormalizerOptionError:
        raise
    except (TypeError, ValueError) as err:
        raise NormalizerOptionError(f"normalizer {method!r}: bad option value: {err}") from err
    return opts
