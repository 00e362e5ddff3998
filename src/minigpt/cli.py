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
    from minigpt.model.export import export_command
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
        "export": export_command,
    }


def _underscore_options(argv: list[str]) -> list[str]:
    """Accept `--lora-rank 8` as well as `--lora_rank 8`: option names use underscores (the
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


def build_parser():
    """The `minigpt` argument parser with one subcommand per recipe."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="minigpt", description="Train a small GPT from raw text to a chat model.", env_prefix="MINIGPT", default_env=False)
    sub = parser.add_subcommands(dest="command")
    for name, fn in _commands().items():
        doc = inspect.getdoc(fn) or ""
        p = ArgumentParser(description=doc.split("\n\nArgs:")[0])
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
    from minigpt.train.loop import TrainingDivergedError, TrainingInterrupted

    parser = build_parser()
    argv = _underscore_options(list(sys.argv[1:] if argv is None else argv))
    cfg = parser.parse_args(argv)
    name = cfg.command
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
