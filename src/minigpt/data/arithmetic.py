"""Integer arithmetic generated on the spot: ``+``, ``-``, ``×`` problems whose assistant turn is
``<think>column-by-column steps</think><answer>N</answer>``, the reasoning format the SFT tag
weighting and the RL format reward expect (as DeepSeek-R1, Guo et al. 2025).
:func:`make_arithmetic_prompts` gives held-out ``{"prompt", "answer"}`` records for evaluation
and rule-rewarded RL, scored with :func:`minigpt.rewards.answers.check_answer`.

Train and held-out problems never meet: every problem ``(a, op, b)`` falls into one split by a
fixed hash (:func:`arithmetic_split`), whatever the seeds; ``exclude=`` removes further problems
given as questions or records. Deterministic by seed, no download, no torch.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from minigpt.errors import UserError, check_count, check_probability

__all__ = [
    "HELDOUT_FRACTION",
    "ArithmeticProblem",
    "arithmetic_conversations",
    "arithmetic_problem",
    "arithmetic_split",
    "arithmetic_worksheets",
    "make_arithmetic_prompts",
]

#: Share of all arithmetic problems reserved for the held-out ("test") split.
HELDOUT_FRACTION = 0.1

_OP_ALIASES = {"+": "+", "-": "-", "*": "×", "x": "×", "×": "×"}
_OP_WORDS = {"+": "sum", "-": "difference", "×": "product"}
_ARITH_QUESTIONS = (
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What does {e} equal?",
    "{e} = ?",
    "Work out {e} step by step.",
    "Please solve: {e}",
    "Find the {word}: {e}",
)
_COLUMNS = (
    "ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands", "millions",
    "ten millions", "hundred millions", "billions", "ten billions",
)
# "47 + 38", "47 - 38", "47 × 38" (also "*" and "x" when parsing user-supplied questions).
_EXPR_RE = re.compile(r"(\d+)\s*([-+*x×])\s*(\d+)")
_MAX_DIGITS = 9


@dataclass(frozen=True)
class ArithmeticProblem:
    """One integer problem ``a op b`` and its worked solution.

    ``op`` is ``"+"``, ``"-"`` or ``"×"``; for ``-`` the generator keeps ``a >= b`` so every
    result is a non-negative integer. ``question`` is the user turn (phrasing chosen by the
    generator), ``think`` the step-by-step working, ``completion`` the assistant turn
    ``<think>{think}</think><answer>{answer}</answer>``.
    """

    a: int
    op: str
    b: int
    question: str

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def key(self) -> tuple[int, str, int]:
        """Identity of the problem regardless of phrasing, used for splits and dedupe."""
        return (self.a, self.op, self.b)

    @property
    def result(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b

    @property
    def answer(self) -> str:
        return str(self.result)

    @property
    def think(self) -> str:
        if self.op == "+":
            steps = _addition_steps(self.a, self.b)
        elif self.op == "-":
            steps = _subtraction_steps(self.a, self.b)
        else:
            steps = _multiplication_steps(self.a, self.b)
        return "\n".join([*steps, f"So {self.expression} = {self.result}."])

    @property
    def completion(self) -> str:
        return f"<think>{self.think}</think><answer>{self.answer}</answer>"

    @property
    def direct_completion(self) -> str:
        """The answer without working: ``<think></think><answer>{answer}</answer>``.

        The empty think block is how hybrid-reasoning chat data marks a reply given without
        thinking (Qwen3's non-thinking mode), so one tag format covers both kinds of reply.
        """
        return f"<think></think><answer>{self.answer}</answer>"

    @property
    def asks_for_steps(self) -> bool:
        """Whether the question itself asks for the working ("… step by step")."""
        return "step by step" in self.question

    def conversation(self, direct: bool = False) -> dict:
        """``{"messages": [user question, assistant completion]}``; ``direct=True`` answers
        with :attr:`direct_completion` instead of the worked :attr:`completion`."""
        return {
            "messages": [
                {"role": "user", "content": self.question},
                {"role": "assistant", "content": self.direct_completion if direct else self.completion},
            ]
        }

    def prompt_record(self) -> dict:
        """``{"prompt": question, "answer": "85"}`` for evaluation and rule-rewarded RL."""
        return {"prompt": self.question, "answer": self.answer}


def _digits(x: int) -> list[int]:
    """Decimal digits, least significant first: 407 -> [7, 0, 4]."""
    return [int(ch) for ch in reversed(str(x))]


def _addition_steps(a: int, b: int) -> list[str]:
    """Column addition, ones first: ``tens: 4 + 3 + 1 = 8, write 8.`` with carries."""
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        if len(terms) == 1:
            steps.append(f"{_COLUMNS[i]}: bring down {terms[0]}.")
            carry = 0
            continue
        total = sum(terms)
        line = f"{_COLUMNS[i]}: {' + '.join(map(str, terms))} = {total}, write {total % 10}"
        carry = total // 10
        steps.append(line + (f", carry {carry}." if carry else "."))
    if carry:
        steps.append(f"{_COLUMNS[len(steps)]}: carry {carry}, write {carry}.")
    return steps


def _subtraction_steps(a: int, b: int) -> list[str]:
    """Column subtraction (``a >= b``), ones first, borrowing 10 from the next column."""
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i, x in enumerate(da):
        y = db[i] if i < len(db) else 0
        col = _COLUMNS[i]
        if borrow:
            xe = x - 1
            head = f"{col}: {x} - 1 = {xe} after the borrow; "
        else:
            xe = x
            if i >= len(db):
                steps.append(f"{col}: bring down {x}.")
                continue
            head = f"{col}: "
        if xe >= y:
            steps.append(head + f"{xe} - {y} = {xe - y}, write {xe - y}.")
            borrow = 0
        else:
            d = xe + 10 - y
            steps.append(head + f"{xe} < {y}, borrow 10: {xe + 10} - {y} = {d}, write {d}.")
            borrow = 1
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    """Partial products by place value, then their sum.

    The second operand is split into its non-zero place values (47 × 38 -> 47 × 8, 47 × 30);
    when it has a single digit the first operand is split instead (47 × 8 -> 40 × 8, 7 × 8).
    """
    if a == 0 or b == 0:
        return ["Anything times 0 is 0."]
    split_b = b >= 10 or a < 10
    split = b if split_b else a
    parts = [d * 10**i for i, d in enumerate(_digits(split)) if d]
    steps, products = [], []
    for part in parts:
        x, y = (a, part) if split_b else (part, b)
        products.append(x * y)
        steps.append(f"{x} × {y} = {x * y}")
    if len(products) > 1:
        steps.append(f"{' + '.join(map(str, products))} = {sum(products)}")
    return steps


def _check_digits(digits: object) -> tuple[int, int]:
    if isinstance(digits, int) and not isinstance(digits, bool):
        digits = (digits, digits)
    ok = (
        isinstance(digits, (tuple, list))
        and len(digits) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in digits)
        and 1 <= digits[0] <= digits[1] <= _MAX_DIGITS
    )
    if not ok:
        raise UserError(
            f"digits: must be an integer or a (min, max) pair with 1 <= min <= max <= "
            f"{_MAX_DIGITS}, got {digits!r}"
        )
    return int(digits[0]), int(digits[1])


def _check_ops(ops: object) -> str:
    if not isinstance(ops, str) or not ops or any(ch not in _OP_ALIASES for ch in ops):
        raise UserError(f"ops: must be a non-empty string of '+', '-', '*' (or 'x'/'×'), got {ops!r}")
    return "".join(dict.fromkeys(_OP_ALIASES[ch] for ch in ops))


def arithmetic_split(key: tuple[int, str, int]) -> str:
    """``"test"`` or ``"train"``: the fixed split a problem ``(a, op, b)`` belongs to.

    A CRC-32 hash of ``"a op b"`` puts :data:`HELDOUT_FRACTION` of all problems in ``"test"``;
    it depends on nothing else (not the seed, not the phrasing, not the Python process), so
    train and held-out sets generated with any seeds never share a problem.
    """
    a, op, b = key
    bucket = zlib.crc32(f"{a} {op} {b}".encode()) % 10_000
    return "test" if bucket < HELDOUT_FRACTION * 10_000 else "train"


def arithmetic_problem(
    rng: random.Random, digits: int | tuple[int, int] = (1, 3), ops: str = "+-*"
) -> ArithmeticProblem:
    """Draw one problem: an operator from ``ops``, operand lengths uniform in ``digits``.

    Each operand's digit count is drawn uniformly from ``digits = (min, max)``, then the operand
    uniformly among numbers with that many digits (0 counts as a 1-digit number). For ``-`` the
    operands are ordered so the result is ≥ 0. The question phrasing is drawn from a few
    templates, all containing the expression ``a op b`` literally.

    Args:
        rng: a :class:`random.Random`; the only source of randomness.
        digits: an int (both operands that long) or a ``(min, max)`` pair, 1 ≤ min ≤ max ≤ 9.
        ops: characters among ``+``, ``-``, ``*`` (``x`` and ``×`` also mean multiply).

    Raises:
        UserError: bad ``digits`` or ``ops``.
    """
    lo, hi = _check_digits(digits)
    op_list = _check_ops(ops)

    def number() -> int:
        k = rng.randint(lo, hi)
        return rng.randint(0 if k == 1 else 10 ** (k - 1), 10**k - 1)

    op = rng.choice(op_list)
    a, b = number(), number()
    if op == "-" and a < b:
        a, b = b, a
    template = rng.choice(_ARITH_QUESTIONS)
    question = template.format(e=f"{a} {op} {b}", word=_OP_WORDS[op])
    return ArithmeticProblem(a, op, b, question)


def _exclude_keys(exclude: Iterable | None) -> set[tuple[int, str, int]]:
    """Problem keys of questions, prompt records or conversations to keep out of a set."""
    keys: set[tuple[int, str, int]] = set()
    for i, item in enumerate(exclude or ()):
        if isinstance(item, ArithmeticProblem):
            keys.add(item.key)
            continue
        if isinstance(item, dict):
            if "prompt" in item:
                text = item["prompt"]
            elif "messages" in item:
                users = [m.get("content", "") for m in item["messages"] if m.get("role") == "user"]
                text = users[0] if users else None
            else:
                text = None
        else:
            text = item
        m = _EXPR_RE.search(text) if isinstance(text, str) else None
        if m is None:
            raise UserError(
                f"exclude[{i}]: expected a question such as 'What is 47 + 38?', a prompt record "
                f"or a conversation, got {item!r:.80}"
            )
        keys.add((int(m.group(1)), _OP_ALIASES[m.group(2)], int(m.group(3))))
    return keys


def _arithmetic_set(n, seed, digits, ops, split, exclude) -> list[ArithmeticProblem]:
    n = check_count(n)
    if split not in ("train", "test", None):
        raise UserError(f"split: must be 'train', 'test' or None, got {split!r}")
    lo, hi = _check_digits(digits)
    op_list = _check_ops(ops)
    excluded = _exclude_keys(exclude)
    rng = random.Random(seed)
    problems: list[ArithmeticProblem] = []
    seen: set[tuple[int, str, int]] = set()
    # Rejection sampling: distinct problems, in the wanted split, not excluded. The attempt cap
    # turns an impossible request (e.g. 1000 distinct 1-digit additions) into an error.
    attempts = 0
    max_attempts = 100 * n + 1000
    while len(problems) < n:
        attempts += 1
        if attempts > max_attempts:
            raise UserError(
                f"n: could only draw {len(problems)} distinct {split or 'any'}-split problems "
                f"with digits=({lo}, {hi}) and ops={op_list!r}, asked for {n}; allow more digits "
                f"or operators"
            )
        p = arithmetic_problem(rng, (lo, hi), op_list)
        if p.key in seen or p.key in excluded or (split and arithmetic_split(p.key) != split):
            continue
        seen.add(p.key)
        problems.append(p)
    return problems


def arithmetic_conversations(
    n: int,
    seed: int = 0,
    digits: int | tuple[int, int] = (1, 3),
    ops: str = "+-*",
    *,
    split: str | None = "train",
    exclude: Iterable | None = None,
    direct: float = 0.0,
) -> list[dict]:
    """``n`` distinct arithmetic problems as reasoning SFT conversations.

    User: ``What is 47 + 38?`` (phrasing varies). Assistant:
    ``<think>ones: 7 + 8 = 15, write 5, carry 1.\\ntens: 4 + 3 + 1 = 8, write 8.\\nSo 47 + 38 =
    85.</think><answer>85</answer>``. Addition and subtraction go column by column with carries
    and borrows; multiplication sums partial products by place value. Every equation in the
    think block is true and its last line states the result.

    Args:
        n: number of conversations (distinct problems).
        seed: seeds the problems and phrasings; same seed, same list.
        digits, ops: as in :func:`arithmetic_problem`.
        split: ``"train"`` (default) or ``"test"`` keeps only problems of that fixed split
            (:func:`arithmetic_split`); None keeps all.
        exclude: problems to leave out, given as questions, ``{"prompt"}`` records,
            conversations or :class:`ArithmeticProblem` objects.
        direct: share in [0, 1] of the conversations answered without working,
            ``<think></think><answer>85</answer>``, as in chat data that mixes thinking and
            non-thinking replies. Questions that ask for the steps ("Work out … step by step.")
            always get them. The choice has its own random stream, so the problems and
            phrasings for a seed are the same whatever ``direct`` is. A model fine-tuned on
            such a mix has both behaviours, and outcome-rewarded RL can learn which one pays
            (the quickstart's GRPO stage does).

    Raises:
        UserError: bad arguments, an ``exclude`` entry without an ``a op b`` expression, or more
            distinct problems asked for than the digits/ops allow.
    """
    direct = check_probability(direct, "direct")
    problems = _arithmetic_set(n, seed, digits, ops, split, exclude)
    rng = random.Random(f"direct-{seed}")
    return [p.conversation(direct=rng.random() < direct and not p.asks_for_steps) for p in problems]


def arithmetic_worksheets(
    n: int,
    seed: int = 0,
    digits: int | tuple[int, int] = (1, 3),
    ops: str = "+-*",
    *,
    per_sheet: int = 16,
    split: str | None = "train",
    exclude: Iterable | None = None,
) -> list[str]:
    """``n`` distinct problems worked as plain text, ``per_sheet`` to a document: pretraining text.

    Each problem is its question, a newline and the same column-by-column working that
    :func:`arithmetic_conversations` puts in its ``<think>`` block (no chat template, no tags),
    problems separated by a blank line. Mixed into a pretraining corpus, as synthetic worked
    examples are in phi-1's "textbook" data (Gunasekar et al. 2023, "Textbooks Are All You Need"),
    it gives the base model the digit skills that SFT then only has to put in chat form.

    Args:
        n: number of problems (distinct).
        seed, digits, ops, split, exclude: as in :func:`arithmetic_conversations` (keep the
            held-out problems out with ``exclude``).
        per_sheet: problems per document (the last document may hold fewer).

    Raises:
        UserError: as :func:`arithmetic_conversations`, or ``per_sheet`` < 1.
    """
    if isinstance(per_sheet, bool) or not isinstance(per_sheet, int) or per_sheet < 1:
        raise UserError(f"per_sheet: must be a positive integer, got {per_sheet!r}")
    problems = _arithmetic_set(n, seed, digits, ops, split, exclude)
    return [
        "\n".join(f"{p.question}\n{p.think}\n" for p in problems[i : i + per_sheet])
        for i in range(0, len(problems), per_sheet)
    ]


def make_arithmetic_prompts(
    n: int,
    seed: int = 0,
    digits: int | tuple[int, int] = (1, 3),
    ops: str = "+-*",
    *,
    split: str | None = "test",
    exclude: Iterable | None = None,
) -> list[dict]:
    """``n`` distinct held-out problems as ``{"prompt": question, "answer": "85"}`` records.

    The default ``split="test"`` draws from the problems :func:`arithmetic_conversations` never
    uses (with its default ``split="train"``), so evaluation and RL prompts are disjoint from the
    SFT data whatever the seeds. Arguments and errors as in :func:`arithmetic_conversations`.
    Score completions with :func:`minigpt.rewards.answers.check_answer`.
    """
    return [p.prompt_record() for p in _arithmetic_set(n, seed, digits, ops, split, exclude)]
