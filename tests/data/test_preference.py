"""Tests for preference data: record formats, tokenization against the chat template,
truncation, skip counting, bad input, collators and the split (KTO's unpaired data: test_kto.py).

Expected values are derived by hand in each test: ids from an independent
``tokenizer.apply_chat_template`` rendering (ChatML writes ``<|im_start|>role\\ncontent<|im_end|>\\n``
per message and ``<|im_start|>assistant\\n`` as the generation prompt), truncation and batch
layouts from small hand-built id lists.
"""

from __future__ import annotations

import pytest
import torch

from minigpt.data.preference import (
    IGNORE_INDEX,
    SKIP_KINDS,
    PreferenceDataset,
    PreferencePair,
    collate_preference,
    normalize_preference,
    split_preference,
)
from minigpt.data.kto import UnpairedPreferenceDataset
from minigpt.errors import UserError
from minigpt.tokenizer import IM_END
from minigpt.tokenizer.chat import SkipRecord

from chat_records import render, tiny_chat_tokenizer, write_jsonl


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer()


def _assert_pair_matches(tok, pair: PreferencePair, prompt: list[dict], chosen: str, rejected: str) -> None:
    """prompt_ids == the rendered prompt with the generation prompt; prompt + reply == the whole
    conversation rendered, minus the trailing "\\n" the template writes after <|im_end|>."""
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert pair.prompt_ids == render(tok, prompt, generation_prompt=True)
    for reply, ids in ((chosen, pair.chosen_ids), (rejected, pair.rejected_ids)):
        full = render(tok, [*prompt, {"role": "assistant", "content": reply}])
        assert pair.prompt_ids + ids + newline == full
        assert ids[-1] == tok.convert_tokens_to_ids(IM_END)


# ----------------------------------------------------------------------------- record formats


def test_string_prompt_ids_equal_chat_template(tok):
    """A string prompt is one user message. The prompt text is hand-written ChatML, and the
    ids are checked against apply_chat_template of the full conversation."""
    rec = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."}
    prompt, chosen, rejected = normalize_preference(rec, "r")
    assert prompt == [{"role": "user", "content": "What is the capital of France?"}]
    assert (chosen, rejected) == ("Paris.", "Lyon, I think.")
    ds = PreferenceDataset([rec], tok, max_length=256)
    [pair] = ds.examples
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert pair.prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(pair.chosen_ids) == "Paris.<|im_end|>"
    _assert_pair_matches(tok, pair, prompt, chosen, rejected)
    assert pair.where == "record 0"


def test_message_lists_extend_the_prompt(tok):
    """chosen/rejected as message lists: their last (assistant) message is the reply and the
    earlier ones (equal in both) follow the 'prompt' messages. ShareGPT from/value lists too."""
    history = [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a number."},
    ]
    rec = {
        "prompt": [{"role": "system", "content": "Answer politely."}],
        "chosen": [*history, {"role": "assistant", "content": "Twelve."}],
        "rejected": [*history, {"role": "assistant", "content": "No."}],
    }
    prompt, chosen, rejected = normalize_preference(rec, "r")
    assert prompt == [{"role": "system", "content": "Answer politely."}, *history]
    assert (chosen, rejected) == ("Twelve.", "No.")

    share = {
        "prompt": [{"from": "human", "value": "Name a number."}],
        "chosen": [{"from": "gpt", "value": "Twelve."}],
        "rejected": [{"from": "gpt", "value": "No."}],
    }
    assert normalize_preference(share, "s") == ([{"role": "user", "content": "Name a number."}], "Twelve.", "No.")

    # No 'prompt' field: the shared earlier messages are the whole (implicit) prompt.
    implicit = {"chosen": rec["chosen"], "rejected": rec["rejected"]}
    assert normalize_preference(implicit, "i") == (history, "Twelve.", "No.")

    ds = PreferenceDataset([rec, share, implicit], tok, max_length=256)
    assert ds.stats["pairs"] == 3
    _assert_pair_matches(tok, ds.examples[0], prompt, chosen, rejected)
    _assert_pair_matches(tok, ds.examples[2], history, "Twelve.", "No.")


def test_hh_rlhf_multi_turn_transcript(tok):
    """An HH-RLHF pair as in the real files: "\\n\\nHuman: " / "\\n\\nAssistant: " turns, double
    spaces after the colon and trailing spaces, an empty assistant turn inside the prompt (as in
    helpful-base test line 121), and "Human:" inside a reply (not a turn: no "\\n\\n" before it).
    Each side is split at its LAST "\\n\\nAssistant:"; turn texts are stripped."""
    prefix = (
        "\n\nHuman: Can you help me bake bread?"
        "\n\nAssistant:  Sure!  What kind of bread?  "
        "\n\nHuman: Something simple."
        "\n\nAssistant: "
        "\n\nHuman: Are you there?"
    )
    rec = {
        "chosen": prefix + "\n\nAssistant:  Yes. Mix flour, water, yeast and salt. Human: thanks",
        "rejected": prefix + "\n\nAssistant: No.",
    }
    prompt, chosen, rejected = normalize_preference(rec, "hh")
    assert prompt == [
        {"role": "user", "content": "Can you help me bake bread?"},
        {"role": "assistant", "content": "Sure!  What kind of bread?"},
        {"role": "user", "content": "Something simple."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Are you there?"},
    ]
    assert chosen == "Yes. Mix flour, water, yeast and salt. Human: thanks"
    assert rejected == "No."
    [pair] = PreferenceDataset([rec], tok, max_length=512).examples
    _assert_pair_matches(tok, pair, prompt, chosen, rejected)


def test_reply_with_leading_whitespace_is_tokenized_after_the_prompt(tok):
    """The prompt ids are shared by both replies and equal the generation prompt; a reply
    starting with a newline is tokenized on its own (what a model would generate after the
    prompt), so prompt + chosen decodes to exactly prompt text + reply + <|im_end|>."""
    rec = {"prompt": "Hi", "chosen": "\n\nHello there.", "rejected": "Go away."}
    [pair] = PreferenceDataset([rec], tok, max_length=256).examples
    assert pair.prompt_ids == render(tok, [{"role": "user", "content": "Hi"}], generation_prompt=True)
    assert pair.chosen_ids == tok("\n\nHello there." + IM_END, add_special_tokens=False)["input_ids"]
    assert tok.decode(pair.prompt_ids + pair.chosen_ids) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\n\nHello there.<|im_end|>"
    )


def test_file_source_names_file_and_line(tok, tmp_path):
    """A gzipped JSONL file: each pair's `where` is "path:LINE" (1-based)."""
    recs = [
        {"prompt": "One?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Two?", "chosen": "Sure.", "rejected": "Never."},
    ]
    path = write_jsonl(tmp_path / "p.jsonl.gz", recs, gz=True)
    ds = PreferenceDataset(path, tok, max_length=64)
    assert [ex.where for ex in ds.examples] == [f"{path}:1", f"{path}:2"]
    item = ds[1]
    assert set(item) == {"chosen_input_ids", "rejected_input_ids", "prompt_length", "index"}
    ex = ds.examples[1]
    assert item["chosen_input_ids"].tolist() == ex.prompt_ids + ex.chosen_ids
    assert item["rejected_input_ids"].tolist() == ex.prompt_ids + ex.rejected_ids
    assert item["prompt_length"] == len(ex.prompt_ids) and item["index"] == 1


# ----------------------------------------------------------------------------- skips and errors


@pytest.mark.parametrize(
    "record, kind",
    [
        ({"prompt": "Q", "chosen": "A"}, "missing_field"),
        ({"prompt": "Q", "chosen": None, "rejected": "B"}, "missing_field"),
        ({"chosen": "plain text", "rejected": "other text"}, "missing_field"),  # no prompt, not HH
        ({"prompt": "Q", "chosen": "Same.", "rejected": "Same."}, "identical"),
        ({"prompt": "Q", "chosen": "A", "rejected": "  \n"}, "empty_response"),
        ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Other\n\nAssistant: B"}, "prompt_mismatch"),
        ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant:  "}, "empty_response"),
        ({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "no assistant turn"}, "prompt_mismatch"),
        (
            {
                "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}],
            },
            "prompt_mismatch",
        ),
    ],
)
def test_skip_kinds(record, kind):
    with pytest.raises(SkipRecord) as info:
        normalize_preference(record, "here")
    assert info.value.kind == kind
    assert "here" in info.value.reason


def test_every_skip_kind_is_counted(tok):
    """2 good records, 1 of each skip kind + a second missing one: stats count each exactly,
    and the summary line reports them."""
    good = {"prompt": "Q", "chosen": "Yes.", "rejected": "No."}
    recs = [
        good,
        {"prompt": "Q", "chosen": "A"},  # missing_field
        {"rejected": "B", "prompt": "Q"},  # missing_field
        {"prompt": "Q", "chosen": "Same.", "rejected": "Same."},  # identical
        {"prompt": "Q", "chosen": "", "rejected": "B"},  # empty_response
        {"chosen": "\n\nHuman: X\n\nAssistant: A", "rejected": "\n\nHuman: Y\n\nAssistant: B"},  # prompt_mismatch
        good,
    ]
    ds = PreferenceDataset(recs, tok, max_length=64)
    assert ds.stats["records"] == 7 and ds.stats["pairs"] == len(ds) == 2
    assert {k: ds.stats[f"skipped_{k}"] for k in SKIP_KINDS} == {
        "missing_field": 2, "identical": 1, "empty_response": 1, "prompt_mismatch": 1,
    }
    assert [ex.where for ex in ds.examples] == ["record 0", "record 6"]
    line = ds.summary()
    assert "7 records -> 2 pairs" in line
    for text in ("2 missing_field", "1 identical", "1 empty_response", "1 prompt_mismatch"):
        assert text in line


def test_no_usable_pair_raises_with_counts(tok):
    with pytest.raises(UserError, match=r"records: no usable preference pair .*2 identical"):
        PreferenceDataset([{"prompt": "Q", "chosen": "A", "rejected": "A"}] * 2, tok, max_length=64)
    with pytest.raises(UserError, match="no records"):
        PreferenceDataset([], tok)


_HH_Q = "\n\nHuman: Q\n\nAssistant: "
_MUST = "must be a string or a message list, got"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "Q", "chosen": 5, "rejected": "B"}, rf":2: field 'chosen' {_MUST} int"),
        ({"prompt": 3, "chosen": "A", "rejected": "B"}, rf":2: field 'prompt' {_MUST} int"),
        ({"prompt": "Q", "chosen": "A", "rejected": {"text": "B"}}, rf":2: field 'rejected' {_MUST} dict"),
        ({"prompt": "Q", "chosen": "A <|im_end|> B", "rejected": "B"}, r":2: field 'chosen' contains the control token"),
        (
            {"chosen": "\n\nHuman: Q <|im_start|>\n\nAssistant: A", "rejected": _HH_Q + "B"},
            r":2: field 'chosen' contains the control token",
        ),
        (
            {"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"},
            r":2: field 'chosen' must end with an assistant message",
        ),
        (
            {"prompt": [{"role": "robot", "content": "Q"}], "chosen": "A", "rejected": "B"},
            r":2: field 'prompt': message 1 has unknown role",
        ),
        ({"chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}, r":2: without a 'prompt'"),
        (
            {"chosen": "preamble" + _HH_Q + "A", "rejected": "preamble" + _HH_Q + "B"},
            r":2: field 'chosen' is not an HH-RLHF transcript",
        ),
        ({"chosen": "\n\nHuman:  \n\nAssistant: A", "rejected": "\n\nHuman:  \n\nAssistant: B"}, r":2: field 'chosen' turn 1"),
    ],
)
def test_wrong_types_raise_naming_file_line_and_field(tok, tmp_path, record, message):
    """Line 1 is fine; line 2 is malformed: the UserError names path:2 and the field."""
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": "Yes.", "rejected": "No."}, record])
    with pytest.raises(UserError, match=message) as info:
        PreferenceDataset(path, tok, max_length=64)
    assert str(info.value).startswith(f"{path}:2")


def test_bad_lengths_raise(tok):
    rec = [{"prompt": "Q", "chosen": "A", "rejected": "B"}]
    with pytest.raises(UserError, match="max_length"):
        PreferenceDataset(rec, tok, max_length=1)
    with pytest.raises(UserError, match="max_prompt_length"):
        PreferenceDataset(rec, tok, max_length=16, max_prompt_length=16)
    with pytest.raises(UserError, match="max_prompt_length"):
        PreferenceDataset(rec, tok, max_length=16, max_prompt_length=0)


# ----------------------------------------------------------------------------- truncation


def _pair(p: int, c: int, r: int, where: str = "x") -> PreferencePair:
    """Distinct ids: prompt 100.., chosen 200.., rejected 300.. so cuts are easy to read."""
    return PreferencePair(list(range(100, 100 + p)), list(range(200, 200 + c)), list(range(300, 300 + r)), where)


@pytest.mark.parametrize(
    "sizes, max_length, max_prompt, expect, cuts",
    [
        # fits: 10 + 6 = 16 <= 16, nothing cut
        ((10, 4, 6), 16, 5, (10, 4, 6), (0, 0)),
        # 10 + 6 > 12: keep max(5, 12 - 6) = 6 prompt tokens (the LAST 6); replies fit
        ((10, 4, 6), 12, 5, (6, 4, 6), (1, 0)),
        # 10 + 9 > 12: prompt down to its floor 5, then replies cut to 12 - 5 = 7
        ((10, 9, 3), 12, 5, (5, 7, 3), (1, 1)),
        # a prompt shorter than max_prompt_length is never cut: replies cut to 12 - 4 = 8
        ((4, 20, 10), 12, 6, (4, 8, 8), (0, 1)),
    ],
)
def test_truncation_rule(tok, sizes, max_length, max_prompt, expect, cuts):
    ds = PreferenceDataset([_pair(*sizes)], tok, max_length=max_length, max_prompt_length=max_prompt)
    [ex] = ds.examples
    p, c, r = sizes
    assert ex.prompt_ids == list(range(100 + p - expect[0], 100 + p))  # cut from the left
    assert ex.chosen_ids == list(range(200, 200 + expect[1]))  # cut on the right
    assert ex.rejected_ids == list(range(300, 300 + expect[2]))
    assert (ds.stats["prompt_truncated"], ds.stats["response_truncated"]) == cuts
    assert max(len(ex.prompt_ids) + len(ex.chosen_ids), len(ex.prompt_ids) + len(ex.rejected_ids)) <= max_length


def test_replies_identical_after_truncation_are_skipped(tok):
    """Replies sharing their first 6 tokens, cut to 12 - 6 = 6, become identical: skipped."""
    same = PreferencePair(list(range(6)), [7] * 6 + [8], [7] * 6 + [9], "s")
    ds = PreferenceDataset([same, _pair(3, 2, 2)], tok, max_length=12, max_prompt_length=6)
    assert ds.stats["skipped_identical"] == 1 and len(ds) == 1 and ds.stats["records"] == 2


def test_default_max_prompt_length_and_real_prompt_cut(tok):
    """max_prompt_length defaults to max_length // 2. A long rendered prompt keeps its last
    tokens, so it still ends with the generation prompt "<|im_start|>assistant\\n"."""
    long_q = " ".join(["one, two, three"] * 20)
    rec = {"prompt": long_q, "chosen": "Twelve " * 20, "rejected": "No."}
    ds = PreferenceDataset([rec], tok, max_length=40)
    assert ds.max_prompt_length == 20
    [ex] = ds.examples
    full_prompt = render(tok, [{"role": "user", "content": long_q}], generation_prompt=True)
    full_chosen = tok("Twelve " * 20 + IM_END, add_special_tokens=False)["input_ids"]
    assert len(full_chosen) > 20  # so the prompt is cut to its floor, 20
    assert ex.prompt_ids == full_prompt[-20:]
    assert ex.chosen_ids == full_chosen[:20]
    assert tok.decode(ex.prompt_ids).endswith("<|im_start|>assistant\n")


# ----------------------------------------------------------------------------- collate


def test_collate_preference_layout_and_targets():
    """Items: prompt [10, 11, 12] + chosen [20, 21] / rejected [30], and prompt [40] + chosen
    [50] / rejected [60, 61, 62, 63]. Rows: chosen of item 0, 1, then rejected of item 0, 1,
    right-padded with 1 to T = 5. A target is the next token when that token is in the reply."""
    items = [
        {"chosen_input_ids": torch.tensor([10, 11, 12, 20, 21]), "rejected_input_ids": torch.tensor([10, 11, 12, 30]),
         "prompt_length": 3, "index": 7},
        {"chosen_input_ids": torch.tensor([40, 50]), "rejected_input_ids": torch.tensor([40, 60, 61, 62, 63]),
         "prompt_length": 1, "index": 2},
    ]
    b = collate_preference(items, pad_id=1)
    X = IGNORE_INDEX
    assert b["input_ids"].tolist() == [
        [10, 11, 12, 20, 21],
        [40, 50, 1, 1, 1],
        [10, 11, 12, 30, 1],
        [40, 60, 61, 62, 63],
    ]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["targets"].tolist() == [
        [X, X, 20, 21, X],
        [50, X, X, X, X],
        [X, X, 30, X, X],
        [60, 61, 62, 63, X],
    ]
    assert b["index"].tolist() == [7, 2]
    assert "ref_logprobs" not in b
    assert b["input_ids"].dtype == b["targets"].dtype == b["attention_mask"].dtype == torch.long

    items[0] |= {"ref_chosen_logprobs": -1.5, "ref_rejected_logprobs": -2.5}
    assert "ref_logprobs" not in collate_preference(items, pad_id=1)  # only when every item has them
    items[1] |= {"ref_chosen_logprobs": -3.0, "ref_rejected_logprobs": -4.0}
    ref = collate_preference(items, pad_id=1)["ref_logprobs"]
    assert ref.dtype == torch.float32 and ref.tolist() == [-1.5, -3.0, -2.5, -4.0]


def test_dataset_items_collate_targets_on_reply_tokens(tok):
    """Through the dataset: the non-ignored targets of each row are exactly the reply ids
    (chosen/rejected, <|im_end|> included), at positions prompt_length - 1 onward."""
    recs = [
        {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
        {"prompt": "Hi", "chosen": "Hello, how can I help?", "rejected": "Go away."},
    ]
    ds = PreferenceDataset(recs, tok, max_length=128)
    b = collate_preference([ds[0], ds[1]], ds.pad_id)
    replies = [ex.chosen_ids for ex in ds.examples] + [ex.rejected_ids for ex in ds.examples]
    prompts = [len(ex.prompt_ids) for ex in ds.examples] * 2
    for row, (reply, p) in enumerate(zip(replies, prompts)):
        kept = b["targets"][row] != IGNORE_INDEX
        assert b["targets"][row][kept].tolist() == reply
        assert kept.nonzero().flatten().tolist() == list(range(p - 1, p - 1 + len(reply)))


def test_reference_logprobs_roundtrip_and_checks(tok):
    recs = [{"prompt": f"Q{i}", "chosen": "Yes.", "rejected": "No."} for i in range(3)]
    ds = PreferenceDataset(recs, tok, max_length=64)
    with pytest.raises(UserError, match="expected 3 values"):
        ds.set_reference_logprobs([-1.0, -2.0], [-1.0, -2.0, -3.0])
    with pytest.raises(UserError, match="not finite"):
        ds.set_reference_logprobs([-1.0, float("nan"), -2.0], [-1.0, -2.0, -3.0])
    ds.set_reference_logprobs(torch.tensor([-1.0, -2.0, -3.0]), [-4.0, -5.0, -6.0])
    assert (ds[1]["ref_chosen_logprobs"], ds[1]["ref_rejected_logprobs"]) == (-2.0, -5.0)
    assert collate_preference([ds[2], ds[0]], ds.pad_id)["ref_logprobs"].tolist() == [-3.0, -1.0, -6.0, -4.0]


# ----------------------------------------------------------------------------- split


def test_split_is_deterministic_and_disjoint(tok):
    pairs = [_pair(2, 1, 1, where=f"r{i}") for i in range(20)]
    train, val = split_preference(pairs, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15  # round(20 * 0.25)
    assert sorted(p.where for p in train + val) == sorted(p.where for p in pairs)
    assert [p.where for p in train] == [p.where for p in pairs if p in train]  # order kept
    again = split_preference(pairs, 0.25, seed=3)
    assert (again[0], again[1]) == (train, val)
    assert split_preference(pairs, 0.25, seed=4)[1] != val
    assert len(split_preference(pairs, 0.5, seed=0, max_val=2)[1]) == 2
    assert len(split_preference(pairs, 0.01, seed=0)[1]) == 1  # at least one
    assert split_preference(pairs, 0.0)[1] == []
    with pytest.raises(UserError, match="val_fraction"):
        split_preference(pairs, 1.0)
    with pytest.raises(UserError, match="at least one for training"):
        split_preference(pairs[:1], 0.5)


def test_split_datasets_keep_pairs_and_reference_logprobs(tok):
    """Splitting an unpaired dataset built from pairs keeps both halves of a pair on one side;
    splitting a PreferenceDataset gives datasets whose reference log-probs follow the pairs."""
    recs = [{"prompt": f"Q{i}", "chosen": "Yes.", "rejected": "No."} for i in range(6)]
    kto = UnpairedPreferenceDataset(recs, tok, max_length=64)
    train, val = split_preference(kto, 0.5, seed=1)
    assert isinstance(val, UnpairedPreferenceDataset) and len(train) == len(val) == 6
    for part in (train, val):
        wheres = [ex.where for ex in part.examples]
        assert all(wheres.count(w) == 2 for w in wheres)
    assert not {ex.where for ex in train.examples} & {ex.where for ex in val.examples}

    ds = PreferenceDataset(recs, tok, max_length=64)
    ds.set_reference_logprobs([-float(i) for i in range(6)], [-10.0 - i for i in range(6)])
    train, val = split_preference(ds, 0.5, seed=1)
    for part in (train, val):
        for j, ex in enumerate(part.examples):
            i = int(ex.where.split()[1])  # "record i"
            assert (part[j]["ref_chosen_logprobs"], part[j]["ref_rejected_logprobs"]) == (-float(i), -10.0 - i)
