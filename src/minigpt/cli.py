"""`minigpt <command>`: one CLI over every recipe, built from typed signatures by jsonargparse.

Each command is a plain function whose parameters (and dataclass fields, with their docstrings)
become options: `minigpt pretrain --config configs/pretrain/tiny.yaml --train.lr 1e-3`.
YAML presets load with `--config`; any field can be overridden with a dotted option after it.
User errors (`minigpt.errors.UserError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import inspect
import os
import shlex
import sys
from typing import Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def _commands() -> dict[str, Callable]:
    from minigpt.recipes.export import export_command
    from minigpt.recipes.chat import chat
    from minigpt.recipes.distill import distill
    from minigpt.recipes.dpo import dpo
    from minigpt.recipes.generate import generate
    from minigpt.recipes.grpo import grpo
    from minigpt.recipes.gym import gym
    from minigpt.recipes.merge import merge
    from minigpt.recipes.contrastive import contrastive
    from minigpt.recipes.embed import embed
    from minigpt.recipes.eval import evaluate
    from minigpt.recipes.mlm import mlm
    from minigpt.recipes.ppo import ppo
    from minigpt.recipes.pretrain import pretrain
    from minigpt.recipes.quickstart import quickstart
    from minigpt.recipes.report import report
    from minigpt.recipes.reward import reward, score
    from minigpt.recipes.serve import serve
    from minigpt.recipes.sft import sft
    from minigpt.recipes.pipeline import pipeline_command
    from minigpt.recipes.tokenizer import tokenizer_command

    return {
        "quickstart": quickstart,
        "tokenizer": tokenizer_command,
        "pretrain": pretrain,
        "mlm": mlm,
        "contrastive": contrastive,
        "embed": embed,
        "sft": sft,
        "distill": distill,
        "dpo": dpo,
        "reward": reward,
        "score": score,
        "grpo": grpo,
        "ppo": ppo,
        "pipeline": pipeline_command,
        "gym": gym,
        "merge": merge,
        "generate": generate,
        "chat": chat,
        "serve": serve,
        "eval": evaluate,
        "report": report,
        "export": export_command,
    }


#: Commands that print the thread count they use when they start (the others keep their
#: output clean: `generate` prints only the text).
_ANNOUNCE_THREADS = frozenset({"quickstart", "pretrain", "mlm", "contrastive", "sft", "distill", "dpo", "reward",
                               "grpo", "ppo", "pipeline", "gym", "serve"})


def pop_threads(argv: list[str]) -> tuple[list[str], str]:
    """`(argv without --threads, its value)`; the value is "auto" when absent (or the
    MINIGPT_THREADS environment variable)."""
    out, value, i = [], os.environ.get("MINIGPT_THREADS", "auto"), 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg == "--threads" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--threads="):
            value, i = arg.split("=", 1)[1], i + 1
            continue
        out.append(arg)
        i += 1
    return out, value


def _underscore_options(argv: list[str]) -> list[str]:
    """Accept `--max-length 8` as well as `--max_length 8`: option names use underscores (the
    Python parameter names), and many users type dashes. Values are never touched."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and arg[2:3].isalpha():
            name, eq, value = arg.partition("=")
            arg = "--" + name[2:].replace("-", "_") + eq + value
        out.append(arg)
    return out


def build_parser(command: str | None = None):
    """The `minigpt` argument parser with one subcommand per recipe.

    Only `command`'s options are built from its signature (the slow part: types, dataclasses
    and docstrings); the other subcommands get a name and a description, enough for
    `minigpt --help`. None builds every subcommand's options."""
    from jsonargparse import ActionConfigFile, ActionYesNo, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    ArgumentParser = _parser_class()
    parser = ArgumentParser(prog="minigpt", description="Train a small GPT from raw text to a chat model. Every command also "
                            "takes --threads N|auto: torch's CPU threads (auto: 1 for decoding commands, else the idle cores).",
                            env_prefix="MINIGPT", default_env=False)
    sub = parser.add_subcommands(dest="command")
    for name, fn in _commands().items():
        doc = inspect.getdoc(fn) or ""
        p = ArgumentParser(prog=f"minigpt {name}", description=doc.split("\n\nArgs:")[0])
        if command is not None and name != command:
            sub.add_subcommand(name, p, help=doc.split("\n")[0])
            continue
        p.add_argument("--config", action=ActionConfigFile, help="YAML file of option values (later options override it).")
        params = inspect.signature(fn).parameters
        # Plain booleans read better as switches (--resume / --no_resume) than `--resume true`.
        flags = [n for n, prm in params.items() if prm.annotation in (bool, "bool")]
        # `cli_positional` on a command makes its required parameters positional (`minigpt pipeline CONFIG.json`).
        p.add_function_arguments(fn, skip=set(flags), as_group=False, as_positional=getattr(fn, "cli_positional", False))
        arg_help = _arg_help(doc)
        for f in flags:
            p.add_argument(f"--{f}", action=ActionYesNo, default=params[f].default, help=arg_help.get(f, ""))
        sub.add_subcommand(name, p, help=doc.split("\n")[0])
    return parser


class CommandLineError(Exception):
    """The options did not parse; `parser` is the (sub)command's parser, for suggestions."""

    def __init__(self, message: str, parser) -> None:
        super().__init__(message)
        self.parser = parser


def _parser_class():
    """jsonargparse's `ArgumentParser` whose errors raise `CommandLineError` instead of printing
    the whole usage (50 lines for some commands) and exiting: `_main` prints one line."""
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise CommandLineError(message, getattr(ex, "subcommand_parser", None) or self)

    return Parser


BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
"""The values a boolean option takes (any case)."""


def _option_kinds(parser) -> tuple[set[str], set[str], list[str]]:
    """`(switches, typed_booleans, every_option)` of a subcommand parser: options that are
    `--x / --no_x` switches, options whose type is bool or bool | None, and all option strings."""
    import argparse

    switches, typed, every = set(), set(), []
    for action in parser._actions:
        every += [o for o in action.option_strings if o.startswith("--") and not o.endswith("+")]
        if type(action).__name__ == "ActionYesNo":
            switches.add(action.option_strings[0])
        elif getattr(action, "_typehint", None) in (bool, bool | None) and not isinstance(action, argparse._HelpAction):
            typed.update(action.option_strings)
    return switches, typed, every


def normalize_booleans(argv: list[str], switches: set[str], typed: set[str]) -> list[str]:
    """One spelling for every boolean option: `--x`, `--x true|false` and `--x=false` all work,
    whether `--x` is a switch (`--packing`, which also has `--no_packing`) or a typed field
    (`--train.fsdp`). Switches are rewritten to `--x` / `--no_x`; a typed field given alone
    gets `true`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        following = argv[i + 1] if i + 1 < len(argv) else None
        if name in switches:
            word = value if eq else (following if following is not None and following.lower() in BOOL_WORDS else None)
            if word is not None and word.lower() in BOOL_WORDS:
                out.append(name if BOOL_WORDS[word.lower()] else "--no_" + name[2:])
                i += 1 if eq else 2
                continue
        elif name in typed and not eq and (following is None or following.startswith("--")):
            out += [arg, "true"]
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


_TYPE_WORDS = {"dict": "a JSON object such as '{\"key\": 1}'", "list": "a JSON list such as '[0, 3]'",
               "NoneType": "null", "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def parser_for(argv: list[str]):
    """`(parser, argv)`: the parser with the options of `argv`'s command built (none when
    `argv[0]` is not a command), and `argv` with its boolean options in one spelling
    (`normalize_booleans`), ready for `parser.parse_args`."""
    command = argv[0] if argv and argv[0] in _commands() else ""
    parser = build_parser(command)
    if command:
        switches, typed, _ = _option_kinds(parser._subcommands_action._name_parser_map[command])
        argv = [command] + normalize_booleans(argv[1:], switches, typed)
    return parser, argv


def describe_parse_error(message: str, parser, commands, command: str = "") -> str:
    """One line for a jsonargparse error: an unknown option with the closest known ones, an
    unknown command with the closest command, or a value that does not parse with the option
    named and the expected type."""
    import difflib
    import re

    first = message.strip().splitlines()[0] if message.strip() else "bad arguments"
    see = f" (see minigpt {command} --help)" if command else " (see minigpt --help)"
    unknown = re.match(r"unrecognized arguments: (.*)", first, re.IGNORECASE)
    if unknown:
        _, _, every = _option_kinds(parser)
        given = [t for t in unknown.group(1).split() if t.startswith("--")]
        if given:
            parts = []
            for opt in given:
                close = difflib.get_close_matches(opt.split("=")[0], every, n=2, cutoff=0.6)
                parts.append(f"unknown option {opt.split('=')[0]}" + (f"; did you mean {' or '.join(close)}?" if close else ""))
            return "; ".join(parts) + see
        return f"unexpected argument {unknown.group(1)!r}" + see
    choice = re.search(r"invalid choice: '([^']*)'", first)
    if choice and "command" in first:
        close = difflib.get_close_matches(choice.group(1), list(commands), n=1, cutoff=0.5)
        return f"unknown command {choice.group(1)!r}" + (f"; did you mean {close[0]}?" if close else "") + " (see minigpt --help)"
    key = re.match(r'Parser key "([^"]+)":', first)
    if key:
        body = message.strip()
        subtypes = re.search(r"Subtypes: \[(.*)\]\s*$", body, re.MULTILINE)
        got = re.search(r"Given value: (.*)|Got value: (.*)", body)
        value = next((g for g in (got.groups() if got else ()) if g), None)
        if subtypes:
            names = [re.sub(r"<class '([^']+)'>", r"\1", t).strip() for t in re.split(r",\s*(?![^\[]*\])", subtypes.group(1))]
            expected = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
        else:
            kind = re.search(r"Expected a <class '(\w+)'>", body)
            expected = _TYPE_WORDS.get(kind.group(1), kind.group(1)) if kind else None
        if expected:
            return f"--{key.group(1)}: expected {expected}" + (f", got {value.strip()}" if value else "") + see
        detail = " ".join(line.strip() for line in body.splitlines()[1:3])
        return f"--{key.group(1)}: {detail[:300]}" + see
    return " ".join(line.strip() for line in message.strip().splitlines())[:400]


def _arg_help(doc: str) -> dict[str, str]:
    """Map parameter name -> its line in a Google-style `Args:` section."""
    out, current = {}, None
    for line in doc.split("Args:", 1)[-1].splitlines():
        stripped = line.strip()
        if not stripped or stripped.endswith(":") and " " not in stripped:
            continue
        head, _, rest = stripped.partition(":")
        if rest and " " not in head:
            current = head
            out[current] = rest.strip()
        elif current:
            out[current] += " " + stripped
    return out


class Terminated(BaseException):
    """SIGTERM arrived outside the training loop (whose own handler saves a checkpoint first).

    Raised from the signal handler `main` installs, so that `finally` blocks still run: run
    directory locks are released and staging folders removed, as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minigpt` console script; returns the exit status.

    0 on success; 2 for a user error (one line on stderr); 3 when training diverged; 130
    after Ctrl-C and 143 after SIGTERM (a run in its training loop saves a checkpoint first
    and prints the command that resumes it)."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("minigpt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("minigpt: terminated", file=sys.stderr)
        return 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)  # a caller's (e.g. a test runner's) handler comes back


def _main(argv: list[str] | None) -> int:
    from minigpt.errors import UserError
    from minigpt.train.errors import TrainingDivergedError, TrainingInterrupted

    argv, threads = pop_threads(_underscore_options(list(sys.argv[1:] if argv is None else argv)))
    commands = _commands()
    command = argv[0] if argv and argv[0] in commands else ""
    parser, argv = parser_for(argv)
    try:
        cfg = parser.parse_args(argv)
    except CommandLineError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank speaks
            print(f"minigpt{' ' + command if command else ''}: error: {describe_parse_error(str(e), e.parser, commands, command)}",
                  file=sys.stderr)
        return 2
    name = cfg.command
    from minigpt.train.threads import pick_threads, set_threads

    try:
        n_threads, why = pick_threads(name, threads)
    except UserError as e:
        print(f"minigpt {name}: error: {e}", file=sys.stderr)
        return 2
    try:
        init = parser.instantiate(cfg)  # builds the config dataclasses, which validate themselves
    except UserError as e:
        print(f"minigpt {name}: error: {e}", file=sys.stderr)
        return 2
    kwargs = {k: v for k, v in dict(init[name]).items() if k != "config"}
    import minigpt  # noqa: F401 — registers the model with transformers' Auto classes
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from minigpt.train.rundir import release_all_locks

    restore_threads = set_threads(n_threads)
    if name in _ANNOUNCE_THREADS and os.environ.get("RANK", "0") == "0":
        print(f"minigpt {name}: {n_threads} CPU thread{'s' if n_threads > 1 else ''} ({why}; --threads N to choose)", flush=True)
    try:
        _commands()[name](**kwargs)
    except UserError as e:
        print(f"minigpt {name}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        print(f"minigpt {name}: training diverged: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        print(f"minigpt {name}: interrupted by {e}", file=sys.stderr)
        if "resume" in inspect.signature(_commands()[name]).parameters:
            print(f"resume with: minigpt {shlex.join(_resume_argv(argv))}", file=sys.stderr)
        return 128 + e.signum
    except (KeyboardInterrupt, Terminated) as e:
        how, code = ("interrupted", 130) if isinstance(e, KeyboardInterrupt) else ("terminated by SIGTERM", 143)
        trains = "resume" in inspect.signature(_commands()[name]).parameters
        print(f"minigpt {name}: {how}" + (" outside the training loop" if trains else ""), file=sys.stderr)
        if trains:
            print(f"continue with: minigpt {shlex.join(_resume_argv(argv))}", file=sys.stderr)
        return code
    except Exception as e:
        from minigpt.errors import DiskFullError, first_line, is_disk_full, is_unwritable, unwritable_message

        if is_unwritable(e):  # a read-only mount or a folder without permission, found mid-way
            print(f"minigpt {name}: error: {unwritable_message(e)}", file=sys.stderr)
            return 2
        if not is_disk_full(e):
            raise
        what = (e.strerror or str(e)) if isinstance(e, DiskFullError) else f"no space left on device ({first_line(e, 300)})"
        print(f"minigpt {name}: error: {what}", file=sys.stderr)
        if "resume" in inspect.signature(_commands()[name]).parameters:
            print(f"once there is space, resume with: minigpt {shlex.join(_resume_argv(argv))}", file=sys.stderr)
        return 2
    finally:
        release_all_locks()  # the command is over: its run directories are free again
        restore_threads()
    return 0


def _resume_argv(argv: list[str]) -> list[str]:
    """`argv` of an interrupted command made to continue it: `--overwrite` (in any of its
    spellings) dropped, since it would discard the run, and `--resume` added once."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--overwrite" or arg.startswith("--overwrite="):
            # A following true/false belongs to it (`--overwrite true`).
            skip = arg == "--overwrite" and i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false")
            continue
        if arg == "--resume" or arg.startswith("--resume="):
            skip = arg == "--resume" and i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false")
            continue
        out.append(arg)
    return out + ["--resume"]


if __name__ == "__main__":
    sys.exit(main())
