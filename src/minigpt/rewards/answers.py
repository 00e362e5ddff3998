"""The one answer checker: the reference-answer comparison that the RL `answer` reward,
`minigpt eval`'s answer accuracy and the quickstart's held-out arithmetic all use.

A completion's answer is the content of its last ``<answer>…</answer>``; two answers are equal
as exact numbers when both parse as numbers (``"85" == "85.0" == "$85"``, ``"3/4" == "0.75"``),
else as whitespace-collapsed strings. Pure Python: no torch.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["answers_equal", "check_answer", "extract_answer"]

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_DECIMAL_RE = re.compile(r"\d+\.?\d*|\.\d+")
_FRACTION_RE = re.compile(r"\d+/\d+")
_GROUPED_RE = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")


def extract_answer(text: str) -> str | None:
    """Content of the last ``<answer>…</answer>`` in ``text``, stripped; None if there is none.

    An ``<answer>`` without its closing tag does not count (a truncated completion has no answer).
    """
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def _as_number(text: str) -> Fraction | None:
    """``text`` as an exact number, or None when it is not one.

    Accepted after stripping outer whitespace (inner whitespace: not a number): an optional
    sign, an optional ``$``, a decimal
    (``42``, ``42.0``, ``42.``, ``.5``, thousands-grouped ``1,234.5``) or a fraction ``3/4``,
    then optional trailing ``.`` / ``%`` (``"42."`` and ``"50%"`` read as 42 and 50). A zero
    denominator is not a number.
    """
    s = text.strip()
    if any(ch.isspace() for ch in s):  # "4 2" is not 42
        return None
    sign = -1 if s.startswith("-") else 1
    s = s[1:] if s[:1] in "+-" and s else s
    s = s[1:] if s.startswith("$") else s
    s = s.rstrip(".%") if not _DECIMAL_RE.fullmatch(s) else s
    if _GROUPED_RE.fullmatch(s):
        s = s.replace(",", "")
    if _DECIMAL_RE.fullmatch(s):
        return sign * Fraction(s)
    if _FRACTION_RE.fullmatch(s):
        num, den = s.split("/")
        return sign * Fraction(int(num), int(den)) if int(den) != 0 else None
    return None


def answers_equal(got: str, want: str) -> bool:
    """The project's one answer checker: whether an answer equals the reference.

    Both are compared as exact numbers when both parse as numbers: outer whitespace, a sign, a
    leading ``$``, thousands separators in the ``1,234`` pattern and a trailing ``.`` or ``%``
    do not matter, and fractions count (``"85" == " 85 " == "85.0" == "+85" == "$85"``,
    ``"1,234" == "1234"``, ``"3/4" == "0.75"``). Otherwise the whitespace-collapsed strings
    must be equal (``"paris" != "Paris"``). Used by :func:`check_answer` and by the RL
    ``answer`` reward.
    """
    a, b = _as_number(got), _as_number(want)
    if a is not None and b is not None:
        return a == b
    return " ".join(got.split()) == " ".join(want.split())


def check_answer(text: str, answer: str | int) -> bool:
    """Whether the last ``<answer>`` of a completion equals the reference ``answer``, by
    :func:`answers_equal` (``"85"``, ``" 85 "``, ``"85.0"``, ``"+85"``, ``"$85"`` all equal 85;
    ``"3/4"`` equals ``"0.75"``). A completion without an ``<answer>…</answer>`` is wrong.
    """
    got = extract_answer(text)
    if got is None:
        return False
    return answers_equal(got, str(answer))
