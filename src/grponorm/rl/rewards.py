r"""Verifiable correctness reward: extract a final number from a completion, compare exactly.

Answer-extraction policy
------------------------
A completion is searched for answer markers in this priority order. For each marker only its
LAST occurrence is looked at (the model's final word counts, and the scan stays linear); if
that occurrence does not hold a number, the next marker is tried.

1. ``\boxed{...}`` -- the content of the last ``\boxed{`` with balanced braces, closed within
   ``MAX_BOXED_CHARS`` characters. LaTeX inside is simplified first: ``\frac{a}{b}``
   (``\dfrac``, ``\tfrac``) becomes ``a/b``, ``{,}`` becomes ``,``, ``\$`` and ``\%`` lose their
   backslash, ``\text{...}``/``\mathrm{...}`` keep their content, ``\,``/``\!``/``\;`` vanish.
2. ``#### N`` -- the text after the last ``####`` (GSM8K's own answer line).
3. ``answer is N`` / ``answer: N`` / ``answer = N`` -- case-insensitive, after the last such
   phrase ("The answer is 5.", "Final answer: 5", "the answer is: **5**").
4. A completion that is nothing but a number (``"72"``, ``"  72\n"``, ``"$1,200."``): the
   whole completion is the answer. Read strictly: only whitespace and a final period may
   surround the number, so "72 apples" or "I think 72" are not answers by this rule.
5. Only with ``fallback_last_number=True``: the last number anywhere in the text. Off by
   default: the trainer asks for "The answer is N." and rewards only answers given in a
   recognised form, so a stray number in the reasoning is never rewarded by accident.

The text after a marker is read as ONE leading number; whatever follows it (units, words,
punctuation: "18 dollars.", "5 cm", "25%") is ignored. Before the number, whitespace,
markdown emphasis (``*``, ``_``), inline math openers (``$``, ``\(``) and a single currency
symbol (``$ € £ ¥``) are skipped. A marker followed by something that is not a number --
notably the literal letter in "The answer is N." that weak models copy from the instruction --
yields no answer and so zero reward.

Number normalization (exact, with ``fractions.Fraction`` -- never float tolerance):

- thousands separators in groups of three: ``1,234`` and ``1,234,567`` (``1,23`` is not a
  grouped number; a number running straight into ``,5``, ``.5`` or ``/5`` after its end, as
  in ``1,234,56``, ``1.2.3`` or the date ``12/25/2023``, is rejected as ambiguous);
- decimals, with any number of trailing zeros: ``5.00 == 5``, ``5.50 == 5.5``, ``.5 == 1/2``;
- signs: leading ``+`` and ``-``, the Unicode minus ``−`` (U+2212), before or after a
  currency symbol (``-$3`` and ``$-3``);
- simple fractions ``a/b`` without spaces (``3/4 == 0.75``); a zero denominator is no number;
- a percent sign is treated like any trailing unit: ``25% == 25``. GSM8K writes percentage
  answers as bare numbers ("#### 25"), so this is the reading that matches its references.

Not supported (no answer, or only the leading part is read): scientific notation (``1e3`` reads
as 1), mixed numbers (``5 1/2`` reads as 5), spaced fractions (``3 / 4`` reads as 3), number
words ("five"), and expressions (``\sqrt{2}``).

Cost: every step is a bounded-window regex match, a ``rfind``, or one linear regex pass, so
extraction is linear in the completion length, also on adversarial multi-megabyte input.

References are parsed strictly: a bare number (``"72"``, ``"1,200"``, ``"-3"``) or a GSM8K
solution, in which case the text after its last ``####`` is used.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from fractions import Fraction

__all__ = [
    "MAX_BOXED_CHARS",
    "batch_rewards",
    "correctness_reward",
    "extract_answer",
    "extract_value",
    "format_number",
    "parse_number",
    "reference_value",
]

MAX_BOXED_CHARS = 1000
"""A ``\\boxed{`` whose closing brace is further away than this is not read."""

_WINDOW = 200  # characters after a marker that the number parser may look at

_NUMBER = re.compile(
    r"""
    (?P<sign1>[+\-\u2212])?\s*
    (?P<cur>[$\u20ac\u00a3\u00a5])?\s*
    (?P<sign2>[+\-\u2212])?
    (?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:/(?P<den>\d+(?:\.\d+)?))?
    """,
    re.VERBOSE,
)
_AMBIGUOUS_TAIL = re.compile(r"[.,]\d|/[\d+\-\u2212]")
_LEAD_NOISE = re.compile(r"(?:\s|\*|_|\$(?![\d.])|\\\(|\\\[|:)*")
_ANSWER_PHRASE = re.compile(r"answer\s{0,20}(?:is\b\s{0,20}:?|:|=)", re.IGNORECASE)
_BOXED = "\\boxed{"
_BRACE = re.compile(r"[{}]")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_LAST_NUMBER_TAIL = re.compile(
    r"(?<![\d.,/])[+\-\u2212]?\s*[$\u20ac\u00a3\u00a5]?\s*[+\-\u2212]?[\d.,/]*\d\Z"
)


def parse_number(text: str, *, strict: bool = False) -> Fraction | None:
    """Read the number at the start of ``text`` (see the module docstring for the rules).

    Args:
        text: the text right after an answer marker, or a reference answer.
        strict: if True, nothing but whitespace and a final period may follow the number
            (used for references); if False, trailing units and words are ignored.

    Returns:
        The exact value, or None if ``text`` does not start with a number.
    """
    text = text[:_WINDOW] if not strict else text
    m = _NUMBER.match(text, _LEAD_NOISE.match(text).end())
    if m is None or (m["sign1"] and m["sign2"]):
        return None
    tail = text[m.end() :]
    if _AMBIGUOUS_TAIL.match(tail):
        return None
    if strict and tail.strip().rstrip(".").strip():
        return None
    value = Fraction(m["num"].replace(",", ""))
    if m["den"] is not None:
        den = Fraction(m["den"])
        if den == 0:
            return None
        value /= den
    return -value if (m["sign1"] or m["sign2"] or "+") in "-\u2212" else value


def format_number(value: Fraction) -> str:
    """Canonical string for an exact value: ``"1234"``, ``"-2.5"``, ``"1/3"``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    sign = "-" if value < 0 else ""
    scaled = str(abs(value * 10**digits).numerator).rjust(digits + 1, "0")
    return f"{sign}{scaled[:-digits]}.{scaled[-digits:]}"


def _boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{`` if its braces close within MAX_BOXED_CHARS."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    begin = start + len(_BOXED)
    depth = 1
    for m in _BRACE.finditer(text, begin, min(len(text), begin + MAX_BOXED_CHARS)):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[begin : m.start()]
    return None


def _simplify_latex(s: str) -> str:
    s = _LATEX_WRAP.sub(r" \1", s)
    s = _LATEX_FRAC.sub(r"\1/\2", s)
    s = s.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    for cmd in ("\\,", "\\!", "\\;", "\\ "):
        s = s.replace(cmd, "")
    return s


def _last_number(text: str) -> Fraction | None:
    m = re.search(r"\d", text[::-1])
    if m is None:
        return None
    end = len(text) - m.start()
    window = text[max(0, end - _WINDOW) : end]
    tail = _LAST_NUMBER_TAIL.search(window)
    return parse_number(tail.group()) if tail else None


def extract_value(text: str, *, fallback_last_number: bool = False) -> Fraction | None:
    """The exact final answer of a completion, following the module's extraction policy.

    Args:
        text: a model completion.
        fallback_last_number: if True, use the last number in the text when no marker holds
            one.

    Returns:
        The answer as a Fraction, or None when no answer could be extracted.
    """
    boxed = _boxed_content(text)
    if boxed is not None:
        value = parse_number(_simplify_latex(boxed))
        if value is not None:
            return value
    hashes = text.rfind("####")
    if hashes >= 0:
        value = parse_number(text[hashes + 4 : hashes + 4 + _WINDOW])
        if value is not None:
            return value
    last = deque(_ANSWER_PHRASE.finditer(text), maxlen=1)  # keeps only the last match
    if last:
        end = last[0].end()
        value = parse_number(text[end : end + _WINDOW])
        if value is not None:
            return value
    if len(text) <= _WINDOW:  # a completion that is only a number is its own answer
        value = parse_number(text, strict=True)
        if value is not None:
            return value
    return _last_number(text) if fallback_last_number else None


def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    """The final answer of a completion as a canonical number string (see ``format_number``).

    Args:
        text: a model completion.
        fallback_last_number: see ``extract_value``.

    Returns:
        E.g. ``"1234.5"`` for "The answer is $1,234.50.", or None when there is no answer.
    """
    value = extract_value(text, fallback_last_number=fallback_last_number)
    return None if value is None else format_number(value)


def reference_value(reference: str) -> Fraction:
    """Parse a reference answer: a bare number, or a solution ending in ``#### N``.

    Raises:
        ValueError: if the reference is not a number.
    """
    hashes = reference.rfind("####")
    body = reference[hashes + 4 :] if hashes >= 0 else reference
    value = parse_number(body, strict=True)
    if value is None:
        raise ValueError(f"reference answer is not a number: {body.strip()[:80]!r}")
    return value


def correctness_reward(
    completion: str, reference: str, *, fallback_last_number: bool = False
) -> float:
    """1.0 if the completion's extracted answer equals the reference exactly, else 0.0.

    Args:
        completion: the model's completion text.
        reference: the reference answer (see ``reference_value``).
        fallback_last_number: see ``extract_value``.

    Raises:
        ValueError: if the reference is not a number.
    """
    expected = reference_value(reference)
    got = extract_value(completion, fallback_last_number=fallback_last_number)
    return 1.0 if got == expected else 0.0


def batch_rewards(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    fallback_last_number: bool = False,
) -> list[float]:
    """``correctness_reward`` for aligned sequences of completions and references.

    Raises:
        ValueError: if the lengths differ or a reference is not a number.
    """
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    return [
        correctness_reward(c, r, fallback_last_number=fallback_last_number)
        for c, r in zip(completions, references, strict=True)
    ]
