"""Dataclass configs <-> command-line flags.

Every experiment has a dataclass config whose fields carry a one-line comment, e.g.
``T: int = 100  # steps``. `add_dataclass_args` turns each field into ``--field-name`` with
that comment as its help; lists and tuples take comma-separated values; ``None`` is spelled
``none`` (except where ``none`` is a legitimate string, e.g. the normalizer named "none").
`dataclass_from_args` builds the config back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

_FIELD_DOC = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def field_docs(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class source; for a config that extends
    another, the base classes' comments too (a field redeclared in the subclass uses its own)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in src.splitlines():
            m = _FIELD_DOC.match(line)
            if m:
                docs[m.group(1)] = m.group(2).strip()
    return docs


def _scalar_parser(annotation: str, default):
    if isinstance(default, bool):
        raise AssertionError("bools are flags")
    if isinstance(default, int) or annotation.startswith("int"):
        return int
    if isinstance(default, float) or "float" in annotation:
        return float
    return str


def _parse_value(text: str, kind, allow_none: bool):
    if allow_none and text.lower() == "none":
        return None
    return kind(text)


def _list_parser(kind, container, none_ok: bool):
    def parse(text: str):
        return container(_parse_value(x.strip(), kind, none_ok) for x in text.split(",")
                         if x.strip())

    return parse


def _element_kind(values, annotation: str):
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            return lambda s: s.lower() in ("1", "true", "yes")
        if isinstance(v, int):
            return int
        if isinstance(v, float):
            return float
        return str
    return float if "float" in annotation else str


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """Add one flag per field of dataclass `cls` (defaults from a fresh instance)."""
    docs = field_docs(cls)
    inst = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = getattr(inst, f.name)
        flag = "--" + f.name.replace("_", "-")
        ann = str(f.type)
        help_ = docs.get(f.name, "")
        shown = ",".join("none" if v is None else str(v) for v in default) if isinstance(
            default, (list, tuple)) else default
        help_ = f"{help_} (default: {shown})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_)
        elif isinstance(default, (list, tuple)):
            kind = _element_kind(default, ann)
            none_ok = kind is not str or None in default  # "none" may be a real string
            conv = _list_parser(kind, type(default), none_ok)
            parser.add_argument(flag, dest=f.name, type=conv, default=default, help=help_,
                                metavar="A,B,...")
        else:
            kind = _scalar_parser(ann, default)
            none_ok = default is None or "None" in ann
            hint = hints.get(f.name)
            choices = (typing.get_args(hint) if typing.get_origin(hint) is typing.Literal
                       else None)  # a Literal field offers exactly its values
            parser.add_argument(flag, dest=f.name,
                                type=lambda s, k=kind, ok=none_ok: _parse_value(s, k, ok),
                                default=default, help=help_, choices=choices)


def dataclass_from_args(cls, ns: argparse.Namespace, **overrides):
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    kwargs.update(overrides)
    return cls(**kwargs)
