"""Read raw pretraining text from local files, directories or cached Hugging Face datasets.

Everything here yields plain ``str`` documents one at a time, so a corpus never has to fit in
memory (except a single-document ``.txt`` file, which *is* one document).

Supported sources (see :func:`iter_documents`):

========================  =====================================================================
``x.txt``                 documents separated by lines that hold only ``<|endoftext|>``;
                          without such a line the whole file is one document
``x.jsonl``               one JSON object per line; the document is ``obj[text_field]``
``x.parquet``             the column ``text_field``, read in record batches
``x.<any of these>.gz``   the same, gzip-compressed
a directory               every supported file below it, in sorted path order
``user/name`` or ``name``  a Hugging Face dataset already in the local cache
========================  =====================================================================
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from minigpt.errors import UserError

__all__ = [
    "DOC_SEPARATOR",
    "SUPPORTED_SUFFIXES",
    "RECORD_SUFFIXES",
    "iter_documents",
    "iter_records",
    "resolve_source",
]

#: A line holding only this marker ends a document in ``.txt`` files (TinyStories style).
DOC_SEPARATOR = "<|endoftext|>"

#: File name endings :func:`iter_documents` understands (each also with ``.gz`` appended).
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")

#: File name endings :func:`iter_records` understands (each also with ``.gz`` appended).
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")

# Parquet rows are pulled in batches of this many so a large column never sits in memory at once.
_PARQUET_BATCH_ROWS = 4096

# "name" or "user/name" with the characters the Hugging Face Hub allows in repository ids.
_HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def _kind(path: Path, suffixes: Iterable[str] = SUPPORTED_SUFFIXES) -> tuple[str, bool] | None:
    """Return (format suffix, gzipped) for a file name ending in one of `suffixes` (optionally
    followed by .gz), else None."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[: -len(".gz")]
    for suffix in suffixes:
        if name.endswith(suffix):
            return suffix, gz
    return None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def resolve_source(source: str | Path) -> list[Path] | str:
    """Work out what a source names, without reading any contents.

    Args:
        source: a supported file, a directory, or a Hugging Face dataset name.

    Returns:
        A sorted list of supported files (one element for a file; every supported, non-hidden
        file below a directory, recursively, sorted by path), or the dataset name as a ``str``
        when ``source`` does not exist locally and looks like a Hugging Face dataset id.

    Raises:
        UserError: the file has an unsupported extension, the directory holds no supported file,
            or the path does not exist and cannot be a dataset name.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        # Hidden entries (.git, .cache, ...) hold tooling state, never corpus text.
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and _kind(p) and not _is_hidden(p, path)
        )
        if not files:
            raise UserError(
                f"{path}: directory holds no supported files "
                f"({', '.join(SUPPORTED_SUFFIXES)}, optionally .gz)"
            )
        return files
    if path.is_file():
        if _kind(path) is None:
            raise UserError(
                f"{path}: unsupported file type; expected one of "
                f"{', '.join(SUPPORTED_SUFFIXES)} (optionally .gz)"
            )
        return [path]
    text = str(source)
    # A missing "data/x.txt" is a typo'd path, not a dataset: only suffix-free ids go to the Hub.
    if _kind(path) is None and _HF_NAME.match(text) and not text.startswith("."):
        return text
    raise UserError(f"{source}: no such file or directory")


def iter_documents(
    source: str | Path, text_field: str = "text", split: str = "train"
) -> Iterator[str]:
    """Yield the non-empty documents of one source, streaming.

    Formats are chosen by file name (see the module docstring); ``.gz`` files are decompressed
    on the fly. In ``.txt`` files a document separator is a line whose only content (ignoring
    surrounding whitespace) is ``<|endoftext|>``; leading and trailing newlines of each
    separated document are dropped. A ``.txt`` file with no separator line is yielded whole and
    unchanged (nanoGPT style, e.g. tinyshakespeare). Documents that are empty or only whitespace
    are skipped in every format; a ``null`` Parquet or dataset value counts as empty.

    Encoding policy: files are read as UTF-8. Invalid byte sequences are replaced by U+FFFD
    (``errors="replace"``) rather than aborting a long run, and one :class:`UnicodeWarning` per
    file reports how many lines held invalid bytes, so corruption is visible but not fatal.

    Args:
        source: a file, a directory (all supported files below it, sorted, recursively), or a
            Hugging Face dataset name ("name" or "user/name") that is already in the local cache.
        text_field: the JSONL key, Parquet column or dataset column holding the text.
        split: the dataset split; used only for Hugging Face datasets.

    Yields:
        One ``str`` per document.

    Raises:
        UserError: missing path; unsupported file type; ``file.jsonl:LINE`` invalid JSON or a
            missing / non-string text field; a Parquet file or dataset without the column; a
            dataset name that is not in the local Hugging Face cache.
    """
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        yield from _iter_hf_dataset(resolved, text_field, split)
        return
    for path in resolved:
        # resolve_source only returns supported files, so _kind is never None here.
        suffix, gz = _kind(path)  # type: ignore[misc]
        if suffix == ".parquet":
            yield from _iter_parquet(path, text_field, gz)
        elif suffix == ".jsonl":
            yield from _iter_jsonl(path, text_field, gz)
        else:
            yield from _iter_txt(path, gz)


def _open_binary(path: Path, gz: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _decoded_lines(path: Path, gz: bool) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line text with a '\\n' ending if it had one).

    Lines are split on b"\\n" and decoded one by one, which is exact for UTF-8 (0x0A never
    occurs inside a multi-byte sequence) and lets us count the lines holding invalid bytes.
    CRLF endings become "\\n" so Windows files tokenize like Unix ones.
    """
    bad_lines = 0
    try:
        with _open_binary(path, gz) as fh:
            try:
                for lineno, raw in enumerate(fh, start=1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        bad_lines += 1
                        line = raw.decode("utf-8", errors="replace")
                    if lineno == 1 and line.startswith("\ufeff"):
                        line = line[1:]  # a UTF-8 byte-order mark (Windows editors write one)
                    if line.endswith("\r\n"):
                        line = line[:-2] + "\n"
                    yield lineno, line
            except (OSError, EOFError) as exc:
                # Truncated or corrupt gzip streams land here.
                raise UserError(f"{path}: cannot read file ({exc})") from exc
    finally:
        # In `finally` so the warning also fires when the consumer stops early (max_docs).
        if bad_lines:
            warnings.warn(
                f"{path}: {bad_lines} line(s) had invalid UTF-8 bytes; "
                "they were replaced with U+FFFD",
                UnicodeWarning,
                stacklevel=2,
            )


def _iter_txt(path: Path, gz: bool) -> Iterator[str]:
    # One pass: collect lines of the current document; a separator line flushes it. If the file
    # never has a separator, the buffer at EOF is the whole file, i.e. the single-document case.
    buf: list[str] = []
    seen_separator = False
    for _, line in _decoded_lines(path, gz):
        if line.strip() == DOC_SEPARATOR:
            seen_separator = True
            doc = "".join(buf).strip("\n")
            buf = []
            if doc.strip():
                yield doc
        else:
            buf.append(line)
    doc = "".join(buf)
    if seen_separator:
        doc = doc.strip("\n")
    if doc.strip():
        yield doc


def _iter_jsonl(path: Path, text_field: str, gz: bool) -> Iterator[str]:
    for lineno, line in _decoded_lines(path, gz):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        value = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            if isinstance(obj, dict):
                found = f"keys: {', '.join(map(str, obj)) or 'none'}"
                if text_field in obj:
                    found = f"value is {type(value).__name__}, not a string; {found}"
            else:
                found = f"line holds a JSON {type(obj).__name__}, not an object"
            raise UserError(
                f"{path}:{lineno}: missing text field {text_field!r} ({found}); "
                "choose the field with --text-field"
            )
        if value.strip():
            yield value


def _iter_parquet(path: Path, text_field: str, gz: bool) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # GzipFile is seekable (by re-decompressing), which is all ParquetFile needs.
    fh: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")
    with fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        names = pf.schema_arrow.names
        if text_field not in names:
            raise UserError(
                f"{path}: no column {text_field!r} (columns: {', '.join(names)}); "
                "choose the column with --text-field"
            )
        col_type = pf.schema_arrow.field(text_field).type
        if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
            raise UserError(f"{path}: column {text_field!r} has type {col_type}, not string")
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                if value and value.strip():
                    yield value


def _iter_hf_dataset(name: str, text_field: str, split: str) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the library raises many types (network, missing cache, bad split)
        raise UserError(
            f"{name}: neither a local file nor a dataset in the local Hugging Face cache "
            f"(split {split!r}): {type(exc).__name__}: {exc}"
        ) from exc
    if text_field not in ds.column_names:
        raise UserError(
            f"{name}: dataset has no column {text_field!r} "
            f"(columns: {', '.join(ds.column_names)}); "
            "choose the column with --text-field"
        )
    rows: Iterable[dict] = ds.select_columns([text_field]).iter(batch_size=1000)
    for batch in rows:
        for value in batch[text_field]:
            if isinstance(value, str) and value.strip():
                yield value


def iter_records(source: str | Path, strings_as: str | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` for every JSON object of a record file or directory, streaming.

    With ``strings_as`` (e.g. ``"prompt"``), bare strings are records too: a JSON string line
    or array item becomes ``{strings_as: text}``, and ``.txt`` files are accepted, one record per
    non-blank line (``where = "path:LINE"``, the line's ending stripped).

    Formats, chosen by file name (each may also be gzipped, ``.gz``):

    * ``.jsonl``: one object per line; ``where = "path:LINE"`` (1-based; blank lines skipped).
    * ``.json``: one JSON array of objects; ``where = "path[i]"`` (0-based index).
    * ``.parquet``: one object per row (nested columns become lists/dicts);
      ``where = "path[i]"`` (0-based row).
    * a directory: every such file below it (hidden entries ignored), in sorted path order.

    Records are not interpreted here (see ``minigpt.tokenizer.chat.normalize_messages``). Files
    are read as UTF-8; invalid bytes are replaced as in :func:`iter_documents`.

    Raises:
        UserError: missing path; unsupported file type; a directory with no record file;
            ``path:LINE`` invalid JSON or a line that is not an object; a ``.json`` file that is
            not valid JSON or not an array of objects; an unreadable Parquet file.
    """
    path = Path(source).expanduser()
    suffixes = RECORD_SUFFIXES + ((".txt",) if strings_as else ())
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p, suffixes) and not _is_hidden(p, path))
        if not files:
            raise UserError(f"{path}: directory holds no record files ({', '.join(suffixes)}, optionally .gz)")
    elif path.is_file():
        if _kind(path, suffixes) is None:
            raise UserError(
                f"{path}: unsupported file type for records; expected one of {', '.join(suffixes)} (optionally .gz)"
            )
        files = [path]
    else:
        raise UserError(f"{source}: no such file or directory")
    for file in files:
        suffix, gz = _kind(file, suffixes)  # type: ignore[misc]
        if suffix == ".jsonl":
            yield from _iter_jsonl_records(file, gz, strings_as)
        elif suffix == ".json":
            yield from _iter_json_records(file, gz, strings_as)
        elif suffix == ".txt":
            for lineno, line in _decoded_lines(file, gz):
                if line.strip():
                    yield f"{file}:{lineno}", {strings_as: line.rstrip("\n")}
        else:
            yield from _iter_parquet_records(file, gz)


def _iter_jsonl_records(path: Path, gz: bool, strings_as: str | None = None) -> Iterator[tuple[str, dict]]:
    for lineno, line in _decoded_lines(path, gz):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if strings_as and isinstance(obj, str):
            obj = {strings_as: obj}
        if not isinstance(obj, dict):
            also = " or a string" if strings_as else ""
            raise UserError(f"{where}: line holds a JSON {type(obj).__name__}, not an object{also}")
        yield where, obj


def _iter_json_records(path: Path, gz: bool, strings_as: str | None = None) -> Iterator[tuple[str, dict]]:
    try:
        with _open_binary(path, gz) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read file ({exc})") from exc
    try:
        data = json.loads(raw.decode("utf-8", errors="replace").removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path}: expected a JSON array of records, got a JSON {type(data).__name__} "
            "(use .jsonl for one object per line)"
        )
    for i, obj in enumerate(data):
        where = f"{path}[{i}]"
        if strings_as and isinstance(obj, str):
            obj = {strings_as: obj}
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _iter_parquet_records(path: Path, gz: bool) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fh: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")
    with fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for obj in batch.to_pylist():
                yield f"{path}[{row}]", obj
                row += 1
