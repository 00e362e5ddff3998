"""Tests for minigpt.data: loaders, token-file cache, packing, train/val split, sampler.

Expected values are built by hand in each test (the documents we wrote, token streams we laid
out), and expected token ids come from the backend `tokenizers.Tokenizer.encode`, not from the
code under test.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minigpt.train.sampler import BlockSampler
from minigpt.data import (
    FORMAT_VERSION,
    DocumentAlignedDataset,
    PackedDataset,
    TokenFile,
    build_token_file,
    iter_documents,
    split_train_val,
)
from minigpt.data import pretrain as pretrain_mod
from minigpt.errors import UserError

EOT = "<|endoftext|>"

SENTENCES = [
    "The cat sat on the mat.",
    "A dog ran in the park and barked.",
    "Lily found a shiny red ball under the tree.",
    "Numbers like 42 and 1999 appear too!",
    "Tom and Mia liked to play outside in the sun.",
]


def _make_tokenizer(
    vocab_size: int = 300, corpus: list[str] = SENTENCES
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = _make_tokenizer()
    assert tok.eos_token_id == 0
    return tok


def _expected_stream(tok: PreTrainedTokenizerFast, docs: list[str]) -> list[int]:
    # Independent of build_token_file: the raw Rust tokenizer, one document at a time.
    out: list[int] = []
    for d in docs:
        out += tok.backend_tokenizer.encode(d, add_special_tokens=False).ids
        out.append(0)
    return out


def _write_jsonl(path: Path, rows: list, gz: bool = False) -> None:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------
# loaders


def test_txt_without_separator_is_one_document_unchanged(tmp_path: Path) -> None:
    text = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n"
    p = tmp_path / "shakespeare.txt"
    p.write_text(text, encoding="utf-8")
    assert list(iter_documents(p)) == [text]


def test_txt_with_separators_splits_and_skips_empty(tmp_path: Path) -> None:
    p = tmp_path / "stories.txt"
    p.write_text(
        f"Once upon a time.\nThe end.\n{EOT}\nSecond story.\n  {EOT}  \n\n{EOT}\n"
        "Third, no trailing sep",
        encoding="utf-8",
    )
    assert list(iter_documents(p)) == [
        "Once upon a time.\nThe end.",
        "Second story.",
        "Third, no trailing sep",
    ]


def test_txt_crlf_line_endings_normalized(tmp_path: Path) -> None:
    p = tmp_path / "win.txt"
    p.write_bytes(f"a\r\nb\r\n{EOT}\r\nc\r\n".encode())
    assert list(iter_documents(p)) == ["a\nb", "c"]


def test_jsonl_and_jsonl_gz(tmp_path: Path) -> None:
    rows = [{"text": "alpha", "id": 1}, "", {"text": ""}, {"text": "beta\ngamma"}, "   "]
    _write_jsonl(tmp_path / "a.jsonl", rows)
    _write_jsonl(tmp_path / "b.jsonl.gz", rows, gz=True)
    assert list(iter_documents(tmp_path / "a.jsonl")) == ["alpha", "beta\ngamma"]
    assert list(iter_documents(tmp_path / "b.jsonl.gz")) == ["alpha", "beta\ngamma"]


def test_txt_gz(tmp_path: Path) -> None:
    p = tmp_path / "s.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(f"one\n{EOT}\ntwo\n")
    assert list(iter_documents(p)) == ["one", "two"]


def test_jsonl_custom_text_field(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "q.jsonl", [{"question": "why?", "answer": "because"}])
    assert list(iter_documents(tmp_path / "q.jsonl", text_field="question")) == ["why?"]


def test_parquet_reads_column_and_skips_nulls(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    table = pa.table({"id": [1, 2, 3, 4], "content": ["x y", None, "", "z"]})
    pq.write_table(table, p, row_group_size=2)  # two row groups: reading must span both
    assert list(iter_documents(p, text_field="content")) == ["x y", "z"]
    with pytest.raises(UserError) as exc:
        list(iter_documents(p))  # default field "text" is absent
    msg = str(exc.value)
    assert "d.parquet" in msg and "id" in msg and "content" in msg


def test_directory_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.txt").write_text("from b", encoding="utf-8")
    _write_jsonl(tmp_path / "sub" / "a.jsonl", [{"text": "from sub/a"}])
    (tmp_path / "a.txt").write_text("from a", encoding="utf-8")
    (tmp_path / "README.md").write_text("not corpus", encoding="utf-8")
    (tmp_path / ".hidden" / "c.txt").write_text("tooling state", encoding="utf-8")
    # Sorted by full path: a.txt < b.txt < sub/a.jsonl
    assert list(iter_documents(tmp_path)) == ["from a", "from b", "from sub/a"]


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    # line 1 ok, line 2 blank (still counted), line 3 broken, line 4 would be ok
    p.write_text('{"text": "ok"}\n\n{"text": "oops"\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON"):
        list(iter_documents(p))


def test_missing_or_non_string_field(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    _write_jsonl(p, [{"text": "ok"}, {"content": "x", "meta": 1}])
    with pytest.raises(UserError) as exc:
        list(iter_documents(p))
    msg = str(exc.value)
    assert "m.jsonl:2:" in msg and "missing text field 'text'" in msg
    assert "content" in msg and "meta" in msg and "--text-field" in msg

    q = tmp_path / "n.jsonl"
    _write_jsonl(q, [{"text": 5}])
    with pytest.raises(UserError, match=r"n\.jsonl:1: .*'text'.*int"):
        list(iter_documents(q))


def test_invalid_utf8_replaced_with_one_warning(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"caf\xe9 ok\nclean line\n\xff\xfe tail\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(iter_documents(p))
    assert docs == ["caf\ufffd ok\nclean line\n\ufffd\ufffd tail\n"]
    relevant = [w for w in caught if "invalid UTF-8" in str(w.message)]
    assert len(relevant) == 1
    assert "latin1.txt" in str(relevant[0].message) and "2 line(s)" in str(relevant[0].message)


def test_nonexistent_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        list(iter_documents(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="no such file"):
        list(iter_documents("./not/here/at/all"))
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match="unsupported file type"):
        list(iter_documents(tmp_path / "data.csv"))


def test_hf_dataset_name_loaded_from_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["one", "", "two"], "n": [1, 2, 3]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert list(iter_documents("someone/tiny-corpus", split="validation")) == ["one", "two"]
    assert calls == [("someone/tiny-corpus", "validation")]
    with pytest.raises(UserError, match="no column 'body'"):
        list(iter_documents("someone/tiny-corpus", text_field="body"))


def test_hf_dataset_not_cached_is_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(name, split):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="neither a local file nor .*local Hugging Face cache"):
        list(iter_documents("nobody/nothing"))


# ------------------------------------------------------------------------------------------
# token file


def _corpus(tmp_path: Path) -> tuple[list[Path], list[str]]:
    txt = tmp_path / "stories.txt"
    txt.write_text(
        f"The cat sat on the mat.\n{EOT}\nA dog ran in the park.\n{EOT}\n", encoding="utf-8"
    )
    jl = tmp_path / "more.jsonl"
    _write_jsonl(jl, [{"text": "Lily found a ball."}, {"text": "Tom played outside 42 times!"}])
    return [txt, jl], [
        "The cat sat on the mat.",
        "A dog ran in the park.",
        "Lily found a ball.",
        "Tom played outside 42 times!",
    ]


def test_token_file_contents_and_metadata(tmp_path: Path, tokenizer) -> None:
    sources, docs = _corpus(tmp_path)
    tf = build_token_file(sources, tokenizer, tmp_path / "cache")
    expected = _expected_stream(tokenizer, docs)
    assert tf.tokens.tolist() == expected
    assert tf.dtype == np.uint16 and tf.tokens.dtype == np.uint16
    assert tf.num_tokens == len(expected) == tf.path.stat().st_size // 2
    assert tf.num_documents == 4
    meta = json.loads(tf.meta_path.read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["eos_token_id"] == 0
    assert meta["num_tokens"] == len(expected) and meta["dtype"] == "uint16"
    # Round trip through the on-disk form and nothing but the entry itself in the cache dir.
    assert TokenFile.open(tf.meta_path).tokens.tolist() == expected
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".bin", ".json"]


def test_max_docs_and_single_thread_match(tmp_path: Path, tokenizer) -> None:
    sources, docs = _corpus(tmp_path)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    tf = build_token_file(sources, tokenizer, tmp_path / "cache", num_proc=1, max_docs=3)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
    assert tf.tokens.tolist() == _expected_stream(tokenizer, docs[:3])
    assert tf.num_documents == 3


def test_dtype_boundary() -> None:
    assert pretrain_mod._dtype_for_vocab(65535) == np.uint16
    assert pretrain_mod._dtype_for_vocab(65536) == np.uint32


def test_cache_reuse_and_invalidation(tmp_path: Path, tokenizer, monkeypatch) -> None:
    sources, docs = _corpus(tmp_path)
    calls = []
    original = PreTrainedTokenizerFast.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", counting)
    cache = tmp_path / "cache"
    tf1 = build_token_file(sources, tokenizer, cache)
    assert len(calls) == 1
    mtime = tf1.path.stat().st_mtime_ns

    tf2 = build_token_file(sources, tokenizer, cache)
    assert len(calls) == 1  # no re-tokenization
    assert tf2.path == tf1.path and tf2.path.stat().st_mtime_ns == mtime

    # Same bytes at another path hit the same entry: the key is content, not names.
    moved = tmp_path / "moved"
    moved.mkdir()
    for s in sources:
        (moved / s.name).write_bytes(s.read_bytes())
    assert build_token_file([moved / s.name for s in sources], tokenizer, cache).path == tf1.path
    assert len(calls) == 1

    # Changed content -> new key, tokenized again, new contents.
    sources[1].write_text(json.dumps({"text": "The sun."}) + "\n", encoding="utf-8")
    tf3 = build_token_file(sources, tokenizer, cache)
    assert len(calls) == 2 and tf3.path != tf1.path
    assert tf3.tokens.tolist() == _expected_stream(tokenizer, docs[:2] + ["The sun."])

    # A different tokenizer (different merges) also misses.
    other = _make_tokenizer(vocab_size=280)
    assert build_token_file(sources, other, cache).path != tf3.path
    assert len(calls) == 3


def test_truncated_cache_is_rebuilt(tmp_path: Path, tokenizer) -> None:
    sources, docs = _corpus(tmp_path)
    tf = build_token_file(sources, tokenizer, tmp_path / "cache")
    tf.path.write_bytes(tf.path.read_bytes()[:4])  # simulate a damaged entry
    tf2 = build_token_file(sources, tokenizer, tmp_path / "cache")
    assert tf2.tokens.tolist() == _expected_stream(tokenizer, docs)


def test_empty_corpus_is_user_error(tmp_path: Path, tokenizer) -> None:
    p = tmp_path / "empty.txt"
    p.write_text(f"\n{EOT}\n   \n{EOT}\n", encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="empty corpus: .*empty.txt"):
        build_token_file([p], tokenizer, cache)
    assert list(cache.iterdir()) == []  # temp file cleaned up, nothing cached


# ------------------------------------------------------------------------------------------
# packing


def test_packed_dataset_shift() -> None:
    tokens = np.arange(100, 123, dtype=np.uint16)  # 23 tokens
    ds = PackedDataset(tokens, block_size=5)
    assert len(ds) == 4  # (23 - 1) // 5
    item = ds[2]
    assert item["input_ids"].dtype == torch.long and item["targets"].dtype == torch.long
    assert item["input_ids"].tolist() == [110, 111, 112, 113, 114]
    assert item["targets"].tolist() == [111, 112, 113, 114, 115]
    assert ds[-1]["targets"].tolist() == [116, 117, 118, 119, 120]
    with pytest.raises(IndexError):
        ds[4]


def test_packed_dataset_exact_fit_and_too_short() -> None:
    assert len(PackedDataset(np.arange(9, dtype=np.uint16), 8)) == 1
    with pytest.raises(UserError, match="corpus has 8 tokens, shorter than one block of 8\\+1"):
        PackedDataset(np.arange(8, dtype=np.uint16), 8)
    with pytest.raises(UserError, match="block_size"):
        PackedDataset(np.arange(8, dtype=np.uint16), 0)


def test_document_aligned_blocks_start_at_each_document() -> None:
    """EOS = 0. Documents [11 12 13], [21 22], [31 32 33 34 35 36 37], [41]: each block of 4 starts
    at a document start (position 0, then each EOS, which plays BOS) and runs on across the
    documents after it; a start too late to fill B + 1 tokens gives no block."""
    stream = [11, 12, 13, 0, 21, 22, 0, 31, 32, 33, 34, 35, 36, 37, 0, 41, 0]
    ds = DocumentAlignedDataset(np.asarray(stream, dtype=np.uint16), 4, eos_token_id=0)
    # starts 0, 3, 6, 14 and 16; 14 and 16 leave fewer than 5 tokens
    assert len(ds) == 3
    assert [ds[i]["input_ids"].tolist() for i in range(3)] == [[11, 12, 13, 0], [0, 21, 22, 0], [0, 31, 32, 33]]
    assert [ds[i]["targets"].tolist() for i in range(3)] == [[12, 13, 0, 21], [21, 22, 0, 31], [31, 32, 33, 34]]
    assert ds[-1]["input_ids"].dtype == torch.long
    with pytest.raises(IndexError):
        ds[3]
    # a stream that begins with an EOS counts position 0 once; consecutive EOS are two starts
    ds = DocumentAlignedDataset(np.asarray([0, 5, 0, 0, 6, 7, 8, 9], dtype=np.uint16), 3, eos_token_id=0)
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == [[0, 5, 0], [0, 0, 6], [0, 6, 7]]


def test_document_aligned_finds_starts_across_scan_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The EOS scan goes in chunks: a start on a chunk's edge is found once, and none is lost."""
    monkeypatch.setattr(pretrain_mod, "_SCAN_CHUNK", 4)
    rng = np.random.default_rng(0)
    stream = rng.integers(1, 9, size=200).astype(np.uint16)
    stream[rng.choice(200, size=30, replace=False)] = 0
    ds = DocumentAlignedDataset(stream, 6, eos_token_id=0)
    expected = sorted({0} | {int(p) for p in np.flatnonzero(stream == 0) if p + 7 <= 200})
    assert ds.starts.tolist() == expected


def test_packed_dataset_chooses_by_packing() -> None:
    tokens = np.asarray([1, 2, 0, 3, 4, 5, 0, 6, 7, 8], dtype=np.uint16)
    assert type(pretrain_mod.packed_dataset(tokens, 3)) is PackedDataset
    assert len(pretrain_mod.packed_dataset(tokens, 3, "documents", eos_token_id=0)) == 3
    with pytest.raises(UserError, match="EOS"):
        pretrain_mod.packed_dataset(tokens, 3, "documents")
    with pytest.raises(UserError, match="stream or documents"):
        pretrain_mod.packed_dataset(tokens, 3, "bos")


def _hand_token_file(tmp_path: Path, stream: list[int], eos: int = 0) -> TokenFile:
    bin_path = tmp_path / "hand.bin"
    np.asarray(stream, dtype=np.uint16).tofile(bin_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        "num_tokens": len(stream),
        "num_documents": stream.count(eos),
        "eos_token_id": eos,
    }
    (tmp_path / "hand.json").write_text(json.dumps(meta))
    return TokenFile.open(bin_path)


def _stream_with_eos_at(n: int, eos_positions: list[int]) -> list[int]:
    s = [7 + (i % 5) for i in range(n)]  # never 0
    for p in eos_positions:
        s[p] = 0
    return s


def test_split_cuts_at_nearest_document_boundary(tmp_path: Path) -> None:
    # N=200, 10 % -> exact cut at 180; boundaries (cut after EOS) at 50, 100, 150, 170, 200.
    # Window = last 2*20 tokens -> cuts in [160, 191]; only 170 qualifies.
    stream = _stream_with_eos_at(200, [49, 99, 149, 169, 199])
    tf = _hand_token_file(tmp_path, stream)
    train, val = split_train_val(tf, 0.1, 8)
    assert len(train) == 170 and len(val) == 30
    assert train[-1] == 0  # train ends with a whole document
    assert train.tolist() + val.tolist() == stream  # disjoint, nothing lost
    # A dataset over the memmap pickles by reference and still reads the right tokens.
    ds = PackedDataset(val, 8)
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    assert pickle.loads(blob)[1]["input_ids"].tolist() == stream[178:186]


def test_split_picks_boundary_nearest_the_fraction(tmp_path: Path) -> None:
    # Cuts 165 and 178 both lie in the window [160, 191]; 178 is nearer the exact 180.
    stream = _stream_with_eos_at(200, [49, 164, 177, 199])
    train, val = split_train_val(_hand_token_file(tmp_path, stream), 0.1, 8)
    assert (len(train), len(val)) == (178, 22)


def test_split_without_boundary_cuts_exactly(tmp_path: Path) -> None:
    stream = _stream_with_eos_at(200, [49, 199])  # no EOS in the last 40 except the final one
    tf = _hand_token_file(tmp_path, stream)
    train, val = split_train_val(tf, 0.1, block_size=8)
    assert (len(train), len(val)) == (180, 20)


def test_split_gives_val_at_least_one_block(tmp_path: Path) -> None:
    stream = _stream_with_eos_at(200, [199])
    tf = _hand_token_file(tmp_path, stream)
    train, val = split_train_val(tf, 0.01, block_size=16)  # 1 % = 2 tokens < 17
    assert len(val) == 17 and len(train) == 183
    train0, val0 = split_train_val(tf, 0.0, block_size=16)
    assert len(train0) == 200 and len(val0) == 0


def test_split_too_small_is_user_error(tmp_path: Path) -> None:
    tf = _hand_token_file(tmp_path, _stream_with_eos_at(17, [16]))
    with pytest.raises(UserError, match="17 tokens"):
        split_train_val(tf, 0.1, block_size=8)  # needs 2 * 9 = 18
    with pytest.raises(UserError, match="val_fraction"):
        split_train_val(tf, 1.0, block_size=2)


# ------------------------------------------------------------------------------------------
# sampler


def _take(sampler: BlockSampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_resume_equals_uninterrupted() -> None:
    full = _take(BlockSampler(7, seed=3), 20)  # crosses two epoch boundaries (7, 14)

    first = BlockSampler(7, seed=3)
    head = _take(first, 10)
    state = first.state_dict()
    assert set(state) == {"epoch", "position", "seed"}
    assert state == {"epoch": 1, "position": 3, "seed": 3}

    resumed = BlockSampler(7, seed=999)  # seed comes from the state
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    assert head + _take(resumed, 10) == full


def test_sampler_epochs_are_distinct_permutations() -> None:
    out = _take(BlockSampler(50, seed=0), 100)
    e0, e1 = out[:50], out[50:]
    assert sorted(e0) == list(range(50)) and sorted(e1) == list(range(50))
    assert e0 != e1
    assert _take(BlockSampler(50, seed=0), 50) == e0  # deterministic
    assert _take(BlockSampler(50, seed=1), 50) != e0


def test_sampler_ranks_partition_epoch() -> None:
    r0 = _take(BlockSampler(10, seed=5, rank=0, world_size=2), 5)
    r1 = _take(BlockSampler(10, seed=5, rank=1, world_size=2), 5)
    assert sorted(r0 + r1) == list(range(10))
    # Uneven: 11 blocks over 2 ranks -> 5 each, disjoint, one block dropped that epoch.
    a = BlockSampler(11, seed=5, rank=0, world_size=2)
    b = BlockSampler(11, seed=5, rank=1, world_size=2)
    assert a.epoch_length == b.epoch_length == 5
    ea, eb = _take(a, 5), _take(b, 5)
    assert not set(ea) & set(eb) and len(set(ea + eb)) == 10
    with pytest.raises(UserError):
        BlockSampler(1, rank=0, world_size=2)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Windows editors open UTF-8 files with a BOM; it is not part of the first record."""
    from minigpt.data.loaders import iter_documents, iter_records

    bom = "\ufeff".encode()
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "first"}\r\n{"text": "second"}\r\n')
    (tmp_path / "b.json").write_bytes(bom + b'[{"prompt": "p", "answer": "1"}]')
    (tmp_path / "c.txt").write_bytes(bom + "héllo".encode())
    assert list(iter_documents(str(tmp_path / "a.jsonl"))) == ["first", "second"]
    assert [r for _, r in iter_records(tmp_path / "a.jsonl")] == [{"text": "first"}, {"text": "second"}]
    assert [r for _, r in iter_records(tmp_path / "b.json")] == [{"prompt": "p", "answer": "1"}]
    assert list(iter_documents(str(tmp_path / "c.txt"))) == ["héllo"]
