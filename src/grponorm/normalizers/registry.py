"""The normalizer registry: name -> :class:`NormalizerSpec` (the function and what it needs).

A normalizer is a function ``f(rewards (n_groups, G), **options) -> advantages (n_groups, G)``.
Its spec declares, besides the function:

- ``batch_level``: whether the result couples groups through a batch-wide statistic (then a
  ragged batch cannot be cut into per-size buckets; see :mod:`grponorm.normalizers.ragged`);
- ``context``: the per-sample context it needs (``lengths``, ``prompt_ids``, ``components``; see
  :class:`NormalizerContext`), passed to ``f`` as keyword arguments of those names;
- ``state``: a factory of the per-run state it keeps across calls (passed as ``state=``);
- ``zero_flat``: whether :func:`grponorm.normalizers.normalize` zeroes the groups whose rewards
  are all equal (True for every normalizer whose formula gives 0 there);
- ``check``: value checks of its options that need no rewards (run by :func:`check_options`);
- ``ragged``: optionally, its own implementation on ragged groups.

``batch_level``, ``context``, ``zero_flat`` may be a constant or a predicate of the options (e.g.
``bnpo`` is batch-level only when it fits alpha and beta itself); ``state`` returns None for
options that keep no state.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .ops import Array

__all__ = [
    "CONTEXT_FIELDS",
    "NORMALIZERS",
    "ORACLE_FIELDS",
    "SPECS",
    "MissingContextError",
    "NormalizerContext",
    "NormalizerOptionError",
    "NormalizerSpec",
    "UnknownNormalizerError",
    "available_normalizers",
    "get_normalizer",
    "get_spec",
    "register_normalizer",
]

Normalizer = Callable[..., Array]

#: The context a normalizer may ask for, in :class:`NormalizerContext` field order.
CONTEXT_FIELDS = ("lengths", "prompt_ids", "components", "pi_star", "hessian_norm")

#: The context only the bandit has (a question's true curvature; ``normalizers.oracle``).
ORACLE_FIELDS = ("pi_star", "hessian_norm")

#: Keyword names the registry fills in itself (never user options).
_RESERVED = (*CONTEXT_FIELDS, "state")

#: The registry: normalizer name -> pure function ``f(rewards, **options) -> advantages``.
NORMALIZERS: dict[str, Normalizer] = {}

#: The specs: normalizer name -> :class:`NormalizerSpec`.
SPECS: dict[str, NormalizerSpec] = {}


class UnknownNormalizerError(KeyError, ValueError):
    """Raised for a normalizer name that is not registered (both a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all.
        return str(self.args[0]) if self.args else ""


class NormalizerOptionError(TypeError, ValueError):
    """Raised by :func:`check_options` for an option a normalizer does not take or a value it
    rejects. Both a TypeError (what calling with an unknown keyword raises) and a ValueError (what
    a bad value raises), so callers written for either keep working."""


class MissingContextError(ValueError):
    """Raised when a normalizer needs context (lengths, prompt ids, reward components) or state
    that the call did not give. Never silently replaced by a default."""


@dataclasses.dataclass(frozen=True)
class NormalizerContext:
    """Per-sample context for normalizers that need more than the rewards.

    Grouped form (what :func:`grponorm.normalizers.normalize` takes), for rewards
    ``(n_groups, G)``:

    Attributes:
        lengths: ``(n_groups, G)`` completion lengths in tokens (non-negative).
        prompt_ids: ``(n_groups,)`` one hashable id per group (the prompt it samples); state is
            keyed by ``str(id)``, so ids must be stable across steps (e.g. a dataset column or a
            hash of the prompt text).
        components: ``(n_groups, G, K)`` per-component rewards (e.g. one column per reward
            function), unweighted.
        pi_star: ``(n_groups,)`` each group's true success probability -- the bandit's oracle
            context (:mod:`grponorm.normalizers.oracle`); no language-model source has it.
        hessian_norm: ``(n_groups,)`` the spectral norm of each group's exact logit-space
            Hessian of pi* (the bandit's oracle context).

    :func:`grponorm.normalizers.normalize_ragged` takes the row form: lengths ``(bs,)``,
    prompt_ids ``(bs,)`` (one per row; rows of a group share it), components ``(bs, K)``.
    """

    lengths: Any = None
    prompt_ids: Any = None
    components: Any = None
    pi_star: Any = None
    hessian_norm: Any = None

    def given(self) -> tuple[str, ...]:
        """The names of the fields that are set."""
        return tuple(f for f in CONTEXT_FIELDS if getattr(self, f) is not None)

    @classmethod
    def build(
        cls,
        method: str,
        options: Mapping[str, Any],
        *,
        caller: str,
        lengths: Callable[[], Any] | None = None,
        prompt_ids: Callable[[], Any] | None = None,
        components: Callable[[], Any] | None = None,
        pi_star: Callable[[], Any] | None = None,
        hessian_norm: Callable[[], Any] | None = None,
    ) -> NormalizerContext | None:
        """The context normalizer ``method`` needs with ``options``, from the caller's sources.

        The one constructor of a normalizer's context (native trainer, bandit, TRL, verl, the
        option probes): the fields are ``get_spec(method).needs(options)``, each taken from its
        source, a zero-argument callable called only when its field is needed -- a source may
        be costly or collective (a gather across processes), so the others are never called.
        The values are returned as the sources give them (grouped or row form: the caller's
        choice); :func:`grponorm.normalizers.normalize` validates them.

        Args:
            method: Registered normalizer name.
            options: Its keyword options (they may change what it needs, e.g. ``krpo``'s
                ``persist``).
            caller: Who builds the context, named in the error (e.g. ``"verl"``).
            lengths, prompt_ids, components, pi_star, hessian_norm: The sources of the fields
                (None: the caller has no such data).

        Returns:
            A :class:`NormalizerContext` holding exactly the needed fields, or None when the
            normalizer needs no context.

        Raises:
            UnknownNormalizerError: ``method`` is not registered.
            TypeError: a source is neither None nor callable.
            MissingContextError: a needed field has no source (the message names the field,
                the normalizer and ``caller``).
        """
        sources = {"lengths": lengths, "prompt_ids": prompt_ids, "components": components,
                   "pi_star": pi_star, "hessian_norm": hessian_norm}
        for name, source in sources.items():
            if source is not None and not callable(source):
                raise TypeError(
                    f"NormalizerContext.build: the source of {name} must be a zero-argument "
                    f"callable (evaluated only if {method!r} needs it); got "
                    f"{type(source).__name__}"
                )
        needs = get_spec(method).needs(options)
        if not needs:
            return None
        missing = [name for name in needs if sources.get(name) is None]
        if missing:
            raise MissingContextError(
                f"normalizer {method!r} needs context {', '.join(missing)}, which {caller} "
                f"does not provide"
            )
        return cls(**{name: sources[name]() for name in needs})


Predicate = Callable[[Mapping[str, Any]], Any]


def _resolve(value: Any, options: Mapping[str, Any]) -> Any:
    return value(options) if callable(value) else value


@dataclasses.dataclass(frozen=True)
class NormalizerSpec:
    """What the registry knows about one normalizer (see the module docstring).

    Attributes:
        name: Registry key.
        fn: ``fn(rewards, *, <options>, [<context fields>], [state])``.
        batch_level: bool, or a predicate of the options.
        context: Tuple of :data:`CONTEXT_FIELDS` names, or a predicate returning one.
        state: None (stateless), or a factory ``state(options) -> object | None`` whose object
            has ``state_dict()`` (JSON-able or tensor values) and ``load_state_dict(d)``.
        zero_flat: bool, or a predicate: zero all-equal groups centrally.
        check: None, or ``check(options)`` raising ValueError/TypeError on a bad option value.
        ragged: None, or ``ragged(scores (bs,), inverse (bs,), n_groups, *, <options>,
            [<context fields, row form>], [state]) -> (bs,)``: the normalizer on ragged groups.
        options: The option names ``fn`` takes (keyword parameters other than context/state).
        accepts_any: ``fn`` takes ``**kwargs`` (no name check possible).
    """

    name: str
    fn: Normalizer
    batch_level: bool | Predicate = False
    context: tuple[str, ...] | Predicate = ()
    state: Callable[[Mapping[str, Any]], Any] | None = None
    zero_flat: bool | Predicate = True
    check: Callable[[Mapping[str, Any]], None] | None = None
    ragged: Callable[..., Any] | None = None
    options: tuple[str, ...] = ()
    accepts_any: bool = False

    def is_batch_level(self, options: Mapping[str, Any]) -> bool:
        """True if, with these options, the result couples groups (batch-wide statistic)."""
        return bool(_resolve(self.batch_level, options))

    def needs(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The context fields needed with these options."""
        return tuple(_resolve(self.context, options) or ())

    def zeroes_flat(self, options: Mapping[str, Any]) -> bool:
        """True if all-equal groups are zeroed centrally with these options."""
        return bool(_resolve(self.zero_flat, options))

    def make_state(self, options: Mapping[str, Any]) -> Any:
        """A fresh state for these options, or None if they keep none."""
        return None if self.state is None else self.state(options)

    def has_state(self, options: Mapping[str, Any]) -> bool:
        """True if, with these options, the normalizer keeps state across calls."""
        return self.make_state(options) is not None


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _signature_options(name: str, fn: Normalizer) -> tuple[tuple[str, ...], bool]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: no name check
        return (), True
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
    names = tuple(
        p.name
        for p in params[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _RESERVED
    )
    return names, accepts_any


def register_normalizer(
    name: str,
    *,
    batch_level: bool | Predicate = False,
    context: tuple[str, ...] | Predicate = (),
    state: Callable[[Mapping[str, Any]], Any] | None = None,
    zero_flat: bool | Predicate = True,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    ragged: Callable[..., Any] | None = None,
) -> Callable[[Normalizer], Normalizer]:
    """Decorator that registers ``fn`` under ``name`` with its :class:`NormalizerSpec`.

    The plain case stays one line::

        @register_normalizer("my_norm")
        def my_norm(rewards, *, scale=1.0):
            return scale * ops.center(rewards, axis=1)  # (n_groups, G)

    The function receives a validated floating reward matrix of shape ``(n_groups, G)`` (NumPy
    float64 or a floating torch tensor) and keyword-only options, and returns advantages of the
    same shape and array type. It need not special-case all-equal groups: with ``zero_flat``
    (the default) :func:`grponorm.normalizers.normalize` zeroes them afterwards. Declared context
    fields arrive as keyword arguments of the same names (``lengths``, ``prompt_ids``,
    ``components``, validated, grouped form), a declared state as ``state=``.

    Args:
        name: Registry key, used as ``normalize(rewards, method=name)``.
        batch_level: True if groups are coupled through a batch-wide statistic (or a predicate
            of the options).
        context: Context fields needed (or a predicate of the options returning them).
        state: Factory ``state(options)`` of the per-run state (None for options without any).
        zero_flat: Whether all-equal groups are zeroed centrally (or a predicate). Set False
            where the formula moves such a group (e.g. a batch-mean baseline).
        check: Value checks of the options that need no rewards (used by ``check_options``).
        ragged: Own implementation on ragged groups (see :class:`NormalizerSpec`).

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is empty or already registered, or ``context`` names an unknown
            field.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"normalizer name must be a non-empty string; got {name!r}")
    if not callable(context):
        unknown = set(context) - set(CONTEXT_FIELDS)
        if unknown:
            raise ValueError(
                f"normalizer {name!r}: unknown context {sorted(unknown)}; known: {CONTEXT_FIELDS}"
            )

    def decorator(fn: Normalizer) -> Normalizer:
        if name in NORMALIZERS:
            raise ValueError(
                f"normalizer {name!r} is already registered (by {NORMALIZERS[name].__qualname__})"
            )
        if not callable(fn):
            raise TypeError(f"normalizer {name!r} must be callable; got {type(fn).__name__}")
        options, accepts_any = _signature_options(name, fn)
        SPECS[name] = NormalizerSpec(
            name=name,
            fn=fn,
            batch_level=batch_level,
            context=tuple(context) if not callable(context) else context,
            state=state,
            zero_flat=zero_flat,
            check=check,
            ragged=ragged,
            options=options,
            accepts_any=accepts_any,
        )
        NORMALIZERS[name] = fn
        return fn

    return decorator


def available_normalizers(*, rewards_only: bool = False) -> list[str]:
    """Returns the registered normalizer names, sorted.

    Args:
        rewards_only: Only those callable with their default options as
            ``normalize(rewards, name)``: no context, no state (e.g. for the bandit, which has
            neither lengths, prompt ids nor reward components).
    """
    names = sorted(NORMALIZERS)
    if not rewards_only:
        return names
    return [n for n in names if not get_spec(n).needs({}) and not get_spec(n).has_state({})]


def get_spec(name: str) -> NormalizerSpec:
    """Returns the :class:`NormalizerSpec` of ``name``.

    A function put into :data:`NORMALIZERS` by hand (not via :func:`register_normalizer`) gets a
    default spec (group-wise, no context, no state, flat groups zeroed).

    Raises:
        UnknownNormalizerError: if ``name`` is not registered (the message lists the names).
    """
    fn = get_normalizer(name)
    spec = SPECS.get(name)
    if spec is None or spec.fn is not fn:
        options, accepts_any = _signature_options(name, fn)
        spec = NormalizerSpec(name=name, fn=fn, options=options, accepts_any=accepts_any)
    return spec


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


def check_names(spec: NormalizerSpec, options: Mapping[str, Any]) -> None:
    """Raises :class:`NormalizerOptionError` for an option ``spec.fn`` does not take."""
    if spec.accepts_any:
        return
    reserved = [key for key in options if key in _RESERVED]
    if reserved:
        raise NormalizerOptionError(
            f"{reserved[0]!r} is not an option of normalizer {spec.name!r}: context and state "
            f"are passed as normalize(..., context=NormalizerContext(...), state=...)"
        )
    unknown = [key for key in options if key not in spec.options]
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise NormalizerOptionError(
            f"normalizer {spec.name!r} got an unexpected option {unknown[0]!r}; "
            f"its options: {accepted}"
        )
