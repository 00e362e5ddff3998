"""Corpus preparation for pretraining-style runs (pretrain, mlm): the sources (the user's files,
or the embedded CPython documentation), the tokenizer (loaded, or trained on the start of the
corpus without its held-out tail), the cached token file and its packed train / validation
blocks."""

from __future__ import annotations

import time
from pathlib import Path

from minigpt.errors import UserError


def default_cache_dir() -> Path:
    """Where tokenized corpora are cached: $MINIGPT_CACHE or ~/.cache/minigpt."""
    import os

    return Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))


def prepare_tokenizer(
    sources: list[str],
    tokenizer: str | None,
    vocab_size: int,
    text_field: str,
    out: Path,
    max_chars: int | None,
    holdout_fraction: float = 0.0,
    mask_token: bool = False,
):
    """Load `tokenizer`, or train a byte-level BPE of `vocab_size` on the start of `sources`
    (with `<|mask|>` at id 8 when `mask_token`, for an encoder).

    It reads at most `max_chars` characters and never the last `holdout_fraction` of the text
    (with a 2 % margin): the validation split is cut from the end of the token stream, and a
    tokenizer that had seen it would make the validation bits per byte look better than they are.
    """
    from minigpt.tokenizer import load_tokenizer, train_tokenizer

    if tokenizer:
        return load_tokenizer(tokenizer)
    budget = max_chars
    if holdout_fraction > 0:
        # Count characters, stopping once the training part alone would exceed max_chars.
        stop = None if max_chars is None else max_chars / (1 - holdout_fraction)
        total = 0
        for doc in iter_corpus(sources, text_field):
            total += len(doc)
            if stop is not None and total > stop:
                break
        else:
            keep = int(total * (1 - holdout_fraction) * 0.98)
            budget = keep if budget is None else min(budget, keep)
    seen = [0]

    def texts():
        remaining = budget
        for doc in iter_corpus(sources, text_field):
            seen[0] += 1
            if remaining is not None:
                if remaining <= 0:
                    return
                doc = doc[:remaining]
                remaining -= len(doc)
            yield doc

    t0 = time.time()
    try:
        tok = train_tokenizer(texts(), vocab_size=vocab_size, out_dir=out / "tokenizer", mask_token=mask_token)
    except UserError:
        if seen[0] == 0:
            raise UserError(f"empty corpus: no text in {', '.join(sources)}") from None
        raise
    print(f"trained a {len(tok)}-token byte-level BPE tokenizer in {time.time() - t0:.1f} s -> {out / 'tokenizer'}")
    return tok


def resolve_sources(data: list[str]) -> list[str]:
    """`data`, or (when empty) the embedded CPython docs written once as a shuffled JSONL file,
    shuffled so the held-out tail is a random sample of documents, not the last modules."""
    if data:
        return list(data)
    import sys

    from minigpt.data.corpus import write_python_docs_corpus

    corpus_file = default_cache_dir() / f"python{sys.version_info[0]}.{sys.version_info[1]}_docs_shuffled.jsonl"
    if not corpus_file.exists():
        write_python_docs_corpus(corpus_file, shuffle_seed=0)
    return [str(corpus_file)]


def iter_corpus(sources: list[str], text_field: str):
    """Documents of every source, in order."""
    from minigpt.data.loaders import iter_documents

    for src in sources:
        yield from iter_documents(src, text_field=text_field)


def load_pretrain_data(sources: list[str], tokenizer, block_size: int, text_field: str, val_fraction: float, cache_dir: str | None,
                       packing: str = "stream"):
    """Tokenize (cached) and split into packed blocks: returns `(train_dataset, val_dataset)`,
    the latter None when `val_fraction` is 0. `packing` cuts the training blocks
    (`minigpt.data.pretrain.PACKINGS`); validation blocks are always the plain stream's, so
    bits per byte compare across packings."""
    from minigpt.data.pretrain import PackedDataset, build_token_file, packed_dataset, split_train_val

    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "tokens"
    tf = build_token_file(sources, tokenizer, cache_dir=cache, text_field=text_field)
    train_tokens, val_tokens = split_train_val(tf, val_fraction=val_fraction, block_size=block_size)
    train = packed_dataset(train_tokens, block_size, packing, tf.eos_token_id)
    val = PackedDataset(val_tokens, block_size) if val_fraction > 0 else None
    return train, val


def prepare_corpus(
    data: list[str],
    tokenizer: str | None,
    vocab_size: int,
    text_field: str,
    out_dir: Path,
    tokenizer_max_chars: int | None,
    val_fraction: float,
    block_size: int,
    cache_dir: str | None,
    rank: int,
    mask_token: bool = False,
    packing: str = "stream",
):
    """`(tokenizer, train_blocks, val_blocks)` for a pretraining-style run on `data`
    (`resolve_sources`, `prepare_tokenizer`, then `load_pretrain_data`). Under torchrun rank 0
    writes the default corpus, trains the tokenizer and fills the token cache first; the other
    ranks then read them."""
    from minigpt.tokenizer import load_tokenizer
    from minigpt.train.distributed import barrier

    if rank == 0:
        sources = resolve_sources(data)
        tok = prepare_tokenizer(sources, tokenizer, vocab_size, text_field, out_dir, tokenizer_max_chars, val_fraction, mask_token=mask_token)
        train_ds, val_ds = load_pretrain_data(sources, tok, block_size, text_field, val_fraction, cache_dir, packing)
    barrier()
    if rank != 0:
        sources = resolve_sources(data)
        tok = load_tokenizer(tokenizer or out_dir / "tokenizer")
        train_ds, val_ds = load_pretrain_data(sources, tok, block_size, text_field, val_fraction, cache_dir, packing)
    return tok, train_ds, val_ds


__all__ = ["default_cache_dir", "iter_corpus", "load_pretrain_data", "prepare_corpus", "prepare_tokenizer", "resolve_sources"]
