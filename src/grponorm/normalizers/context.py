"""Context validation and state creation: what every call of a normalizer goes through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .ops import Array, as_numpy, as_rewards, first_position, is_torch
from .registry import (
    MissingContextError,
    NormalizerContext,
    NormalizerSpec,
    check_names,
    get_spec,
)

__all__ = ["make_state", "prepare", "probe_context", "validate_context"]


def make_state(method: str, **options: Any) -> Any:
    """A fresh per-run state for ``method`` with ``options``, or None if it keeps none.

    The object has ``state_dict()`` (plain JSON-able values) and ``load_state_dict(d)``: save
    the former with a checkpoint and call the latter on a fresh :func:`make_state` at resume.

    Raises:
        UnknownNormalizerError: ``method`` is not registered.
        NormalizerOptionError: an option it does not take.
    """
    spec = get_spec(method)
    check_names(spec, options)
    return spec.make_state(options)


#: Completion length of every sample of a synthetic probe context (tokens).
PROBE_LENGTH = 3.0


def probe_context(
    method: str, options: Mapping[str, Any], rewards: Any
) -> NormalizerContext | None:
    """Synthetic context of the right shapes for probing ``method`` on ``rewards``
    ``(n_groups, G)`` without real data (:func:`grponorm.normalizers.check_options`, the
    ``G = 1`` check of a training config), built by :meth:`NormalizerContext.build`: every
    completion :data:`PROBE_LENGTH` tokens long, prompt ids ``"probe0" ..`` (one per group),
    ``K`` components each equal to the reward (``K = len(options["weights"])`` when the
    options give weights, else 2), and the oracle fields at pi* = 1/2.

    Returns:
        The context (grouped form), or None when the normalizer needs none.
    """
    x = np.asarray(rewards, dtype=np.float64)  # (n_groups, G)
    weights = options.get("weights")
    k = len(weights) if isinstance(weights, (list, tuple)) else 2
    return NormalizerContext.build(
        method,
        options,
        caller="the option probe",
        lengths=lambda: np.full(x.shape, PROBE_LENGTH),  # (n_groups, G)
        prompt_ids=lambda: [f"probe{i}" for i in range(x.shape[0])],  # (n_groups,)
        components=lambda: np.repeat(x[:, :, None], k, axis=2),  # (n_groups, G, K)
        pi_star=lambda: np.full(x.shape[0], 0.5),  # (n_groups,)
        hessian_norm=lambda: np.full(x.shape[0], 0.25),  # (n_groups,)
    )


def _as_lengths(lengths: Any, shape: tuple[int, ...], like: Array) -> Array:
    if is_torch(like):
        import torch

        x = torch.as_tensor(lengths, device=like.device)
        x = x.to(like.dtype if like.dtype.itemsize >= 4 else torch.float32)
        bad = ~torch.isfinite(x) | (x < 0)
    else:
        x = np.asarray(lengths, dtype=np.float64)
        bad = ~np.isfinite(x) | (x < 0)
    if tuple(x.shape) != shape:
        raise ValueError(f"context lengths must have shape {shape}; got {tuple(x.shape)}")
    if bool(bad.any()):
        i, j = first_position(bad)
        raise ValueError(
            f"context lengths must be finite and >= 0; got {float(x[i, j])!r} "
            f"at (group {i}, sample {j})"
        )
    return x


def _as_components(components: Any, shape: tuple[int, ...], like: Array) -> Array:
    if is_torch(like):
        import torch

        x = torch.as_tensor(components, device=like.device)
        x = x.to(like.dtype) if x.is_floating_point() or like.is_floating_point() else x
        finite = torch.isfinite(x)
    else:
        x = np.asarray(components, dtype=np.float64)
        finite = np.isfinite(x)
    if x.ndim != 3 or tuple(x.shape[:2]) != shape or x.shape[2] < 1:
        raise ValueError(
            f"context components must have shape (n_groups, G, K) = {shape} + (K >= 1,); "
            f"got {tuple(x.shape)}"
        )
    if not bool(finite.all()):
        raise ValueError("context components must be finite (a reward function returned None?)")
    return x


def _as_group_values(name: str, value: Any, n_groups: int) -> np.ndarray:
    """One finite, non-negative float per group (the bandit's oracle context)."""
    x = as_numpy(value).reshape(-1) if is_torch(value) else np.asarray(value, dtype=np.float64)
    if x.shape != (n_groups,):
        raise ValueError(f"context {name} must have shape (n_groups,) = ({n_groups},); got "
                         f"{tuple(x.shape)}")
    if not np.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"context {name} must be finite and >= 0")
    return x


def _as_prompt_ids(prompt_ids: Any, n_groups: int) -> list[str]:
    if isinstance(prompt_ids, (str, bytes)):
        raise TypeError("context prompt_ids must be a sequence of ids, one per group")
    ids = prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else list(prompt_ids)
    if len(ids) != n_groups:
        raise ValueError(f"context prompt_ids has {len(ids)} ids for {n_groups} groups")
    return [str(i) for i in ids]


def validate_context(
    method: str, needs: tuple[str, ...], context: NormalizerContext | None, x: Array
) -> dict[str, Any]:
    """The needed context fields, validated (grouped form), as keyword arguments.

    Raises:
        MissingContextError: a needed field is not given (the message names it and the
            normalizer).
        ValueError: a field has the wrong shape or non-finite / negative values.
    """
    if not needs:
        return {}
    if context is not None and not isinstance(context, NormalizerContext):
        raise TypeError(f"context must be a NormalizerContext; got {type(context).__name__}")
    missing = [f for f in needs if context is None or getattr(context, f) is None]
    if missing:
        raise MissingContextError(
            f"normalizer {method!r} needs context {', '.join(missing)}: pass "
            f"context=NormalizerContext({', '.join(f'{m}=...' for m in missing)})"
        )
    shape = tuple(x.shape)
    out: dict[str, Any] = {}
    for name in needs:
        value = getattr(context, name)
        if name == "lengths":
            out[name] = _as_lengths(value, shape, x)
        elif name == "components":
            out[name] = _as_components(value, shape, x)
        elif name in ("pi_star", "hessian_norm"):
            out[name] = _as_group_values(name, value, shape[0])
        else:
            out[name] = _as_prompt_ids(value, shape[0])
    return out


def prepare(
    rewards: Any,
    method: str,
    options: Mapping[str, Any],
    context: Any,
    state: Any,
    needs: tuple[str, ...] | None = None,
) -> tuple[NormalizerSpec, Array, dict[str, Any]]:
    """``(spec, rewards (n_groups, G), keyword arguments for context and state)`` for one call,
    all validated (``needs``: the context fields to validate; default the spec's)."""
    spec = get_spec(method)
    check_names(spec, options)
    x = as_rewards(rewards)  # (n_groups, G), floating
    needs = spec.needs(options) if needs is None else needs
    kwargs = validate_context(method, needs, context, x)
    if spec.has_state(options):
        if state is None:
            raise MissingContextError(
                f"normalizer {method!r} keeps state across steps with these options: pass "
                f"state=make_state({method!r}, **options) and keep it for the run"
            )
        kwargs["state"] = state
    elif state is not None:
        raise ValueError(f"normalizer {method!r} keeps no state with these options; got one")
    return spec, x, kwargs
