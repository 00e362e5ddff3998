"""Pretraining data: tokenize a corpus once into a cached token file, pack it into blocks.

Pipeline::

    sources --iter_documents--> str docs --tokenizer--> ids + EOS --> <cache>/<sha256>.bin (+ .json)
    TokenFile --split_train_val--> (train, val) 1-D memmaps --PackedDataset--> {input_ids, targets}
    (the seeded, resumable, DDP-sharded block indices: minigpt.train.sampler.BlockSampler)

The token file is a flat array of token ids (``uint16`` when the vocabulary fits, else
``uint32``): every document's ids followed by the tokenizer's EOS id, so EOS is both the
document separator the model learns and the boundary :func:`split_train_val` cuts at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from minigpt.data.loaders import iter_documents, resolve_source
from minigpt.errors import UserError

__all__ = [
    "FORMAT_VERSION",
    "TokenFile",
    "build_token_file",
    "PackedDataset",
    "DocumentAlignedDataset",
    "PACKINGS",
    "packed_dataset",
    "split_train_val",
]

log = logging.getLogger(__name__)

#: Bumped whenever the on-disk layout or the tokenization rules change, so old caches miss.
FORMAT_VERSION = 1

# Documents per tokenizer call: large enough for the Rust tokenizer to spread a batch over all
# cores, small enough that one batch of text and ids stays a few MB.
_BATCH_DOCS = 1000
_HASH_CHUNK = 1 << 20  # bytes read per step when fingerprinting a source file
_SCAN_CHUNK = 1 << 20  # tokens examined per step when looking for a document boundary


def _dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenFile:
    """A tokenized corpus on disk: a flat 1-D token array plus a metadata JSON beside it.

    Attributes:
        path: the ``.bin`` file, raw little-endian ids with no header.
        meta_path: the ``.json`` file (``format_version``, ``dtype``, ``num_tokens``,
            ``num_documents``, ``eos_token_id``, ``vocab_size``, ``sources`` (fingerprints),
            ``tokenizer_sha256``, ``text_field``, ``max_docs``).
        meta: that JSON, parsed.
    """

    path: Path
    meta_path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> TokenFile:
        """Open an existing token file by its ``.bin`` or ``.json`` path.

        Raises:
            UserError: either file is missing, the metadata is unreadable or from another
                format version, or the ``.bin`` size disagrees with ``num_tokens``.
        """
        path = Path(path)
        bin_path, meta_path = path.with_suffix(".bin"), path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{meta_path}: token file metadata not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{meta_path}: unreadable token file metadata ({exc})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{meta_path}: token file format {meta.get('format_version')!r}, "
                f"expected {FORMAT_VERSION}; rebuild it"
            )
        if not bin_path.is_file():
            raise UserError(f"{bin_path}: token file not found")
        expected = int(meta["num_tokens"]) * np.dtype(meta["dtype"]).itemsize
        if bin_path.stat().st_size != expected:
            raise UserError(
                f"{bin_path}: size {bin_path.stat().st_size} bytes, metadata says {expected}; "
                "the file is truncated or stale, delete it to rebuild"
            )
        return cls(bin_path, meta_path, meta)

    @property
    def dtype(self) -> np.dtype:
        """Token dtype on disk: ``uint16`` or ``uint32``."""
        return np.dtype(self.meta["dtype"])

    @property
    def num_tokens(self) -> int:
        """Number of tokens, EOS separators included."""
        return int(self.meta["num_tokens"])

    @property
    def num_documents(self) -> int:
        """Number of non-empty documents tokenized (== number of EOS separators written)."""
        return int(self.meta["num_documents"])

    @property
    def eos_token_id(self) -> int:
        """The id written after every document."""
        return int(self.meta["eos_token_id"])

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def tokens(self) -> np.memmap:
        """The whole stream as a read-only memmap of shape ``[num_tokens]`` (no copy)."""
        return self.memmap(0, self.num_tokens)

    def memmap(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` as a read-only array mapped straight from the file.

        A fresh map rather than a slice, so it records its own file offset and pickles cheaply
        (see :class:`PackedDataset`). Shape ``[stop - start]``; an empty range gives an
        empty in-memory array because a zero-length map is not allowed.
        """
        if not 0 <= start <= stop <= self.num_tokens:
            raise ValueError(f"range [{start}, {stop}) outside [0, {self.num_tokens}]")
        if start == stop:
            return np.empty(0, dtype=self.dtype)
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=start * self.dtype.itemsize,
            shape=(stop - start,),
        )


# --------------------------------------------------------------------------------------------
# building


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint_sources(sources: Sequence[str | Path], split: str) -> list[dict[str, str]]:
    """One dict per source: ``{"source", "files": [{"path", "sha256"}]}`` or an HF id."""
    out = []
    for src in sources:
        resolved = resolve_source(src)
        if isinstance(resolved, str):
            # A cached dataset's content is identified by its name and split; we cannot hash it
            # cheaply without loading it.
            out.append({"source": str(src), "hf_dataset": resolved, "split": split})
        else:
            root = Path(src)
            files = []
            for f in resolved:
                # Relative names keep the key stable when a directory is moved or mounted elsewhere.
                rel = f.name if f == root else str(f.relative_to(root))
                files.append({"path": rel, "sha256": _sha256_file(f)})
            out.append({"source": str(src), "files": files})
    return out


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the backend tokenizer JSON: vocab, merges, normalizer, added tokens."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def _cache_key(
    fingerprints: list[dict],
    tokenizer_sha: str,
    eos_id: int,
    text_field: str,
    max_docs: int | None,
) -> str:
    # Source paths are left out on purpose: the same bytes under a new name reuse the cache.
    content = [
        [{k: v for k, v in fp.items() if k != "source"} for fp in fingerprints],
        tokenizer_sha,
        eos_id,
        text_field,
        max_docs,
        FORMAT_VERSION,
    ]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


@contextmanager
def _tokenizer_threads(num_proc: int | None) -> Iterator[None]:
    """With num_proc == 1, switch the Rust tokenizer's thread pool off for the build."""
    if num_proc != 1:
        yield
        return
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _iter_all_documents(
    sources: Sequence[str | Path], text_field: str, split: str, max_docs: int | None
) -> Iterator[str]:
    n = 0
    for src in sources:
        for doc in iter_documents(src, text_field=text_field, split=split):
            if max_docs is not None and n >= max_docs:
                return
            n += 1
            yield doc


def _batched(it: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_batch(tokenizer: Any, docs: list[str]) -> list[list[int]]:
    # add_special_tokens=False: only our EOS separates documents, no BOS/post-processor extras.
    # verbose=False: a whole book is one document, longer than model_max_length by design.
    enc = tokenizer(docs, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return enc["input_ids"]


def build_token_file(
    sources: Sequence[str | Path] | str | Path,
    tokenizer: Any,
    cache_dir: str | Path,
    text_field: str = "text",
    num_proc: int | None = None,
    max_docs: int | None = None,
    split: str = "train",
) -> TokenFile:
    """Tokenize a corpus once into ``cache_dir/<key>.bin`` + ``.json``, or reuse that cache.

    Every non-empty document from :func:`~minigpt.data.loaders.iter_documents` (sources in the
    order given) is encoded without special tokens and followed by ``tokenizer.eos_token_id``.

    The cache key is a sha256 over: each source file's bytes (hashed in 1 MiB chunks; for a
    Hugging Face dataset, its name and split), ``text_field``, ``max_docs``, the tokenizer's
    ``backend_tokenizer.to_str()`` JSON, the EOS id and :data:`FORMAT_VERSION`. When the key's
    files exist and are consistent, nothing is tokenized again. Writes go to temp files in
    ``cache_dir`` that are renamed into place (the metadata last), so a crash or a concurrent
    builder (e.g. several DDP ranks) never leaves a half-written cache entry that looks valid.

    Memory stays bounded: documents are tokenized in batches of 1000 (the Rust tokenizer
    spreads each batch over all cores) and each batch's ids are appended to disk at once.

    Args:
        sources: files, directories or cached HF dataset names (a single one is accepted too).
        tokenizer: a ``transformers.PreTrainedTokenizerFast`` with an EOS token.
        cache_dir: directory for cached token files; created if missing.
        text_field: JSONL key / Parquet or dataset column holding the text.
        num_proc: ``1`` tokenizes on one thread; any other value (or None) lets the Rust
            tokenizer use its thread pool, whose size is set by ``RAYON_NUM_THREADS`` at
            process start. No extra processes are spawned.
        max_docs: stop after this many documents (for quick runs); part of the cache key.
        split: dataset split, used only for Hugging Face dataset sources.

    Returns:
        The :class:`TokenFile` (``uint16`` ids when ``len(tokenizer) <= 65535``, else ``uint32``).

    Raises:
        UserError: bad sources or documents (see ``iter_documents``), a tokenizer without an
            EOS token, ``max_docs < 1``, or a corpus that yields no tokens ("empty corpus").
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise UserError("empty corpus: no sources given")
    if max_docs is not None and max_docs < 1:
        raise UserError(f"max_docs must be at least 1, got {max_docs}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise UserError("tokenizer has no eos_token; it is needed to separate documents")
    vocab_size = len(tokenizer)
    dtype = _dtype_for_vocab(vocab_size)

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = _fingerprint_sources(sources, split)
    tok_sha = _tokenizer_fingerprint(tokenizer)
    key = _cache_key(fingerprints, tok_sha, int(eos_id), text_field, max_docs)
    bin_path, meta_path = cache_dir / f"{key}.bin", cache_dir / f"{key}.json"

    if bin_path.is_file() and meta_path.is_file():
        try:
            tf = TokenFile.open(bin_path)
            log.info("reusing cached token file %s (%d tokens)", bin_path, tf.num_tokens)
            return tf
        except UserError as exc:
            log.warning("cached token file unusable, rebuilding: %s", exc)

    t0 = time.perf_counter()
    num_tokens = num_docs = 0
    max_id = 0
    fd, tmp_bin = tempfile.mkstemp(dir=cache_dir, prefix=f".{key[:16]}.", suffix=".bin.tmp")
    try:
        with os.fdopen(fd, "wb") as out, _tokenizer_threads(num_proc):
            docs = _iter_all_documents(sources, text_field, split, max_docs)
            for batch in _batched(docs, _BATCH_DOCS):
                ids_per_doc = _encode_batch(tokenizer, batch)
                lengths = [len(ids) + 1 for ids in ids_per_doc]
                flat = np.empty(sum(lengths), dtype=np.int64)
                pos = 0
                for ids, n in zip(ids_per_doc, lengths):
                    flat[pos : pos + n - 1] = ids
                    flat[pos + n - 1] = eos_id
                    pos += n
                max_id = max(max_id, int(flat.max()))
                if max_id > np.iinfo(dtype).max:
                    # len(tokenizer) should bound every id; guard against a silent wrap-around.
                    raise UserError(
                        f"token id {max_id} does not fit {dtype.name} (len(tokenizer)={vocab_size})"
                    )
                out.write(flat.astype(dtype).tobytes())
                num_tokens += flat.size
                num_docs += len(batch)
            out.flush()
            os.fsync(out.fileno())
        if num_tokens == 0:
            raise UserError(f"empty corpus: {', '.join(map(str, sources))}")
        os.replace(tmp_bin, bin_path)
    except BaseException:
        Path(tmp_bin).unlink(missing_ok=True)
        raise

    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_documents": num_docs,
        "eos_token_id": int(eos_id),
        "vocab_size": vocab_size,
        "text_field": text_field,
        "max_docs": max_docs,
        "split": split,
        "sources": fingerprints,
        "tokenizer_sha256": tok_sha,
    }
    fd, tmp_meta = tempfile.mkstemp(dir=cache_dir, prefix=f".{key[:16]}.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        os.replace(tmp_meta, meta_path)
    except BaseException:
        Path(tmp_meta).unlink(missing_ok=True)
        raise
    log.info(
        "tokenized %d documents into %d tokens in %.1fs -> %s",
        num_docs,
        num_tokens,
        time.perf_counter() - t0,
        bin_path,
    )
    return TokenFile(bin_path, meta_path, meta)


# --------------------------------------------------------------------------------------------
# packing and splitting


def _as_token_array(tokens: TokenFile | np.ndarray) -> np.ndarray:
    if isinstance(tokens, TokenFile):
        return tokens.tokens
    arr = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    return arr


def _check_block_size(block_size: Any) -> int:
    is_int = isinstance(block_size, (int, np.integer)) and not isinstance(block_size, bool)
    if not is_int or block_size < 1:
        raise UserError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


class PackedDataset(Dataset):
    """Non-overlapping fixed-length blocks of a token stream, with next-token targets.

    Item ``i`` is ``{"input_ids": x, "targets": y}`` (targets already shifted: ``targets[t]`` follows ``input_ids[t]``; not the `transformers` ``labels`` convention, which shifts inside the model), both ``torch.long`` of shape
    ``[block_size]``, where ``x = tokens[i*B : (i+1)*B]`` and ``y = tokens[i*B+1 : (i+1)*B+1]``
    (``B = block_size``): ``y`` is ``x`` shifted left by one. Blocks run straight across
    document boundaries (the EOS in between teaches the model where documents end).
    ``len = (len(tokens) - 1) // B``; the tail that does not fill a block is dropped.

    Pickling a map made by :meth:`TokenFile.memmap` (which is what :func:`split_train_val`
    returns) sends only the file name and offset, so DataLoader workers started with
    ``spawn`` re-map the file instead of receiving a copy of the corpus.

    Args:
        tokens: a 1-D integer array (a memmap is read lazily) or a :class:`TokenFile`.
        block_size: tokens per example, ``B >= 1``.

    Raises:
        UserError: ``block_size`` is not a positive integer, or the stream is shorter than
            ``B + 1`` tokens.
        ValueError: ``tokens`` is not 1-D.
    """

    def __init__(self, tokens: np.ndarray | TokenFile, block_size: int) -> None:
        self.block_size = _check_block_size(block_size)
        self.tokens = _as_token_array(tokens)
        n = len(self.tokens)
        if n < self.block_size + 1:
            raise UserError(
                f"corpus has {n} tokens, shorter than one block of {self.block_size}+1; "
                "lower block_size or add data"
            )

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {i} out of range for {n} blocks")
        start = self._start(i)
        # One read of B+1 tokens, widened to int64 because embedding lookups need long ids.
        window = self.tokens[start : start + self.block_size + 1]
        chunk = torch.from_numpy(np.asarray(window, dtype=np.int64))
        return {"input_ids": chunk[:-1], "targets": chunk[1:]}

    def _start(self, i: int) -> int:
        """Where block ``i`` (``0 <= i < len``) starts in the token stream."""
        return i * self.block_size

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        t = self.tokens
        # Only a map that owns its mmap (not a slice of one) knows its true file offset.
        if isinstance(t, np.memmap) and isinstance(t.base, mmap.mmap) and t.filename:
            state["tokens"] = ("__memmap__", t.filename, t.dtype.str, int(t.offset), t.shape)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        t = state["tokens"]
        if isinstance(t, tuple) and t and t[0] == "__memmap__":
            _, filename, dtype, offset, shape = t
            state["tokens"] = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape
            )
        self.__dict__.update(state)


class DocumentAlignedDataset(PackedDataset):
    """Fixed-length blocks that each begin where a document begins ("BOS-aligned" packing).

    Item ``i`` is the window of ``B + 1`` tokens starting at the ``i``-th document start ``s_i``:
    ``input_ids = tokens[s_i : s_i + B]``, ``targets = tokens[s_i + 1 : s_i + B + 1]``. A
    document start is the EOS that ends the previous document (it plays BOS: the first target
    is the document's first token, predicted from nothing but the separator), or position 0
    for the stream's first document. A document shorter than the block is followed in the
    window by the next documents, and the last one is cut where the block ends, so no position
    is padding; of a document longer than the block only its first ``B`` tokens are ever
    trained on (on a corpus of long documents, use ``stream``).

    Against :class:`PackedDataset`, every block predicts a document's opening from its real
    context instead of from the middle of an unrelated one, at the price of seeing short
    documents more than once per epoch (as the start of their own block and inside the blocks of
    the documents before them) and long documents' tails never. nanochat packs its rows so too
    (each row starts with a BOS; Karpathy, 2025); whether it pays on a given corpus is measured
    in ``benchmarks/bench_learning.py``.

    ``len`` is the number of document starts ``s`` with ``s + B + 1 <= len(tokens)``.
    Validation should stay a :class:`PackedDataset` so bits per byte compare across packings.

    Args:
        tokens: a 1-D integer array (a memmap is scanned in chunks) or a :class:`TokenFile`.
        block_size: tokens per example, ``B >= 1``.
        eos_token_id: the separator between documents.

    Raises:
        UserError: ``block_size`` is not a positive integer, or the stream is shorter than
            ``B + 1`` tokens.
        ValueError: ``tokens`` is not 1-D.
    """

    def __init__(self, tokens: np.ndarray | TokenFile, block_size: int, eos_token_id: int) -> None:
        super().__init__(tokens, block_size)
        last = len(self.tokens) - self.block_size - 1  # the latest start that still fills a block
        starts = [np.zeros(1, dtype=np.int64)]
        for lo in range(0, last + 1, _SCAN_CHUNK):
            hits = np.flatnonzero(np.asarray(self.tokens[lo : min(lo + _SCAN_CHUNK, last + 1)]) == eos_token_id)
            starts.append(hits.astype(np.int64) + lo)
        self.starts = np.unique(np.concatenate(starts))  # 0 may also be an EOS

    def __len__(self) -> int:
        return len(self.starts)

    def _start(self, i: int) -> int:
        return int(self.starts[i])


#: How training blocks are cut from the token stream: ``stream`` (consecutive blocks across
#: document boundaries, :class:`PackedDataset`) or ``documents`` (each block starts at a
#: document start, :class:`DocumentAlignedDataset`).
PACKINGS = ("stream", "documents")


def packed_dataset(tokens: np.ndarray | TokenFile, block_size: int, packing: str = "stream", eos_token_id: int | None = None) -> PackedDataset:
    """The training blocks of ``tokens`` cut as ``packing`` (one of :data:`PACKINGS`) says.

    Raises:
        UserError: an unknown ``packing``, or ``documents`` without ``eos_token_id``.
    """
    if packing == "stream":
        return PackedDataset(tokens, block_size)
    if packing == "documents":
        if eos_token_id is None:
            raise UserError("packing 'documents' needs the tokenizer's EOS id (the document separator)")
        return DocumentAlignedDataset(tokens, block_size, eos_token_id)
    raise UserError(f"packing must be {' or '.join(PACKINGS)}, not {packing!r}")


def _nearest_boundary(
    tokens: np.ndarray, eos_id: int, lo: int, hi: int, target: int
) -> int | None:
    """The cut c in [lo, hi] with tokens[c-1] == eos_id nearest to target, or None.

    Scans in chunks so a 5 % window of a billion-token corpus never builds a huge mask.
    """
    best: int | None = None
    # Candidate cuts c correspond to EOS positions p = c - 1 in [lo - 1, hi - 1].
    for start in range(max(lo - 1, 0), hi, _SCAN_CHUNK):
        stop = min(start + _SCAN_CHUNK, hi)
        hits = np.flatnonzero(tokens[start:stop] == eos_id)
        if hits.size == 0:
            continue
        cuts = hits + start + 1
        j = int(np.argmin(np.abs(cuts - target)))
        c = int(cuts[j])
        if best is None or abs(c - target) < abs(best - target):
            best = c
    return best


def split_train_val(
    token_file: TokenFile,
    val_fraction: float = 0.05,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of the token stream for validation.

    The cut goes right after an EOS (a document boundary) when one lies within the last
    ``2 * val_len`` tokens, choosing the boundary nearest the exact fraction; otherwise it is
    made at the exact position. ``val_len = max(ceil(N * val_fraction), block_size + 1)``, so
    validation always gets at least one full block, and the cut is kept where both halves hold
    ``block_size + 1`` tokens. Taking the end (not random blocks) keeps validation documents
    unseen in training.

    Args:
        token_file: the tokenized corpus (``N = token_file.num_tokens``).
        val_fraction: in ``[0, 1)``; ``0`` returns an empty validation array.
        block_size: the training block length ``B`` (required).

    Returns:
        ``(train, val)``: 1-D read-only memmaps of the token file's dtype, ``train`` the tokens
        ``[0, c)`` and ``val`` the tokens ``[c, N)``; disjoint and together the whole stream.

    Raises:
        TypeError: ``block_size`` not given.
        UserError: ``val_fraction`` outside ``[0, 1)``; ``block_size`` not a positive integer;
            the stream cannot give train (and, if ``val_fraction > 0``, val) ``B + 1`` tokens
            each (the message gives the token count).
    """
    if block_size is None:
        raise TypeError("split_train_val() missing required argument 'block_size'")
    block = _check_block_size(block_size)
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = token_file.num_tokens
    need = block + 1
    if val_fraction == 0:
        if n < need:
            raise UserError(
                f"corpus has {n} tokens, shorter than one block of {block}+1; "
                "lower block_size or add data"
            )
        return token_file.memmap(0, n), token_file.memmap(0, 0)
    if n < 2 * need:
        raise UserError(
            f"corpus has {n} tokens; a train and a validation block of {block}+1 tokens each "
            f"need {2 * need}; lower block_size, set val_fraction=0, or add data"
        )
    val_len = max(math.ceil(n * val_fraction), need)
    lo, hi = need, n - need  # every cut in [lo, hi] leaves both halves a full block
    target = min(max(n - val_len, lo), hi)
    window_lo = max(lo, n - 2 * val_len)
    cut = target
    if window_lo <= hi:
        boundary = _nearest_boundary(
            token_file.tokens, token_file.eos_token_id, window_lo, hi, target
        )
        if boundary is not None:
            cut = boundary
    return token_file.memmap(0, cut), token_file.memmap(cut, n)


# --------------------------------------------------------------------------------------------
# sampling
