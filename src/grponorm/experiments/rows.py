"""Helpers for an experiment's paper-vs-ours report rows (``report_rows``)."""

from __future__ import annotations

__all__ = ["fmt"]


def fmt(x, nd: int = 3) -> str:
    """A number for a report cell: ``nd`` significant digits, ``-`` for None."""
    return "-" if x is None else (f"{x:.{nd}g}" if isinstance(x, float) else str(x))
