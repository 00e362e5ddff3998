"""`minigpt tokenizer`: train a byte-level BPE tokenizer on files (or the embedded corpus)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from minigpt.errors import UserError

__all__ = ["tokenizer_command"]


def tokenizer_command(
    data: str | list[str] | None = None,
    vocab_size: int = 6400,
    out: str = "tokenizer",
    text_field: str = "text",
    max_chars: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a tokenizer on documents read from files and save it to ``out``.

    Args:
        data: paths or dataset names understood by ``minigpt.data.loaders.iter_documents``
            (.txt, .jsonl, .parquet, .gz, Hugging Face dataset names). Empty: train on the
            embedded Python documentation corpus (:func:`minigpt.data.corpus.python_docs_corpus`).
        vocab_size: final vocabulary size.
        out: output directory.
        text_field: field holding the text in JSONL/parquet records.
        max_chars: stop reading after this many characters (the document crossing the limit is
            cut); None reads everything.
        overwrite: write into an ``out`` that already holds files (its tokenizer files are
            replaced; nothing else is deleted).

    Returns:
        The output directory.

    Raises:
        UserError: bad ``max_chars`` or ``vocab_size``, no text found, errors of the loaders,
            or ``out`` is a file, or holds files (a model, another tokenizer) and ``overwrite``
            is not set: checked before any text is read.
    """
    from minigpt.data.corpus import python_docs_corpus
    from minigpt.data.loaders import iter_documents
    from minigpt.tokenizer import train_tokenizer

    if max_chars is not None and max_chars <= 0:
        raise UserError(f"max_chars: must be positive or None, got {max_chars}")
    from minigpt.errors import check_writable

    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    check_writable(out_path)
    held = sorted(p.name for p in out_path.iterdir()) if out_path.is_dir() else []
    if held and not overwrite:
        model = any(name in held for name in ("config.json", "adapter_config.json")) or any(n.endswith(".safetensors") for n in held)
        what = "a model, whose outputs a new tokenizer would turn to garbage" if model else f"files ({', '.join(held[:4])})"
        raise UserError(f"--out {out} already holds {what}; choose another --out, or pass --overwrite to replace the tokenizer files in it")
    if isinstance(data, (str, Path)):  # one path given where a list was expected
        data = [str(data)]
    data = list(data or [])

    start = time.perf_counter()  # includes reading/parsing the documents
    if data:
        def documents() -> Iterator[str]:
            for path in data:
                yield from iter_documents(path, text_field=text_field)

        source: Iterable[str] = documents()
    else:
        # Passing max_chars lets the corpus stop parsing the stdlib early.
        source = python_docs_corpus(max_chars)

    used = {"chars": 0, "docs": 0}

    def limited() -> Iterator[str]:
        for doc in source:
            if max_chars is not None:
                room = max_chars - used["chars"]
                if room <= 0:
                    return
                doc = doc[:room]
            used["chars"] += len(doc)
            used["docs"] += 1
            yield doc

    tokenizer = train_tokenizer(limited(), vocab_size=vocab_size, out_dir=out)
    seconds = time.perf_counter() - start
    what = ", ".join(str(d) for d in data) if data else "embedded Python docs"
    print(
        f"tokenizer: vocab {len(tokenizer)} | {used['chars']:,} chars in {used['docs']:,} docs "
        f"from {what} | {seconds:.1f}s | saved to {out}"
    )
    return Path(out)
