"""An embedded default corpus that needs no download: the documentation shipped with CPython.

Two sources, both present in every normal CPython install:

1. ``pydoc_data.topics.topics``: the language-reference topics ``help("assert")`` shows, one
   document per topic (about 80 documents, 0.46 MB on 3.11).
2. Docstrings of the standard library, read by *parsing* the ``.py`` sources with :mod:`ast`.
   The modules are never imported: importing would run their top-level code (``antigravity``
   opens a web browser, ``this`` prints a poem) and would be slow.

The text is English prose with some code, so it is a small, license-clean stand-in for a real
pretraining corpus: enough to smoke-test the tokenizer and pretraining end to end offline.
Its exact content depends on the Python version that runs it.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from minigpt.errors import UserError

# Directory names whose files are not documentation of the library: tests, the IDLE app,
# turtle demos, installed third-party packages, byte-code caches.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}
)

# Nodes whose bodies may hold module- or class-level definitions (try/except, if, with, ...).
_BLOCKS: tuple[type[ast.AST], ...] = (
    ast.If, ast.Try, ast.ExceptHandler, ast.With, ast.AsyncWith, ast.For, ast.AsyncFor,
    ast.While, ast.Match, ast.match_case,
)
if hasattr(ast, "TryStar"):  # try/except* exists from Python 3.11
    _BLOCKS = (*_BLOCKS, ast.TryStar)


def _pydoc_topics() -> list[str]:
    """Values of ``pydoc_data.topics.topics`` in sorted key order ([] if the module is absent)."""
    try:
        # pydoc_data is a plain data module (one dict literal): importing it runs nothing else.
        from pydoc_data.topics import topics
    except ImportError:  # some distributions ship the stdlib without pydoc_data
        return []
    return [topics[key] for key in sorted(topics) if topics[key].strip()]


def _stdlib_files() -> list[tuple[str, Path]]:
    """``(module_name, path)`` of every stdlib ``.py`` file kept, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        return []
    files = []
    # os.walk with pruning rather than rglob: site-packages can hold far more files than the
    # stdlib itself (torch, transformers), and descending into it would dominate the run time.
    for dirpath, dirnames, filenames in os.walk(root):
        # config-3.x-<platform> holds build scripts, not library modules.
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                files.append((".".join(parts), path))
    # Sort by path (as a tuple of parts) so the order is the same on every file system.
    files.sort(key=lambda item: item[1].relative_to(root).parts)
    return files


def _heading(node: ast.AST, qualname: str) -> str:
    """One-line heading for a class or function: ``class a.B(Base)`` / ``def a.B.f(self, x)``."""
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        return f"class {qualname}({', '.join(bases)})" if bases else f"class {qualname}"
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {qualname}({ast.unparse(node.args)}){returns}"


def _definitions(node: ast.AST, prefix: str) -> Iterator[tuple[ast.AST, str]]:
    """Classes and functions under ``node`` in source order, with dotted qualified names.

    Descends into class bodies and through ``if``/``try``/``with``/``for`` blocks, since the
    stdlib often defines platform-specific functions inside them (e.g. in ``os``). Function
    bodies are not searched: helpers nested in functions are implementation detail, and skipping
    their statements keeps the walk cheap.
    """
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            qualname = f"{prefix}.{child.name}"
            yield child, qualname
            yield from _definitions(child, qualname)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child, f"{prefix}.{child.name}"
        elif isinstance(child, _BLOCKS):
            yield from _definitions(child, prefix)


def _module_docs(module: str, path: Path) -> list[str]:
    """Documents (heading line + cleaned docstring) of one source file; [] if unparsable."""
    try:
        # ast.parse on bytes honours the file's coding cookie, as the interpreter would.
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return []
    docs = []
    doc = ast.get_docstring(tree, clean=True)
    if doc and doc.strip():
        docs.append(f"module {module}\n{doc}")
    for node, qualname in _definitions(tree, module):
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            docs.append(f"{_heading(node, qualname)}\n{doc}")
    return docs


def iter_python_docs() -> Iterator[str]:
    """Yield the corpus documents lazily, in the deterministic order of :func:`python_docs_corpus`.

    Useful to stop early without parsing the whole standard library.
    """
    yield from _pydoc_topics()
    for module, path in _stdlib_files():
        yield from _module_docs(module, path)


# Parsing ~650 files takes a few seconds, and callers (tests, CLI, tokenizer training) ask for
# the same corpus repeatedly in one process, so both the full corpus and prefixes are cached.
@functools.lru_cache(maxsize=1)
def _full_corpus() -> tuple[str, ...]:
    return tuple(iter_python_docs())


@functools.lru_cache(maxsize=8)
def _corpus_prefix(max_chars: int) -> tuple[str, ...]:
    # Reuse the full corpus if it is already built; otherwise parse only as far as needed.
    source = _full_corpus() if _full_corpus.cache_info().currsize else iter_python_docs()
    docs = []
    total = 0
    for doc in source:
        room = max_chars - total
        if room <= 0:
            break
        docs.append(doc[:room])
        total += len(docs[-1])
    return tuple(docs)


def python_docs_corpus(max_chars: int | None = None) -> list[str]:
    """The embedded default corpus: CPython's pydoc topics, then stdlib docstrings.

    Order: pydoc topics sorted by name, then stdlib files sorted by path; within a file the
    module docstring, then classes/functions/methods in source order. Each docstring document
    starts with a heading line such as ``module json.decoder``, ``class
    json.decoder.JSONDecoder(object)`` or ``def json.decoder.JSONDecoder.decode(self, s,
    _w=WHITESPACE.match)``, then the docstring cleaned by ``ast.get_docstring(clean=True)``.

    Args:
        max_chars: keep documents until this many characters in total (the document crossing
            the limit is cut so the total is exactly ``max_chars``, or the whole corpus if that
            is shorter); None keeps all (about 2.5 million characters, ~8,000 documents, on
            CPython 3.11).

    Returns:
        A new list of document strings (the cached corpus is shared, the list is not).

    Raises:
        UserError: ``max_chars`` is not a positive integer or None.
    """
    if max_chars is None:
        return list(_full_corpus())
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise UserError(f"max_chars: must be a positive integer or None, got {max_chars!r}")
    return list(_corpus_prefix(max_chars))


def write_python_docs_corpus(path: str | Path, max_chars: int | None = None, shuffle_seed: int | None = None) -> Path:
    """Write the corpus as JSONL, one ``{"text": document}`` object per line (UTF-8).

    JSONL rather than plain text so that document boundaries survive (documents contain blank
    lines themselves). Parent directories are created; the file appears atomically.
    ``shuffle_seed`` shuffles the documents (seeded), so that a validation split taken from
    the end of the stream is a random sample rather than the last modules in sorted order.

    Returns:
        The path written.

    Raises:
        UserError: ``path`` is an existing directory, or bad ``max_chars``.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"corpus output path {path}: is a directory, expected a .jsonl file path")
    docs = python_docs_corpus(max_chars)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
