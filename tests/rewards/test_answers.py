"""Tests for the one answer checker (`minigpt.rewards.answers`): extraction from the tags and
numeric comparison, worked by hand, and its agreement with the RL answer reward.
"""

from __future__ import annotations

import pytest

from minigpt.rewards.answers import check_answer, extract_answer


# ------------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer>85</answer>", "85"),
        ("<answer>  85 \n</answer>", "85"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last one counts
        ("<answer>multi\nline</answer>", "multi\nline"),
        ("<answer></answer>", ""),
        ("85", None),
        ("<answer>85", None),  # truncated: no closing tag
        ("</answer>85<answer>", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "answer_text, reference, expected",
    [
        ("85", "85", True),
        (" 85 ", "85", True),
        ("85.0", "85", True),
        ("+85", "85", True),
        ("1,234", "1234", True),
        ("1234", "1,234", True),
        ("1,234.50", "1234.5", True),
        ("-0", "0", True),
        ("85", 85, True),  # int reference
        ("86", "85", False),
        ("-85", "85", False),
        ("85 apples", "85", False),
        ("12,34", "1234", False),  # not a thousands pattern
        ("1e2", "100", False),  # only plain decimals count as numbers
        ("", "0", False),
        ("Paris", " Paris", True),  # non-numeric: whitespace-collapsed equality
        ("paris", "Paris", False),
    ],
)
def test_check_answer(answer_text, reference, expected):
    assert check_answer(f"<think>…</think><answer>{answer_text}</answer>", reference) is expected


@pytest.mark.parametrize(
    "got, reference, expected",
    [("$42", "42", True), ("3/4", "0.75", True), ("50%", "50", True), ("-$5", "-5", True), ("3/4", "0.7", False), ("4 2", "42", False)],
)
def test_check_answer_and_the_answer_reward_agree(got, reference, expected):
    """One checker: the quickstart's accuracy and the RL answer reward score every answer alike
    (they used to disagree on "$42" and "3/4")."""
    from minigpt.rewards.functions import answer_reward

    text = f"<think>…</think><answer>{got}</answer>"
    assert check_answer(text, reference) is expected
    assert answer_reward([""], [text], answer=[reference]) == [1.0 if expected else 0.0]


def test_check_answer_needs_the_tags():
    assert not check_answer("85", "85")
    assert not check_answer("<think>85</think>", "85")
    assert check_answer("<answer>84</answer><answer>85</answer>", "85")
