"""Tests for the arithmetic problems, worksheets and prompts (`minigpt.data.arithmetic`).

Expected values are computed independently in the tests (Python evaluates the parsed question;
equations in the reasoning are re-evaluated) or worked by hand in the docstrings.
"""

from __future__ import annotations

import random
import re

import pytest

from minigpt.data.arithmetic import HELDOUT_FRACTION, ArithmeticProblem, arithmetic_conversations, arithmetic_problem, arithmetic_split, arithmetic_worksheets, make_arithmetic_prompts
from minigpt.errors import UserError

QUESTION_EXPR = re.compile(r"(\d+) ([-+×]) (\d+)")
COMPLETION = re.compile(r"<think>(.+?)</think><answer>(\d+)</answer>", re.DOTALL)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
EQUATION = re.compile(r"(-?\d+(?: [-+×] -?\d+)+) = (-?\d+)")


def _evaluate(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "×": a * b}[op]


@pytest.fixture(scope="module")
def arithmetic() -> list[dict]:
    return arithmetic_conversations(3000, seed=0, digits=(1, 4))


# ------------------------------------------------------------------------------ arithmetic


def test_every_answer_equals_python_evaluation(arithmetic):
    """Parse ``a op b`` out of the user turn, evaluate it here, compare with <answer>."""
    for record in arithmetic:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        a, op, b = QUESTION_EXPR.search(user["content"]).groups()
        m = COMPLETION.fullmatch(assistant["content"])
        assert m is not None, assistant["content"]
        assert not any(tag in m.group(1) for tag in TAGS)  # exactly one think, one answer
        assert int(m.group(2)) == _evaluate(int(a), op, int(b))
        assert m.group(2) == str(int(m.group(2)))  # plain integer, no sign/zeros/separators


def test_think_steps_are_true_and_end_with_the_result(arithmetic):
    """Every ``x op y [op z] = r`` in the reasoning is re-evaluated with Python; the last line
    restates the question's expression and the answer."""
    n_equations = 0
    for record in arithmetic:
        question, completion = (m["content"] for m in record["messages"])
        think, answer = COMPLETION.fullmatch(completion).groups()
        for left, right in EQUATION.findall(think):
            assert eval(left.replace("×", "*")) == int(right), (left, right, think)
            n_equations += 1
        expr = " ".join(QUESTION_EXPR.search(question).groups())
        assert think.split("\n")[-1] == f"So {expr} = {answer}."
        # Comparisons that justify a borrow must hold too.
        for x, y in re.findall(r"(-?\d+) < (\d+), borrow", think):
            assert int(x) < int(y)
    assert n_equations > 3 * len(arithmetic)  # column steps really are there


def test_column_digits_and_carries_are_consistent(arithmetic):
    """For + and -, the digits written column by column (ones first) spell the answer, and each
    carry announced in a column is the last term added in the next one."""
    checked = 0
    for record in arithmetic:
        question, completion = (m["content"] for m in record["messages"])
        think, answer = COMPLETION.fullmatch(completion).groups()
        op = QUESTION_EXPR.search(question).group(2)
        if op == "×":
            continue
        lines = think.split("\n")[:-1]
        written = []
        for line in lines:
            m = re.search(r"write (\d)[.,]|bring down (\d)\.", line)
            written.append(m.group(1) or m.group(2))
        assert int("".join(reversed(written))) == int(answer), think
        if op == "+":
            for line, nxt in zip(lines, lines[1:]):
                carry = re.search(r"carry (\d)\.$", line)
                if carry:
                    assert re.search(rf"(\+ {carry.group(1)} =|carry {carry.group(1)}, write)", nxt), think
        checked += 1
    assert checked > 1000


def test_hand_worked_solutions():
    """Worked on paper: 47+38: 7+8=15 (write 5 carry 1), 4+3+1=8. 105-98: 5<8 so 15-8=7;
    0 becomes -1 after the borrow, -1<9 so 9-9=0; 1 becomes 0, 0-0=0 -> 7. 47×38 = 47×8 + 47×30
    = 376 + 1410. 347×8 splits 347 into 300, 40, 7: 56 + 320 + 2400 = 2776. 999+1: three carries."""
    q = "q"
    assert ArithmeticProblem(47, "+", 38, q).completion == (
        "<think>ones: 7 + 8 = 15, write 5, carry 1.\ntens: 4 + 3 + 1 = 8, write 8.\n"
        "So 47 + 38 = 85.</think><answer>85</answer>"
    )
    assert ArithmeticProblem(105, "-", 98, q).think == (
        "ones: 5 < 8, borrow 10: 15 - 8 = 7, write 7.\n"
        "tens: 0 - 1 = -1 after the borrow; -1 < 9, borrow 10: 9 - 9 = 0, write 0.\n"
        "hundreds: 1 - 1 = 0 after the borrow; 0 - 0 = 0, write 0.\n"
        "So 105 - 98 = 7."
    )
    assert ArithmeticProblem(47, "×", 38, q).think == (
        "47 × 8 = 376\n47 × 30 = 1410\n376 + 1410 = 1786\nSo 47 × 38 = 1786."
    )
    assert ArithmeticProblem(347, "×", 8, q).think == (
        "7 × 8 = 56\n40 × 8 = 320\n300 × 8 = 2400\n56 + 320 + 2400 = 2776\nSo 347 × 8 = 2776."
    )
    assert ArithmeticProblem(999, "+", 1, q).think == (
        "ones: 9 + 1 = 10, write 0, carry 1.\ntens: 9 + 1 = 10, write 0, carry 1.\n"
        "hundreds: 9 + 1 = 10, write 0, carry 1.\nthousands: carry 1, write 1.\nSo 999 + 1 = 1000."
    )
    assert ArithmeticProblem(0, "×", 52, q).answer == "0"


def test_generator_respects_digits_and_ops():
    rng = random.Random(3)
    problems = [arithmetic_problem(rng, digits=(2, 3), ops="+-") for _ in range(500)]
    assert {p.op for p in problems} == {"+", "-"}
    assert all(10 <= p.a <= 999 and 10 <= p.b <= 999 for p in problems)
    assert all(p.result >= 0 for p in problems if p.op == "-")
    assert {len(str(p.a)) for p in problems} == {2, 3}
    assert {p.op for p in (arithmetic_problem(rng, 1, "x") for _ in range(20))} == {"×"}


def test_determinism_and_variety_by_seed():
    a = arithmetic_conversations(300, seed=7)
    assert a == arithmetic_conversations(300, seed=7)
    b = arithmetic_conversations(300, seed=8)
    assert a != b
    questions = [r["messages"][0]["content"] for r in a]
    assert len(set(questions)) == 300  # distinct problems
    # Phrasings vary: strip the expression and count the distinct templates.
    templates = {QUESTION_EXPR.sub("E", q) for q in questions}
    assert len(templates) >= 6
    assert {QUESTION_EXPR.search(q).group(2) for q in questions} == {"+", "-", "×"}
    assert make_arithmetic_prompts(50, seed=1) == make_arithmetic_prompts(50, seed=1)


def test_train_and_heldout_never_share_a_problem():
    """Default splits are disjoint whatever the seeds; the split is a fixed ~10 % hash bucket."""
    key = lambda text: tuple(QUESTION_EXPR.search(text).groups())  # noqa: E731
    train = {key(r["messages"][0]["content"]) for r in arithmetic_conversations(3000, seed=0)}
    for seed in (0, 1):
        heldout = make_arithmetic_prompts(250, seed=seed)
        assert len(heldout) == 250
        assert not train & {key(p["prompt"]) for p in heldout}
        assert all(p["answer"] == str(_evaluate(int(a), op, int(b)))
                   for p in heldout for a, op, b in [key(p["prompt"])])
    every = [(a, op, b) for a in range(100) for b in range(100) for op in "+-×"]
    share = sum(arithmetic_split(k) == "test" for k in every) / len(every)
    assert abs(share - HELDOUT_FRACTION) < 0.01


def test_exclude_removes_given_problems():
    heldout = make_arithmetic_prompts(200, seed=0, digits=(1, 2), split=None)
    train = arithmetic_conversations(2000, seed=0, digits=(1, 2), split=None, exclude=heldout)
    held_keys = {QUESTION_EXPR.search(p["prompt"]).groups() for p in heldout}
    train_keys = {QUESTION_EXPR.search(r["messages"][0]["content"]).groups() for r in train}
    assert len(train_keys) == 2000 and not held_keys & train_keys
    # Questions and conversations work as exclude entries too, with "*" read as ×.
    out = arithmetic_conversations(99, seed=0, digits=1, ops="*", split=None,
                                   exclude=["What is 3 * 4?"])
    assert all("3 × 4" not in r["messages"][0]["content"] for r in out)
    with pytest.raises(UserError, match=r"exclude\[1\]"):
        arithmetic_conversations(5, exclude=["1 + 1", "no numbers here"])


def test_worksheets_hold_the_conversations_working_as_plain_text():
    heldout = make_arithmetic_prompts(50, seed=0, digits=(1, 2))
    sheets = arithmetic_worksheets(70, seed=5, digits=(1, 2), per_sheet=16, exclude=heldout)
    convs = arithmetic_conversations(70, seed=5, digits=(1, 2), exclude=heldout)
    assert [len(s.split("\n\n")) for s in sheets] == [16, 16, 16, 16, 6]
    problems = [p for s in sheets for p in s.split("\n\n")]
    held_keys = {QUESTION_EXPR.search(p["prompt"]).groups() for p in heldout}
    for text, conv in zip(problems, convs):
        question, working = text.strip("\n").split("\n", 1)
        assert question == conv["messages"][0]["content"]
        assert QUESTION_EXPR.search(question).groups() not in held_keys
        think, answer = COMPLETION.fullmatch(conv["messages"][1]["content"]).groups()
        assert working == think and not any(t in text for t in TAGS)
        # The working ends by stating the result, and the result is right.
        a, op, b = QUESTION_EXPR.search(question).groups()
        assert working.endswith(f"= {_evaluate(int(a), op, int(b))}.") and answer == str(_evaluate(int(a), op, int(b)))
    with pytest.raises(UserError, match="per_sheet"):
        arithmetic_worksheets(5, per_sheet=0)


def test_direct_share_mixes_bare_answers_into_the_same_problems():
    worked = arithmetic_conversations(2000, seed=3)
    mixed = arithmetic_conversations(2000, seed=3, direct=0.5)
    # Same problems and phrasings; only some assistant turns change.
    assert [r["messages"][0] for r in worked] == [r["messages"][0] for r in mixed]
    bare = 0
    for w, m in zip(worked, mixed):
        question, reply = m["messages"][0]["content"], m["messages"][1]["content"]
        a, op, b = QUESTION_EXPR.search(question).groups()
        if reply == w["messages"][1]["content"]:
            continue
        bare += 1
        assert reply == f"<think></think><answer>{_evaluate(int(a), op, int(b))}</answer>"
        assert "step by step" not in question  # asked-for working is never dropped
    # 1/8 of the phrasings ask for the steps, so about 0.5 × 7/8 of the replies are bare.
    assert abs(bare / 2000 - 0.5 * 7 / 8) < 0.04
    assert all("<think></think>" not in r["messages"][1]["content"] for r in worked)
    assert all("<think></think>" in r["messages"][1]["content"]
               for r in arithmetic_conversations(200, seed=3, direct=1.0)
               if "step by step" not in r["messages"][0]["content"])
    with pytest.raises(UserError, match="direct"):
        arithmetic_conversations(5, direct=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 101, "digits": 1, "ops": "+", "split": None}, "distinct"),  # only 10×10 exist
        ({"n": 5, "digits": (0, 3)}, "digits"),
        ({"n": 5, "digits": (3, 2)}, "digits"),
        ({"n": 5, "ops": "+/"}, "ops"),
        ({"n": -1}, "n:"),
        ({"n": 5, "split": "dev"}, "split"),
    ],
)
def test_bad_arithmetic_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        arithmetic_conversations(**kwargs)


def test_all_hundred_one_digit_additions_can_be_drawn():
    out = arithmetic_conversations(100, digits=1, ops="+", split=None)
    assert {QUESTION_EXPR.search(r["messages"][0]["content"]).groups() for r in out} == {
        (str(a), "+", str(b)) for a in range(10) for b in range(10)
    }
