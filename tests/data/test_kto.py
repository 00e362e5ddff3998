"""Tests for KTO's unpaired preference data (`minigpt.data.kto`): both record kinds, fixed KL
partners, the collator's KL rows and truncation counts.

Expected values are derived by hand in each test: ids from an independent
``tokenizer.apply_chat_template`` rendering (ChatML writes ``<|im_start|>role\\ncontent<|im_end|>\\n``
per message and ``<|im_start|>assistant\\n`` as the generation prompt), truncation and batch
layouts from small hand-built id lists.
"""

from __future__ import annotations

import pytest
import torch

from minigpt.data.preference import IGNORE_INDEX
from minigpt.data.kto import UnpairedExample, UnpairedPreferenceDataset, collate_unpaired, normalize_unpaired
from minigpt.errors import UserError
from minigpt.tokenizer.chat import SkipRecord

from chat_records import render, tiny_chat_tokenizer, write_jsonl


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer()


# ----------------------------------------------------------------------------- KTO


def test_normalize_unpaired_and_errors():
    rec = {"prompt": "Q", "completion": "A.", "label": True}
    assert normalize_unpaired(rec, "u") == ([{"role": "user", "content": "Q"}], "A.", True)
    msgs = {
        "prompt": [{"role": "user", "content": "Q"}],
        "completion": [{"role": "assistant", "content": "A."}],
        "label": False,
    }
    assert normalize_unpaired(msgs, "u") == ([{"role": "user", "content": "Q"}], "A.", False)
    for bad, kind in (({"prompt": "Q", "completion": "A"}, "missing_field"),
                      ({"prompt": "Q", "completion": " ", "label": False}, "empty_response")):
        with pytest.raises(SkipRecord) as info:
            normalize_unpaired(bad, "u")
        assert info.value.kind == kind
    for label in (1, "true"):
        with pytest.raises(UserError, match=r"u: field 'label' must be true or false"):
            normalize_unpaired({"prompt": "Q", "completion": "A", "label": label}, "u")


def test_unpaired_dataset_takes_both_record_kinds(tok, tmp_path):
    """Line 1 unpaired (undesirable), line 2 an HH pair (-> desirable chosen, undesirable
    rejected), line 3 missing its label (skipped), line 4 unpaired desirable."""
    recs = [
        {"prompt": "Hi", "completion": "Go away.", "label": False},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: What?"},
        {"prompt": "Hi", "completion": "Hey."},
        {"prompt": "Thanks", "completion": "Goodbye!", "label": True},
    ]
    path = write_jsonl(tmp_path / "kto.jsonl", recs)
    ds = UnpairedPreferenceDataset(path, tok, max_length=64)
    assert [(ex.where, ex.label) for ex in ds.examples] == [
        (f"{path}:1", False), (f"{path}:2", True), (f"{path}:2", False), (f"{path}:4", True),
    ]
    s = ds.stats
    counts = ("records", "examples", "desirable", "undesirable", "pairs_split", "skipped_missing_field")
    assert [s[k] for k in counts] == [4, 4, 2, 2, 1, 1]
    hi = render(tok, [{"role": "user", "content": "Hi"}], generation_prompt=True)
    assert [ex.prompt_ids for ex in ds.examples[:3]] == [hi, hi, hi]
    assert [tok.decode(ex.completion_ids) for ex in ds.examples] == [
        "Go away.<|im_end|>", "Hello!<|im_end|>", "What?<|im_end|>", "Goodbye!<|im_end|>",
    ]
    item = ds[1]
    assert item["input_ids"].tolist() == hi + ds.examples[1].completion_ids
    assert (item["prompt_length"], item["label"], item["index"]) == (len(hi), True, 1)
    assert "4 records -> 4 examples (2 desirable, 2 undesirable" in ds.summary()


def test_unpaired_dataset_kl_partners_are_fixed_and_from_another_record(tok):
    """KTO's mismatched (prompt, completion) pairs come from the dataset, not the batch: each
    item's `kl_completion_ids` is another record's completion (never the other half of its own
    pair when there are more than two examples), and a KL row is the same whichever batch the
    item lands in, so precomputed reference values for it stay valid after shuffling."""
    recs = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    ds = UnpairedPreferenceDataset(recs, tok, max_length=64)
    assert len(ds) == 8
    partners = [ds.kl_partner(i) for i in range(len(ds))]
    assert sorted(partners) == list(range(8))  # a cycle: every completion is used once
    for i, j in enumerate(partners):
        assert ds.examples[j].where != ds.examples[i].where
        assert ds[i]["kl_completion_ids"].tolist() == ds.examples[j].completion_ids

    def kl_rows(indices):
        b = collate_unpaired([ds[i] for i in indices], pad_id=tok.pad_token_id)
        return {i: [t for t, m in zip(row, mask) if m] for i, row, mask in zip(indices, b["kl_input_ids"].tolist(), b["kl_attention_mask"].tolist())}

    assert kl_rows([0, 1, 2, 3]) | kl_rows([4, 5, 6, 7]) == kl_rows([7, 2, 5, 0]) | kl_rows([3, 6, 1, 4])
    part = ds.subset([0, 2, 4])
    assert all(part.examples[part.kl_partner(i)].where != part.examples[i].where for i in range(3))


def test_collate_unpaired_kl_rotation():
    """Items (prompt | completion): [10, 11 | 12], [20 | 21, 22, 23], [30, 31, 32 | 33].
    T = 4. KL row i = prompt i + completion of item (i + 1) % 3, cut to T:
    [10, 11, 21, 22] (23 cut), [20, 33], [30, 31, 32, 12]."""
    items = [
        {"input_ids": torch.tensor([10, 11, 12]), "prompt_length": 2, "label": True, "index": 0, "ref_logprobs": -1.0},
        {"input_ids": torch.tensor([20, 21, 22, 23]), "prompt_length": 1, "label": False, "index": 1, "ref_logprobs": -2.0},
        {"input_ids": torch.tensor([30, 31, 32, 33]), "prompt_length": 3, "label": True, "index": 2, "ref_logprobs": -3.0},
    ]
    b = collate_unpaired(items, pad_id=1)
    X = IGNORE_INDEX
    assert b["input_ids"].tolist() == [[10, 11, 12, 1], [20, 21, 22, 23], [30, 31, 32, 33]]
    assert b["targets"].tolist() == [[X, 12, X, X], [21, 22, 23, X], [X, X, 33, X]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert b["label"].tolist() == [True, False, True] and b["label"].dtype == torch.bool
    assert b["kl_input_ids"].tolist() == [[10, 11, 21, 22], [20, 33, 1, 1], [30, 31, 32, 12]]
    assert b["kl_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert b["kl_targets"].tolist() == [[X, 21, 22, X], [33, X, X, X], [X, X, 12, X]]
    assert b["ref_logprobs"].tolist() == [-1.0, -2.0, -3.0] and "ref_kl_logprobs" not in b

    one = collate_unpaired(items[:1], pad_id=1)  # B == 1: paired with itself
    assert one["kl_input_ids"].tolist() == one["input_ids"].tolist() == [[10, 11, 12]]
    assert one["kl_targets"].tolist() == [[X, 12, X]]


def test_unpaired_truncation_counts(tok):
    """prompt 10, completion 9, max_length 12, floor 5: prompt to max(5, 12 - 9) = 5, completion
    to 7; the second fits."""
    exs = [
        UnpairedExample(list(range(10)), list(range(50, 59)), True, "a"),
        UnpairedExample([1, 2], [3], False, "b"),
    ]
    ds = UnpairedPreferenceDataset(exs, tok, max_length=12, max_prompt_length=5)
    assert ds.examples[0].prompt_ids == [5, 6, 7, 8, 9]
    assert ds.examples[0].completion_ids == list(range(50, 57))
    assert (ds.stats["prompt_truncated"], ds.stats["response_truncated"]) == (1, 1)
    ds.set_reference_logprobs([-1.0, -2.0], [-3.0, -4.0])
    assert (ds[1]["ref_logprobs"], ds[1]["ref_kl_logprobs"]) == (-2.0, -4.0)
