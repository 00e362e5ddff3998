"""Reward functions for online RL (minigpt.rewards.functions): the format and answer rules on
hand-written completions, DAPO's length penalty in each of its three regions, the n-gram
repetition penalty, the weighted combination and its guards, spec parsing, and the
reward-model scorer against direct calls of the reward model.

Every expected value is derived by hand in the test's docstring or comments. The one model is
tiny (hidden 32, 2 layers, vocabulary 300) and runs in fp32 on the CPU with one thread.
"""

from __future__ import annotations

import math

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig
from minigpt.model.reward_model import MiniGPTRewardModel
from minigpt.rewards.functions import (
    REWARD_FUNCTIONS,
    CombinedReward,
    RewardModelScorer,
    answer_reward,
    format_reward,
    gsm8k_final_answer,
    length_penalty,
    make_reward,
    parse_reward_spec,
    repetition_penalty,
)
from minigpt.tokenizer import IM_END, train_tokenizer

VOCAB = 300
IM_END_ID = 3  # contract: <|im_end|> is id 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def _prompts(n: int) -> list[str]:
    return [f"prompt {i}" for i in range(n)]


# ------------------------------------------------------------------------------ format


@pytest.mark.parametrize(
    "completion",
    [
        "<think>2 + 3 = 5</think><answer>5</answer>",
        "  <think>x</think>\n\n <answer>5</answer>\n",  # outer whitespace and whitespace between
        "<think></think><answer>yes</answer>",  # empty thinking is allowed
        "<think>line 1\nline 2</think><answer>a\nb</answer>",  # newlines inside both blocks
    ],
)
def test_format_reward_accepts(completion):
    """Each is <think>…</think>, optional whitespace, <answer>non-empty</answer>, tags once."""
    assert format_reward(["p"], [completion]) == [1.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<think>x</think>",  # no answer block
        "<answer>5</answer>",  # no think block
        "<think>x<answer>5</answer>",  # missing </think>
        "<think>x</think><answer>5",  # missing </answer>
        "<think>x</think><answer>5</answer><answer>6</answer>",  # two answers
        "<think>x</think><answer>   </answer>",  # whitespace-only answer
        "<think>x</think><answer></answer>",  # empty answer
        "Sure! <think>x</think><answer>5</answer>",  # text before
        "<think>x</think> so <answer>5</answer>",  # text between
        "<think>x</think><answer>5</answer> done",  # text after
        "<answer>5</answer><think>x</think>",  # wrong order
        "<think>a<think>b</think><answer>5</answer>",  # <think> twice
        "",
    ],
)
def test_format_reward_rejects(completion):
    assert format_reward(["p"], [completion]) == [0.0]


def test_format_reward_is_per_completion():
    """One list in, one value per completion, in order."""
    good, bad = "<think>t</think><answer>1</answer>", "<answer>1</answer>"
    assert format_reward(_prompts(3), [bad, good, bad]) == [0.0, 1.0, 0.0]


# ------------------------------------------------------------------------------ answer


def test_gsm8k_final_answer():
    assert gsm8k_final_answer("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,234") == "1,234"
    assert gsm8k_final_answer("a #### b\n#### 72 ") == "72"  # the last marker counts
    assert gsm8k_final_answer(" 42 ") == "42"  # no marker: the whole string


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        # GSM8K reference with thousands separator vs a plain number
        ("<think>t</think><answer>1234</answer>", "Step.\n#### 1,234", 1.0),
        ("<answer>1,234</answer>", "#### 1234", 1.0),
        # currency, trailing zeros, sign, trailing full stop, percent
        ("<answer>$42</answer>", "42", 1.0),
        ("<answer>42.0</answer>", "42", 1.0),
        ("<answer>+42</answer>", "42", 1.0),
        ("<answer>42.</answer>", "42", 1.0),
        ("<answer> 42 </answer>", "42", 1.0),
        ("<answer>50%</answer>", "50", 1.0),
        ("<answer>-7</answer>", "#### -7", 1.0),
        # fractions are exact numbers: 3/4 == 0.75, but not 0.76 and not -3/4
        ("<answer>3/4</answer>", "0.75", 1.0),
        ("<answer>0.75</answer>", "3/4", 1.0),
        ("<answer>0.76</answer>", "3/4", 0.0),
        ("<answer>-3/4</answer>", "0.75", 0.0),
        # wrong numbers
        ("<answer>43</answer>", "42", 0.0),
        ("<answer>1235</answer>", "#### 1,234", 0.0),
        ("<answer>4 2</answer>", "42", 0.0),  # inner whitespace: not the number 42
        # the last complete answer counts; none, unclosed or empty scores 0
        ("<answer>41</answer> wait <answer>42</answer>", "42", 1.0),
        ("<answer>42</answer> wait <answer>41</answer>", "42", 0.0),
        ("the answer is 42", "42", 0.0),
        ("<answer>42", "42", 0.0),
        ("<answer> </answer>", "42", 0.0),
        # non-numbers: whitespace-collapsed exact string equality
        ("<answer>New   York</answer>", "New York", 1.0),
        ("<answer>new york</answer>", "New York", 0.0),
    ],
)
def test_answer_reward(completion, reference, expected):
    assert answer_reward(["p"], [completion], answer=[reference]) == [expected]


def test_answer_reward_columns():
    """An int reference is read as its string; a None reference is 'not applicable' (None);
    the answer column missing or of the wrong length is a UserError naming the function and
    the column."""
    completions = ["<answer>85</answer>", "<answer>85</answer>", "<answer>x</answer>"]
    assert answer_reward(_prompts(3), completions, answer=[85, "86", None]) == [1.0, 0.0, None]
    with pytest.raises(UserError, match=r"answer_reward.*'answer' column"):
        answer_reward(["p"], ["<answer>1</answer>"])
    with pytest.raises(UserError, match=r"answer_reward.*'answer' holds 1 values for 2"):
        answer_reward(_prompts(2), ["a", "b"], answer=["1"])


# ------------------------------------------------------------------------------ length, repetition


def test_length_penalty_regions():
    """L_max = 8, default cache c = 8 // 4 = 2, so the soft zone is 6 < L <= 8.
    L = 0, 5, 6 -> 0 (first region); L = 7 -> (8 - 2 - 7) / 2 = -0.5; L = 8 -> (8 - 2 - 8) / 2
    = -1 (second region, its end meets the third); L = 9, 20 -> -1 (third region).
    With c = 4 the zone is 4 < L <= 8: L = 4 -> 0, L = 5 -> (8 - 4 - 5) / 4 = -0.25,
    L = 7 -> -0.75."""
    lengths = [0, 5, 6, 7, 8, 9, 20]
    ids = [[9] * n for n in lengths]
    got = length_penalty(_prompts(7), ["c"] * 7, completion_ids=ids, max_completion_length=8)
    assert got == pytest.approx([0.0, 0.0, 0.0, -0.5, -1.0, -1.0, -1.0])
    ids = [[9] * n for n in (4, 5, 7)]
    got = length_penalty(_prompts(3), ["c"] * 3, completion_ids=ids, max_completion_length=8, cache_length=4)
    assert got == pytest.approx([0.0, -0.25, -0.75])
    # c = 0: no soft zone, 0 up to L_max then -1
    ids = [[9] * n for n in (8, 9)]
    assert length_penalty(_prompts(2), ["c"] * 2, completion_ids=ids, max_completion_length=8, cache_length=0) == [0.0, -1.0]


def test_length_penalty_errors():
    with pytest.raises(UserError, match="max_completion_length"):
        length_penalty(["p"], ["c"], completion_ids=[[1]], max_completion_length=0)
    with pytest.raises(UserError, match=r"cache_length must be an integer in \[0, 8\]"):
        length_penalty(["p"], ["c"], completion_ids=[[1]], max_completion_length=8, cache_length=9)
    with pytest.raises(UserError, match="length_penalty: needs the 'completion_ids'"):
        length_penalty(["p"], ["c"], max_completion_length=8)


def test_repetition_penalty_by_hand():
    """ids 1 2 3 1 2 3 1, n = 3: the 5 trigrams are 123, 231, 312, 123, 231 -> 3 unique,
    penalty -(1 - 3/5) = -0.4. All distinct (1..5) -> 0. Two tokens < n -> 0.
    n = 2 on 7 7 7 7: 3 bigrams, 1 unique -> -(1 - 1/3) = -2/3."""
    ids = [[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4, 5], [1, 2]]
    assert repetition_penalty(_prompts(3), ["c"] * 3, completion_ids=ids) == pytest.approx([-0.4, 0.0, 0.0])
    assert repetition_penalty(["p"], ["c"], completion_ids=[[7, 7, 7, 7]], ngram=2) == pytest.approx([-2 / 3])
    with pytest.raises(UserError, match="ngram"):
        repetition_penalty(["p"], ["c"], completion_ids=[[1]], ngram=0)


# ------------------------------------------------------------------------------ combination


def test_combined_reward_weighted_sum():
    """f = [1, 0, None], g = [0.5, 2, 3], weights 2 and -1:
    total = [2*1 - 0.5, 2*0 - 2, 0 - 3] = [1.5, -2, -3] (None counts as 0); per-function
    values keep the None. Both functions receive the extra columns."""
    seen = {}

    def f(prompts, completions, **kw):
        seen["f"] = kw
        return [1, 0.0, None]

    def g(prompts, completions, answer, **kw):
        seen["g"] = answer
        return [0.5, 2, 3]

    total, per = CombinedReward([("f", f, 2.0), ("g", g, -1.0)])(_prompts(3), ["a", "b", "c"], answer=["x", "y", "z"])
    assert total == pytest.approx([1.5, -2.0, -3.0])
    assert per == {"f": [1.0, 0.0, None], "g": [0.5, 2.0, 3.0]}
    assert seen == {"f": {"answer": ["x", "y", "z"]}, "g": ["x", "y", "z"]}


def test_reward_functions_are_called_by_keyword_as_trl_calls_them():
    """A function with TRL's signature, taking only `completions` (and **kwargs): the reward of
    TRL's quickstart, minus the distance of each completion's length from 20 characters."""

    def reward_len(completions, **kwargs):
        assert set(kwargs) >= {"prompts", "answer"}
        return [-abs(20 - len(c)) for c in completions]

    completions = ["x" * 5, "y" * 20, "z" * 31]
    total, per = CombinedReward([("reward_len", reward_len, 1.0)])(_prompts(3), completions, answer=["a", "b", "c"])
    assert total == [-15.0, 0.0, -11.0] and per == {"reward_len": [-15.0, 0.0, -11.0]}
    from minigpt.rewards.functions import as_combined_reward

    combined = as_combined_reward([reward_len], None, None, 8)  # TRL's reward_funcs=[reward_len]
    assert combined.names == ["reward_len"] and combined(_prompts(3), completions, answer=["a"] * 3)[0] == total


def test_a_reward_function_that_cannot_take_keywords_is_refused():
    """Reward functions are called by keyword, as TRL calls them; `lambda p, c, **kw` would get
    neither argument, so it is refused when the reward is built, naming it."""
    def old_style(p, c, **kw):
        return [float(len(x)) for x in c]

    with pytest.raises(UserError, match="'old_style' takes \\(p, c\\).*prompts and completions"):
        CombinedReward([("old_style", old_style, 1.0)])


def test_combined_reward_raising_function_names_sample():
    """The function fails only on the completion 'bad' (index 2): the error names the function,
    the sample index and the first 60 characters of that sample's prompt."""

    def boom(prompts, completions, **kw):
        for c in completions:
            if c == "bad":
                raise RuntimeError("cannot score")
        return [0.0] * len(completions)

    prompts = ["p0", "p1", "x" * 100, "p3"]
    with pytest.raises(UserError, match=r"reward function 'boom' failed on sample 2 \(prompt: 'x{60}'\): RuntimeError: cannot score"):
        CombinedReward([("boom", boom, 1.0)])(prompts, ["a", "b", "bad", "d"])


def test_combined_reward_batch_only_failure():
    """A function that fails on the batch but on no single sample: the error says so."""

    def needs_one(prompts, completions, **kw):
        if len(completions) != 1:
            raise RuntimeError("one at a time")
        return [0.0]

    with pytest.raises(UserError, match=r"'needs_one' failed on the batch of 2 samples"):
        CombinedReward([("needs_one", needs_one, 1.0)])(_prompts(2), ["a", "b"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.0, float("nan"), 1.0], r"reward function 'bad' returned nan for sample 1"),
        ([0.0, 1.0, float("-inf")], r"reward function 'bad' returned -inf for sample 2"),
        (["1.0", 0.0, 0.0], r"reward function 'bad' returned a non-number for sample 0"),
        ([0.0, 1.0], r"reward function 'bad' returned 2 values for 3 completions"),
        (0.5, r"reward function 'bad' returned float"),
    ],
)
def test_combined_reward_checks_values(values, message):
    with pytest.raises(UserError, match=message):
        CombinedReward([("bad", lambda prompts, completions, **kw: values, 1.0)])(_prompts(3), ["a", "b", "c"])


def test_combined_reward_rejects_bad_functions():
    with pytest.raises(UserError, match="given twice"):
        CombinedReward([("f", format_reward, 1.0), ("f", format_reward, 2.0)])
    with pytest.raises(UserError, match="not callable"):
        CombinedReward([("f", 3, 1.0)])
    with pytest.raises(UserError, match="finite"):
        CombinedReward([("f", format_reward, math.inf)])


# ------------------------------------------------------------------------------ spec, make_reward


def test_parse_reward_spec():
    assert parse_reward_spec("format,answer") == [("format", 1.0), ("answer", 1.0)]
    assert parse_reward_spec("format:0.5, answer") == [("format", 0.5), ("answer", 1.0)]
    assert parse_reward_spec(["format", "answer:2"]) == [("format", 1.0), ("answer", 2.0)]
    assert parse_reward_spec("model:-0.1,length") == [("model", -0.1), ("length", 1.0)]
    assert parse_reward_spec("mine:3", extra_names=["mine"]) == [("mine", 3.0)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("format,speed", r"unknown reward 'speed'; known: format, answer, length, repetition, model"),
        ("format:abc", r"weight of 'format' must be a finite number, got 'abc'"),
        ("format:nan", r"weight of 'format' must be a finite number"),
        ("format:inf", r"weight of 'format' must be a finite number"),
        ("format:", r"weight of 'format' must be a finite number"),
        ("format,,answer", r"empty reward name"),
        ("", r"empty reward name"),
        ("format,format:2", r"'format' given twice"),
        (3, r"expected a string"),
    ],
)
def test_parse_reward_spec_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_reward_spec(spec)


def test_make_reward():
    """format:0.5 + answer + length (L_max = 8, c = 2) on two completions:
    A = well-formed, right answer (85), 7 tokens -> 0.5*1 + 1 + (8-2-7)/2 = 1.0;
    B = no format, wrong answer, 3 tokens -> 0 + 0 + 0 = 0.
    A user function overrides by name and adds new names."""
    reward = make_reward("format:0.5,answer,length", max_completion_length=8)
    assert reward.names == ["format", "answer", "length"]
    completions = ["<think>t</think><answer>85</answer>", "<answer>84"]
    total, per = reward(_prompts(2), completions, answer=["85", "85"], completion_ids=[[9] * 7, [9] * 3])
    assert total == pytest.approx([1.0, 0.0])
    assert per["length"] == pytest.approx([-0.5, 0.0])

    custom = make_reward("answer,bonus:2", functions={"answer": lambda prompts, completions, **kw: [1.0] * len(completions), "bonus": lambda prompts, completions, **kw: [0.25] * len(completions)})
    assert custom(["p"], ["anything"])[0] == [1.5]  # 1 + 2 * 0.25, the built-in answer not used
    assert set(REWARD_FUNCTIONS) == {"format", "answer", "length", "repetition"}


def test_make_reward_errors():
    with pytest.raises(UserError, match="'model' needs a reward_model"):
        make_reward("format,model")
    with pytest.raises(UserError, match="'length' needs max_completion_length"):
        make_reward("length")
    with pytest.raises(UserError, match="unknown reward 'bonus'"):
        make_reward("bonus")
    with pytest.raises(UserError, match="'bonus' is not callable"):
        make_reward("bonus", functions={"bonus": "nope"})


def test_make_reward_wraps_missing_column():
    """answer_reward's own missing-column error reaches the user through the guard, naming the
    reward, sample 0, and the column."""
    with pytest.raises(UserError, match=r"reward function 'answer' failed on sample 0 .*'answer' column"):
        make_reward("answer")(["p"], ["<answer>1</answer>"])


# ------------------------------------------------------------------------------ reward model


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["the cat sat on the mat", "a dog ran"] * 5, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    # initializer_range 0.1: a dropped or misplaced token moves the reward well past the tolerance.
    cfg = MiniGPTConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        pad_token_id=1, eos_token_id=0, initializer_range=0.1)
    return MiniGPTRewardModel(cfg)


def _direct(rm: MiniGPTRewardModel, ids: list[int]) -> float:
    with torch.no_grad():
        return rm(input_ids=torch.tensor([ids])).rewards.item()


def test_reward_model_scorer_matches_direct_calls(tokenizer, reward_model):
    """Three samples scored two at a time (so the second batch pads the shorter row) must equal
    the reward model called on each hand-built sequence prompt + completion + [im_end = 3]
    alone, without padding. Dropping the im_end changes the reward (so the test would see it
    missing). The model's training mode is restored."""
    assert tokenizer.convert_tokens_to_ids(IM_END) == IM_END_ID
    prompt_ids = [[2, 10, 11, 12], [2, 20, 21], [2, 30]]
    completion_ids = [[13, 14], [22, 23, 24, 25, 26], [31, 32, 33]]
    hand = [[2, 10, 11, 12, 13, 14, 3], [2, 20, 21, 22, 23, 24, 25, 26, 3], [2, 30, 31, 32, 33, 3]]
    reward_model.eval()
    expected = [_direct(reward_model, ids) for ids in hand]
    without_im_end = [_direct(reward_model, ids[:-1]) for ids in hand]
    assert all(abs(a - b) > 1e-3 for a, b in zip(expected, without_im_end))

    reward_model.train()
    scorer = RewardModelScorer(reward_model, tokenizer, batch_size=2)
    assert scorer.__name__ == "reward_model"
    got = scorer(_prompts(3), ["c"] * 3, prompt_ids=prompt_ids, completion_ids=completion_ids)
    assert got == pytest.approx(expected, abs=1e-5)
    assert reward_model.training

    # max_length keeps the last tokens: sample 1 scored as its last 4 ids [24, 25, 26, 3]
    cut = RewardModelScorer(reward_model, tokenizer, max_length=4)
    reward_model.eval()
    assert cut(["p"], ["c"], prompt_ids=prompt_ids[1:2], completion_ids=completion_ids[1:2]) == pytest.approx(
        [_direct(reward_model, [24, 25, 26, 3])], abs=1e-5
    )

    # through make_reward, weight 2: twice the model's reward
    total, per = make_reward("model:2", reward_model=reward_model, tokenizer=tokenizer)(
        _prompts(3), ["c"] * 3, prompt_ids=prompt_ids, completion_ids=completion_ids
    )
    assert total == pytest.approx([2 * e for e in expected], abs=1e-5)


def test_reward_model_scorer_errors(tokenizer, reward_model):
    scorer = RewardModelScorer(reward_model, tokenizer)
    with pytest.raises(UserError, match="reward_model: needs the 'prompt_ids' column"):
        scorer(["p"], ["c"], completion_ids=[[5]])
    with pytest.raises(UserError, match="'completion_ids' holds 2 rows for 1 completions"):
        scorer(["p"], ["c"], prompt_ids=[[5]], completion_ids=[[5], [6]])
    with pytest.raises(UserError, match="batch_size"):
        RewardModelScorer(reward_model, tokenizer, batch_size=0)
