"""The tests mirror the source: the test of `src/minigpt/<folder>/<file>.py` is
`tests/<folder>/test_<file>.py` (or `test_<file>_<topic>.py` for a second file about it), so a
reader finds it by path. Tests at the top of `tests/` are the cross-cutting ones (the README,
the design documents' examples, the command line, defaults shared by every command)."""

from __future__ import annotations

from pathlib import Path

import minigpt

SRC = Path(minigpt.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent


def test_every_test_file_sits_beside_the_module_it_tests():
    misplaced = []
    for path in sorted(TESTS.glob("*/test_*.py")):
        folder, name = path.parent.name, path.stem.removeprefix("test_")
        modules = {p.stem for p in (SRC / folder).glob("*.py")} if (SRC / folder).is_dir() else set()
        if not any(name == m or name.startswith(m + "_") for m in modules):
            misplaced.append(str(path.relative_to(TESTS)))
    assert not misplaced, f"no src/minigpt/<folder>/<file>.py for {misplaced}"


def test_no_test_file_is_nested_deeper_or_left_in_an_unknown_folder():
    assert not list(TESTS.glob("*/*/test_*.py"))
    folders = {p.parent.name for p in TESTS.glob("*/test_*.py")}
    assert folders <= {p.name for p in SRC.iterdir() if p.is_dir()}, folders
