"""Helpers for an experiment's paper-vs-ours report rows (``report_rows``).

A comparative row shows the difference with its interval, the number of seeds and the verdict of
``grponorm.stats`` (docs/theory.md §6). Experiments compute the
:class:`~grponorm.stats.Comparison` when
they run and keep :func:`entry` of it in their summary (plain JSON: the report reads summaries
back from disk), so ``report_rows`` only formats strings.

The verdict column is typed: :func:`verdict_cell` and :func:`ratio_entry` give a
:class:`VerdictCell`, a ``str`` (written to summaries as its text alone) that carries its
:class:`~grponorm.stats.paired.Verdict`; :func:`as_verdict_cell` types a cell read back from
disk by the verdict label it starts with. The report colours a cell by that type.
"""

from __future__ import annotations

import math

from ..stats import Comparison, RatioComparison
from ..stats.paired import Verdict

__all__ = ["VerdictCell", "as_verdict_cell", "effect_cell", "entry", "fmt", "interval_text",
           "ratio_entry", "verdict_cell"]


class VerdictCell(str):
    """The text of a verdict cell with its :class:`Verdict` (``.verdict``).

    ``VerdictCell("inconclusive (1 seed)")`` takes the verdict from the label the text starts
    with (:meth:`Verdict.of_cell`); ``VerdictCell("Std ahead here", Verdict.POSITIVE)`` gives it
    for a text that starts with none. A ``str`` otherwise: equal to, printed and JSON-encoded as
    its text.

    Raises:
        ValueError: If ``verdict`` is None and the text starts with no verdict's label, or the
            text starts with another verdict's label than ``verdict``.
    """

    verdict: Verdict

    def __new__(cls, text: str, verdict: Verdict | None = None):
        self = super().__new__(cls, text)
        if verdict is None:
            self.verdict = Verdict.of_cell(str(text))
            return self
        self.verdict = Verdict(verdict)
        try:
            labelled = Verdict.of_cell(str(text))
        except ValueError:
            return self  # free text: the verdict given is its type
        if labelled is not self.verdict:
            raise ValueError(f"verdict cell {str(text)!r} starts with {labelled.value!r} but "
                             f"was given the verdict {self.verdict.value!r}")
        return self

    def __getnewargs__(self):  # pickling (worker processes): the text and its verdict
        return str(self), self.verdict


#: Verdict cells of ``rl_compare.report_rows`` (a pass-rate bin's direction) that start with no
#: verdict's label, and their type.
_WORDED = {"Std ahead here": Verdict.POSITIVE, "Std behind here": Verdict.NEGATIVE}


def as_verdict_cell(cell) -> VerdictCell:
    """A report row's verdict cell, typed: a :class:`VerdictCell` as it is, a :class:`Verdict`
    with its label as text, a plain string (a summary read back from disk) by the verdict label
    it starts with (:meth:`Verdict.of_cell`).

    Raises:
        ValueError: If a string starts with no verdict's label.
        TypeError: If ``cell`` is not a string.
    """
    if isinstance(cell, VerdictCell):
        return cell
    if isinstance(cell, Verdict):
        return VerdictCell(cell.value, cell)
    if not isinstance(cell, str):
        raise TypeError(f"a verdict cell is a string; got {type(cell).__name__} {cell!r}")
    return VerdictCell(cell, _WORDED.get(cell))


def fmt(x, nd: int = 3) -> str:
    """A number for a report cell: ``nd`` significant digits, ``-`` for None."""
    return "-" if x is None else (f"{x:.{nd}g}" if isinstance(x, float) else str(x))


def _num(x: float, signed: bool = True, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    s = f"{x:+.{nd}f}" if signed else f"{x:.{nd}g}"
    return s.replace("-", "\N{MINUS SIGN}")


def interval_text(c: Comparison, nd: int = 3, unit: str = "seeds") -> str:
    """``+0.312 [+0.201, +0.423], n=8 paired`` (no interval with one seed); more decimals
    (up to 6) when the half-width would otherwise show fewer than two significant digits."""
    half = (c.high - c.low) / 2 if c.resolvable else 0.0
    if half > 0:
        nd = max(nd, min(6, 1 - math.floor(math.log10(half))))
    kind = "paired" if c.paired else "unpaired"
    n = f"n={c.n}" if c.paired else f"n={c.sizes[0]}+{c.sizes[1]}"
    n = n if unit == "seeds" else f"{n} {unit}"
    if not c.resolvable:
        return f"{_num(c.diff, nd=nd)}, {n} {kind}"
    return f"{_num(c.diff, nd=nd)} [{_num(c.low, nd=nd)}, {_num(c.high, nd=nd)}], {n} {kind}"


def verdict_cell(c: Comparison, expected_sign: float | None, effect: float | None = None,
                 unit: str = "seeds", effect_text: str | None = None) -> VerdictCell:
    """The verdict column: ``reproduced`` / ``contradicted`` / ``inconclusive (1 seed)`` /
    ``inconclusive (≈14 seeds would resolve 0.05)``, typed (:class:`VerdictCell`).

    Args:
        c: The comparison (``a - b``).
        expected_sign: The paper's direction of ``a - b``; None gives a neutral label
            (``positive`` / ``negative`` / ``no clear difference``).
        effect: Effect to resolve when inconclusive (on ``c``'s scale); default ``|diff|``.
        unit: What the replicates are called (seeds, measurements).
        effect_text: How to print the effect (default: the number).
    """
    if not c.resolvable:
        one = unit[:-1] if unit.endswith("s") and c.n == 1 else unit
        return VerdictCell(f"inconclusive ({c.n} {one})", Verdict.INCONCLUSIVE)
    if expected_sign is None:
        label = (Verdict.POSITIVE if c.low > 0 else Verdict.NEGATIVE if c.high < 0
                 else Verdict.NO_CLEAR_DIFFERENCE)
        if label is not Verdict.NO_CLEAR_DIFFERENCE:
            return VerdictCell(label.value, label)
    else:
        label = c.verdict(expected_sign)
        if label is not Verdict.INCONCLUSIVE:
            return VerdictCell(label.value, label)
    target = abs(c.diff) if effect is None else abs(float(effect))
    what = effect_text if effect_text is not None else _num(target, signed=False)
    if effect is not None and -target < c.low and c.high < target:
        return VerdictCell(f"{label.value} (interval excludes ±{what}: any effect is smaller)",
                           label)
    needed = c.seeds_needed(target) if target > 0 else None
    if needed is None:
        return VerdictCell(label.value, label)
    return VerdictCell(f"{label.value} (≈{needed} {unit} would resolve {what})", label)


def entry(c: Comparison, expected_sign: float | None, effect: float | None = None,
          unit: str = "seeds") -> dict:
    """JSON-ready record of a comparison: its numbers, ``text`` and ``verdict`` cells."""
    nan_none = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in (("diff", c.diff), ("low", c.low), ("high", c.high), ("p", c.p),
                             ("sd", c.sd))}
    return {**nan_none, "n": c.n, "paired": c.paired, "text": interval_text(c, unit=unit),
            "verdict": verdict_cell(c, expected_sign, effect, unit)}


def ratio_entry(rc: RatioComparison, expected_sign: float = 1.0) -> dict:
    """JSON-ready record of a ratio (speed-up): ``1.25× [1.10, 1.42], n=10 paired``."""
    log = rc.log
    n = f"n={log.n} {'paired' if log.paired else 'unpaired'}"
    if log.resolvable:
        text = f"{_num(rc.ratio, False)}× [{_num(rc.low, False)}, {_num(rc.high, False)}], {n}"
        needed = rc.seeds_needed(rc.ratio) if rc.ratio != 1 else None
        label = rc.verdict(expected_sign)
        verdict = VerdictCell(label.value, label)
        if label is Verdict.INCONCLUSIVE and needed is not None:
            verdict = VerdictCell(
                f"{label.value} (≈{needed} seeds would resolve {_num(rc.ratio, False)}×)", label)
    else:
        text = f"{_num(rc.ratio, False)}×, {n}"
        verdict = VerdictCell(f"inconclusive ({log.n} seed)", Verdict.INCONCLUSIVE)
    return {"ratio": rc.ratio, "low": None if math.isnan(rc.low) else rc.low,
            "high": None if math.isnan(rc.high) else rc.high, "n": log.n, "p": (
                None if math.isnan(log.p) else log.p), "text": text, "verdict": verdict}


def effect_cell(cell: VerdictCell, largest: float | None, paper: float,
                smaller: bool) -> VerdictCell:
    """``cell`` read against the paper's effect size (``stats.effect_reading`` /
    ``mean_correlation_reading``: ``largest`` is the largest effect on the paper's side that
    the interval still allows, ``smaller`` whether that is below the paper's ``paper``):
    ``smaller than the paper's (+0.050): effects beyond +0.021 excluded``, or ``cell`` followed
    by ``effects up to +0.128 not excluded (paper +0.050)``. No interval: ``cell`` as is."""
    if largest is None or math.isnan(largest):
        return cell
    if smaller and cell.verdict is not Verdict.REPRODUCED:
        return VerdictCell(f"{Verdict.SMALLER.value} ({_num(paper)}): effects beyond "
                           f"{_num(largest)} excluded", Verdict.SMALLER)
    if smaller:  # the sign is the paper's, the size is not
        return VerdictCell(f"{cell}, but smaller than the paper's: effects up to "
                           f"{_num(largest)} (paper {_num(paper)})", cell.verdict)
    return VerdictCell(f"{cell}; effects up to {_num(largest)} not excluded (paper "
                       f"{_num(paper)})", cell.verdict)
