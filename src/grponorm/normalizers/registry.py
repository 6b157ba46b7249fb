"""The normalizer registry: name -> pure function ``f(rewards (n_groups, G), **options)``."""

from __future__ import annotations

from collections.abc import Callable

from .ops import Array

__all__ = ["NORMALIZERS", "UnknownNormalizerError", "available_normalizers", "get_normalizer",
           "register_normalizer"]

Normalizer = Callable[..., Array]

#: The registry: normalizer name -> pure function ``f(rewards, **options) -> advantages``.
NORMALIZERS: dict[str, Normalizer] = {}


class UnknownNormalizerError(KeyError, ValueError):
    """Raised for a normalizer name that is not registered (both a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all.
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Decorator that registers ``fn`` in :data:`NORMALIZERS` under ``name``.

    The function receives a validated floating reward matrix of shape ``(n_groups, G)`` (NumPy
    float64 or a floating torch tensor) and keyword-only options, and returns advantages of the
    same shape and array type. It need not special-case all-equal groups: :func:`normalize`
    zeroes them afterwards.

    Args:
        name: Registry key, used as ``normalize(rewards, method=name)``.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"normalizer name must be a non-empty string; got {name!r}")

    def decorator(fn: Normalizer) -> Normalizer:
        if name in NORMALIZERS:
            raise ValueError(
                f"normalizer {name!r} is already registered (by {NORMALIZERS[name].__qualname__})"
            )
        if not callable(fn):
            raise TypeError(f"normalizer {name!r} must be callable; got {type(fn).__name__}")
        NORMALIZERS[name] = fn
        return fn

    return decorator


def available_normalizers() -> list[str]:
    """Returns the registered normalizer names, sorted."""
    return sorted(NORMALIZERS)


def get_normalizer(name: str) -> Normalizer:
    """Returns the registered normalizer function called ``name``.

    Raises:
        UnknownNormalizerError: (a KeyError and a ValueError) if ``name`` is not registered; the
            message lists the available names.
    """
    try:
        return NORMALIZERS[name]
    except (KeyError, TypeError):
        raise UnknownNormalizerError(
            f"unknown normalizer {name!r}; available: {', '.join(available_normalizers())}"
        ) from None


# --------------------------------------------------------------------------------------------
# Backend helpers: the only place that knows NumPy from torch.
