"""Tests for SFT data: record files, SFTDataset, the split, padded and packed batches."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from minigpt.data.loaders import iter_records
from minigpt.data.sft import (
    IGNORE_INDEX,
    PackedSFTDataset,
    PaddedSFTDataset,
    SFTDataset,
    collate_packed,
    collate_padded,
    split_examples,
)
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.tokenizer import train_tokenizer
from minigpt.tokenizer.chat import normalize_messages, render_conversation

_TEXTS = [
    "The user asks a question and the assistant answers it politely.",
    "你好，我是一个小模型。今天天气很好。",
    "Numbers 12 and 345 and a list: one, two, three.",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"{t} {i}" for i in range(20) for t in _TEXTS], vocab_size=350)


def _conv(user: str, reply: str) -> dict:
    return {"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def _write_jsonl(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ----------------------------------------------------------------------------- iter_records


def test_iter_records_jsonl_json_parquet(tmp_path: Path):
    rows = [{"a": 1}, {"a": 2}, {"a": 3}]
    # Line 2 is blank and skipped; numbering stays that of the file (1-based).
    jl = _write_jsonl(tmp_path / "d.jsonl", [json.dumps(rows[0]), "  ", json.dumps(rows[1])])
    assert list(iter_records(jl)) == [(f"{jl}:1", rows[0]), (f"{jl}:3", rows[1])]
    gz = _write_jsonl(tmp_path / "d.jsonl.gz", [json.dumps(r) for r in rows], gz=True)
    assert [w for w, _ in iter_records(gz)] == [f"{gz}:{i}" for i in (1, 2, 3)]
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    assert list(iter_records(js)) == [(f"{js}[{i}]", r) for i, r in enumerate(rows)]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_rows = [{"conversations": [{"role": "user", "content": "hi"}]}, {"conversations": []}]
    pq.write_table(pa.Table.from_pylist(pq_rows), tmp_path / "d.parquet")
    assert list(iter_records(tmp_path / "d.parquet")) == [
        (f"{tmp_path / 'd.parquet'}[{i}]", r) for i, r in enumerate(pq_rows)
    ]
    # A directory: every record file, sorted by path.
    assert [w for w, _ in iter_records(tmp_path)][:2] == [f"{js}[0]", f"{js}[1]"]


def test_iter_records_errors_name_file_and_line(tmp_path: Path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [json.dumps({"a": 1}), "{oops"])
    with pytest.raises(UserError, match=rf"^{bad}:2: invalid JSON"):
        list(iter_records(bad))
    arr = _write_jsonl(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(UserError, match=rf"^{arr}:1: line holds a JSON list, not an object"):
        list(iter_records(arr))
    obj = tmp_path / "obj.json"
    obj.write_text('{"a": 1}')
    with pytest.raises(UserError, match="expected a JSON array of records"):
        list(iter_records(obj))
    with pytest.raises(UserError, match="no such file"):
        list(iter_records(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="unsupported file type"):
        list(iter_records(_write_jsonl(tmp_path / "x.txt", ["hi"])))


# ----------------------------------------------------------------------------- SFTDataset


def test_sft_dataset_counts_skips_and_truncation(tmp_path: Path, tok):
    """Six records: two good (one short, one long), one without an assistant turn, one with an
    empty reply, one whose reply starts beyond max_length (dropped), one cut inside its reply
    (kept, truncated). The expected counts are read off this list."""
    max_length = 40
    long_prompt = "word " * 40  # alone far longer than 40 tokens: nothing supervised survives
    records = [
        _conv("Hi", "Hello!"),
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"instruction": "Say hi", "input": "", "output": ""},
        _conv(long_prompt, "ok"),
        _conv("Count", "one two three " * 20),
        {"instruction": "Name a color", "output": "Red."},
    ]
    path = _write_jsonl(tmp_path / "sft.jsonl", [json.dumps(r) for r in records])
    ds = SFTDataset(path, tok, max_length=max_length)
    # Preconditions of the expected counts: records 1 and 6 fit, record 5's reply crosses the cut.
    lengths = [len(render_conversation(tok, normalize_messages(records[i]))[0]) for i in (0, 4, 5)]
    assert lengths[0] <= max_length and lengths[2] <= max_length and lengths[1] > max_length
    stats = {k: ds.stats[k] for k in ("records", "used", "skipped_no_assistant", "skipped_empty_reply", "truncated", "dropped_after_truncation")}
    assert stats == {
        "records": 6,
        "used": 3,
        "skipped_no_assistant": 1,
        "skipped_empty_reply": 1,
        "truncated": 1,
        "dropped_after_truncation": 1,
    }
    assert ds.where == [f"{path}:1", f"{path}:5", f"{path}:6"]
    assert len(ds) == 3
    # The used examples are the renderer's output, cut to max_length.
    for ex, rec in zip(ds.examples, [records[0], records[4], records[5]]):
        assert ex == render_conversation(tok, normalize_messages(rec), max_length=max_length)
    assert ds.stats["tokens"] == sum(len(ids) for ids, _ in ds.examples)
    assert ds.stats["supervised_tokens"] == sum(sum(m) for _, m in ds.examples)
    assert "6 records -> 3 conversations used" in ds.summary()


def test_sft_dataset_item_is_shifted_and_padded(tok):
    """x = ids[:-1], y = ids[1:], loss_mask = mask[1:] after right-padding to max_length with the
    pad id (1); loss_mask is 0 on padding and y[t] == x[t+1]."""
    max_length = 40
    ds = SFTDataset([_conv("Hi", "Hello there."), _conv("你好", "你好！")], tok, max_length=max_length)
    for i, (ids, mask) in enumerate(ds.examples):
        x, y, loss_mask = ds[i]
        assert x.shape == y.shape == loss_mask.shape == (max_length - 1,)
        assert x.dtype == y.dtype == loss_mask.dtype == torch.long
        n = len(ids)
        padded = ids + [1] * (max_length - n)
        assert x.tolist() == padded[:-1] and y.tolist() == padded[1:]
        assert torch.equal(y[:-1], x[1:])
        assert loss_mask.tolist() == (mask + [0] * (max_length - n))[1:]
        assert loss_mask[n - 1 :].sum() == 0  # y[n-1:] is padding
        # The supervised targets are exactly the reply and its <|im_end|>.
        assert y[loss_mask.bool()].tolist() == [t for t, k in zip(ids, mask) if k]


def test_sft_dataset_errors(tmp_path: Path, tok):
    with pytest.raises(UserError, match=r"record 1: message 2 has unknown role 'bot'"):
        SFTDataset([_conv("a", "b"), {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}], tok)
    path = _write_jsonl(tmp_path / "e.jsonl", [json.dumps(_conv("a", "b")), json.dumps(_conv("", "b"))])
    with pytest.raises(UserError, match=rf"^{path}:2: message 1 \(user\) content is empty$"):
        SFTDataset(path, tok)
    with pytest.raises(UserError, match="no usable conversation"):
        SFTDataset([{"messages": [{"role": "user", "content": "a"}]}], tok)
    with pytest.raises(UserError, match="no records"):
        SFTDataset([], tok)
    with pytest.raises(UserError, match="max_length"):
        SFTDataset([_conv("a", "b")], tok, max_length=1)
    with pytest.raises(UserError, match="unknown format"):
        SFTDataset([_conv("a", "b")], tok, format="xml")


# ----------------------------------------------------------------------------- split


def test_split_examples_deterministic_and_disjoint():
    examples = [([i, i + 1], [0, 1]) for i in range(50)]
    train, val = split_examples(examples, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert split_examples(examples, 0.1, seed=3) == (train, val)
    assert sorted(train + val) == sorted(examples)
    assert split_examples(examples, 0.1, seed=4)[1] != val  # another seed, another draw
    assert len(split_examples(examples, 0.5, seed=0, max_val=2)[1]) == 2
    assert split_examples(examples, 0.0) == (examples, [])
    assert len(split_examples(examples[:3], 0.01)[1]) == 1  # at least one when asked for any
    with pytest.raises(UserError, match="val_fraction"):
        split_examples(examples, 1.0)
    with pytest.raises(UserError, match="at least one for training"):
        split_examples(examples[:1], 0.5)


# ----------------------------------------------------------------------------- padded batches


def test_collate_padded_targets_and_mask():
    """targets[t] = ids[t+1] where mask[t+1] == 1, else -100; rows right-padded to the longest."""
    a = ([10, 11, 12, 13, 14], [0, 0, 1, 1, 0])
    b = ([20, 21, 22], [0, 1, 1])
    items = PaddedSFTDataset([a, b])
    batch = collate_padded([items[0], items[1]], pad_id=1)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 1, 1]]
    assert batch["targets"].tolist() == [[-100, 12, 13, -100], [21, 22, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    with pytest.raises(UserError, match="example 0: no supervised target"):
        PaddedSFTDataset([([5, 6], [1, 0])])


# ----------------------------------------------------------------------------- packed batches


def _examples(lengths: list[int], first_id: int = 10) -> list[tuple[list[int], list[int]]]:
    """Conversations of the given lengths with distinct ids; the second half of each is
    supervised."""
    out, nxt = [], first_id
    for n in lengths:
        ids = list(range(nxt, nxt + n))
        nxt += n
        out.append((ids, [0] * (n // 2) + [1] * (n - n // 2)))
    return out


def test_packed_blocks_positions_targets_and_mask():
    block = 12
    examples = _examples([5, 8, 3, 13, 6, 4, 2])
    ds = PackedSFTDataset(examples, block, seed=0, pad_id=1)
    # Every conversation lands whole in exactly one block, inputs ids[:-1] then padding.
    by_first = {ids[0]: (ids, mask) for ids, mask in examples}
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        assert all(v.shape == (block,) for v in item.values())
        seg, pos = item["segment_ids"].tolist(), item["position_ids"].tolist()
        t = 0
        while t < block and seg[t] >= 0:
            ids, mask = by_first[item["input_ids"][t].item()]
            n = len(ids) - 1
            assert item["input_ids"][t : t + n].tolist() == ids[:-1]
            assert pos[t : t + n] == list(range(n))  # positions restart per conversation
            expected_targets = [tok if k else IGNORE_INDEX for tok, k in zip(ids[1:], mask[1:])]
            assert item["targets"][t : t + n].tolist() == expected_targets
            assert set(seg[t : t + n]) == {seg[t]}
            seen.append(ids[0])
            t += n
        assert item["input_ids"][t:].tolist() == [1] * (block - t)
        assert item["targets"][t:].tolist() == [IGNORE_INDEX] * (block - t)
    assert sorted(seen) == sorted(by_first)
    # Input lengths 4,7,2,12,5,3,1 = 34 tokens: best-fit decreasing needs ceil(34/12) = 3 blocks.
    assert ds.stats["blocks"] == 3 and ds.stats["tokens"] == 34

    batch = collate_packed([ds[i] for i in range(len(ds))])
    mask = batch["attention_mask"]
    assert mask.shape == (3, 1, block, block) and mask.dtype == torch.bool
    seg = batch["segment_ids"]
    for b in range(3):
        for q in range(block):
            for k in range(block):
                if seg[b, q] < 0:  # padding attends only to itself
                    want = q == k
                else:
                    want = k <= q and bool(seg[b, k] == seg[b, q])
                assert bool(mask[b, 0, q, k]) == want


def test_packed_truncates_overlong_and_rejects_bad_block():
    # 20 tokens into blocks of 8 inputs: cut to 9 tokens; the first of these has no supervised
    # target after the cut (mask starts at index 10), so it is dropped.
    examples = [([*range(10, 30)], [0] * 10 + [1] * 10), ([*range(40, 60)], [0, 0] + [1] * 18)]
    ds = PackedSFTDataset(examples, 8)
    assert ds.stats["dropped"] == 1 and ds.stats["truncated"] == 1 and ds.stats["conversations"] == 1
    assert ds[0]["input_ids"].tolist() == list(range(40, 48))
    with pytest.raises(UserError, match="block_size"):
        PackedSFTDataset(examples, 0)


def test_packed_forward_equals_each_conversation_alone(tok):
    """With the block-diagonal mask and restarting positions, each conversation's logits in a
    packed block equal those of a forward pass over that conversation alone (fp32, 1e-5): no
    attention crosses conversations."""
    torch.manual_seed(0)
    config = MiniGPTConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    model = MiniGPTForCausalLM(config).eval()
    examples = [
        render_conversation(tok, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
        for u, a in [("Hi", "Hello there."), ("你好", "天气很好"), ("Numbers", "12 and 345"), ("a", "b")]
    ]
    block = max(len(ids) for ids, _ in examples) * 2
    ds = PackedSFTDataset(examples, block)
    batch = collate_packed([ds[i] for i in range(len(ds))])
    assert len(ds) < len(examples)  # some block really holds several conversations
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        checked = 0
        for b in range(len(ds)):
            seg = batch["segment_ids"][b]
            for s in range(int(seg.max()) + 1):
                where = (seg == s).nonzero().flatten()
                alone = model(input_ids=batch["input_ids"][b, where][None]).logits[0]
                torch.testing.assert_close(packed[b, where], alone, rtol=1e-5, atol=1e-5)
                checked += 1
    assert checked == len(examples)
