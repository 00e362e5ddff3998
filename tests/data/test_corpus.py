"""Tests for the embedded Python-documentation corpus."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys

import pytest

from minigpt.data.corpus import iter_python_docs, python_docs_corpus, write_python_docs_corpus
from minigpt.errors import UserError


def _digest(docs: list[str]) -> str:
    return hashlib.sha256("\x1e".join(docs).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return python_docs_corpus()


def test_corpus_is_substantial(corpus):
    assert len(corpus) > 1000
    assert all(isinstance(d, str) and d.strip() for d in corpus)
    # pydoc topics alone are ~0.5 MB; with the docstrings it must be well above that.
    assert sum(map(len, corpus)) > 1_500_000


def test_contains_pydoc_topics(corpus):
    from pydoc_data.topics import topics

    assert topics["assert"] in corpus
    assert topics["while"] in corpus
    # Topics come first, in sorted name order.
    expected = [topics[k] for k in sorted(topics) if topics[k].strip()]
    assert corpus[: len(expected)] == expected


def test_contains_json_docstrings_with_headings(corpus):
    import json.decoder

    module_docs = [d for d in corpus if d.startswith("module json\n")]
    assert len(module_docs) == 1
    assert "JSON (JavaScript Object Notation)" in module_docs[0]

    heading = "def json.decoder.JSONDecoder.decode(self, s, _w=WHITESPACE.match)"
    method_docs = [d for d in corpus if d.startswith(heading + "\n")]
    assert len(method_docs) == 1
    # The source docstring, read by ast, equals the runtime docstring cleaned by inspect.
    runtime_doc = inspect.cleandoc(json.decoder.JSONDecoder.decode.__doc__)
    assert method_docs[0] == heading + "\n" + runtime_doc

    assert any(d.startswith("class json.decoder.JSONDecoder(object)\n") for d in corpus)


def test_skips_tests_and_apps(corpus):
    headings = [d.split("\n", 1)[0] for d in corpus]
    for banned in ("test.", "idlelib", "turtledemo", "lib2to3.tests", "site-packages"):
        assert not any(f" {banned}" in h.split("(")[0] for h in headings), banned
    # Real modules in ordinary packages are kept.
    assert "module email.message" in headings


def test_max_chars_is_an_exact_prefix(corpus):
    limit = 123_457
    part = python_docs_corpus(limit)
    assert sum(map(len, part)) == limit
    assert part[:-1] == corpus[: len(part) - 1]
    assert corpus[len(part) - 1].startswith(part[-1])
    # More than the corpus holds gives the whole corpus.
    assert python_docs_corpus(10**9) == corpus


def test_lazy_iteration_matches(corpus):
    first = [doc for doc, _ in zip(iter_python_docs(), range(200))]
    assert first == corpus[:200]


def test_returned_list_is_a_copy(corpus):
    again = python_docs_corpus()
    again.clear()
    assert python_docs_corpus() == corpus


@pytest.mark.parametrize("bad", [0, -5, 1.5, "10"])
def test_bad_max_chars(bad):
    with pytest.raises(UserError, match="max_chars"):
        python_docs_corpus(bad)


def test_write_jsonl_keeps_document_boundaries(tmp_path):
    path = write_python_docs_corpus(tmp_path / "sub" / "docs.jsonl", max_chars=60_000)
    lines = path.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line)["text"] for line in lines]
    assert docs == python_docs_corpus(60_000)
    assert any("\n\n" in d for d in docs)  # blank lines inside documents survive
    with pytest.raises(UserError, match="directory"):
        write_python_docs_corpus(tmp_path)


def test_building_imports_no_stdlib_module():
    """Build in a fresh interpreter and diff sys.modules: parsing must not import what it reads.

    `antigravity` (sorted near the start of the stdlib, so inside the prefix built here) opens a
    web browser when imported, and `this` prints a poem; they are the canaries, and the whole
    diff is bounded to the data modules the corpus may load (inspect, which ast.get_docstring
    imports for cleaning, is loaded before the snapshot). Every file goes through the same
    parse-only code, so a prefix of the corpus (topics plus the first ~40 stdlib modules) keeps
    the test fast. The same process reports a digest, which must match this process's corpus
    (determinism across interpreters).
    """
    limit = 800_000
    # The package __init__ files import torch and transformers (seconds of start-up that have
    # nothing to do with the corpus), so the child loads corpus.py alone: `minigpt` becomes a
    # bare namespace pointing at the real sources, which is all `minigpt.errors` needs.
    package_dir = os.path.dirname(importlib.util.find_spec("minigpt").origin)
    code = (
        "import sys, types, hashlib, json, importlib.util\n"
        "pkg = types.ModuleType('minigpt')\n"
        f"pkg.__path__ = [{package_dir!r}]\n"
        "sys.modules['minigpt'] = pkg\n"
        "spec = importlib.util.spec_from_file_location(\n"
        f"    'corpus', {package_dir!r} + '/data/corpus.py')\n"
        "c = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(c)\n"
        # ast.get_docstring(clean=True) imports inspect lazily: the tool, not a parsed module.
        "import inspect\n"
        "before = set(sys.modules)\n"
        f"docs = c.python_docs_corpus({limit})\n"
        "new = sorted(set(sys.modules) - before)\n"
        "digest = hashlib.sha256('\\x1e'.join(docs).encode('utf-8')).hexdigest()\n"
        "print(json.dumps({'new': new, 'digest': digest, 'last': docs[-1][:80], "
        "'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    new = set(report["new"])
    assert not report["torch"]  # the child really ran without the heavy package imports
    assert "antigravity" not in new and "this" not in new
    allowed = {"pydoc_data", "pydoc_data.topics"}
    assert {m for m in new if not m.startswith("_sysconfigdata")} <= allowed
    # The prefix reached past antigravity.py, so the canary was really parsed.
    assert report["last"].split(" ", 2)[1] > "antigravity"
    assert report["digest"] == _digest(python_docs_corpus(limit))
