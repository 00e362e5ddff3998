"""Every `minigpt` command in README.md's command blocks parses with today's options: a renamed
or removed option, or a value that no longer parses, fails here before a reader meets it.
(Parsing only: running each command on tiny data is not done here yet.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The `minigpt ...` command lines of README.md's fenced bash blocks, continuation lines
    joined and comments dropped; lines written as a pattern (`a|b`, `[optional]`, `…`) are
    left out, being no command anyone runs as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("  #")[0].strip()
            if "minigpt" not in line:
                continue
            line = line.split("&&")[-1].split("|")[-1].strip() if "echo" in line or "&&" in line else line
            if not line.startswith("minigpt ") or any(mark in line for mark in ("…", "[", "|")):
                continue
            commands.append(line)
    return commands


def test_the_readme_has_commands_to_check():
    assert len(readme_commands()) >= 20


@pytest.mark.parametrize("line", readme_commands())
def test_a_readme_command_parses(line, monkeypatch):
    from minigpt.cli import CommandLineError, _commands, _underscore_options, parser_for, pop_threads

    monkeypatch.chdir(ROOT)  # --config paths are relative to the repository
    argv, _ = pop_threads(_underscore_options(shlex.split(line)[1:]))
    command = argv[0]
    assert command in _commands(), f"README: unknown command {command!r} in {line!r}"
    parser, argv = parser_for(argv)
    try:
        parser.parse_args(argv)
    except CommandLineError as e:
        pytest.fail(f"README command does not parse: {line!r}: {e}")
