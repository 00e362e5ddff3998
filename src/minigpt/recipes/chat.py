"""`minigpt chat`: talk to a chat model in the terminal, or script a conversation.

Three forms: `--prompt TEXT` answers once and exits; text piped on stdin is a scripted
conversation (one user turn per non-empty line, printed as a `user:` / `assistant:`
transcript); otherwise an interactive loop. In all three, lines starting with `/` are commands
(`/reset`, `/system TEXT`, `/exit`, `/help`) — except the `--prompt` text, which is sent as is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from minigpt.errors import UserError
from minigpt.inference.options import SamplingOptions

#: `minigpt chat`'s sampling defaults.
#: `max_new_tokens` 0 = the model's own reply budget (`generation_config.max_new_tokens`, which
#: `minigpt sft` sets from the replies it trained on), else 256.
CHAT_SAMPLING = SamplingOptions(max_new_tokens=0, temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.1)

HELP = """commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message (the conversation is kept)
  /system         remove the system message
  /exit           leave (also /quit, Ctrl-D; Ctrl-C stops a reply, or leaves at the prompt)
  /help           this list"""

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


class _ReplyPrinter:
    """Writes one streamed reply: thinking as a `[thinking] …` block (dim on a terminal),
    then the answer on its own line; whitespace around the tags is not printed."""

    def __init__(self, out: TextIO, hide_thinking: bool, color: bool) -> None:
        self.out, self.hide, self.color = out, hide_thinking, color
        self.kind: str | None = None  # kind of the last text written

    def part(self, kind: str, text: str) -> None:
        from minigpt.inference.chat import THINKING

        if kind == THINKING:
            if self.hide:
                return
            if self.kind != THINKING:
                text = text.lstrip()
                if not text:
                    return
                if self.kind is not None:
                    self._write("\n")
                self._write((_DIM if self.color else "") + "[thinking] ")
        elif self.kind != kind:
            text = text.lstrip()
            if not text:
                return
            if self.kind == THINKING:
                self._write((_RESET if self.color else "") + "\n")
        self._write(text)
        self.kind = kind

    def close(self) -> None:
        from minigpt.inference.chat import THINKING

        if self.kind == THINKING and self.color:
            self._write(_RESET)
        self._write("\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def run_chat(
    session,  # a minigpt.inference.chat.ChatSession
    lines: Iterable[str],
    out: TextIO | None = None,
    hide_thinking: bool = False,
    echo: bool = False,
    commands: bool = True,
    interactive: bool = False,
    skip_bad_lines: bool = False,
) -> list[dict[str, str]]:
    """Drive `session` with user lines: each non-empty line is a user turn or a command.

    Args:
        session: the conversation.
        lines: user input, one message per item (trailing newline ignored; blank items skipped).
        out: where replies and command feedback are written (default stdout).
        hide_thinking: do not print the `<think>` part of replies.
        echo: print `user: LINE` before each reply and prefix replies with `assistant: `
            (a transcript for piped input).
        commands: treat lines starting with `/` as commands (`HELP`).
        interactive: Ctrl-C during a reply stops that reply (it is not kept), and a message
            the model cannot take (`UserError`) is reported, instead of ending the chat.
        skip_bad_lines: a line the model cannot take (longer than the context, holding a
            control token) is skipped with a message on stderr naming its line number, and the
            script goes on (piped input); otherwise its `UserError` ends the chat.

    Returns:
        Every message of the session in order, across `/reset`: the system message whenever
        it is set, user messages, and assistant messages whose `content` is the answer and,
        when the model thought, `reasoning_content` the thinking.
    """
    out = out or sys.stdout
    color = bool(getattr(out, "isatty", lambda: False)())
    transcript: list[dict[str, str]] = []
    dropped = 0  # exchanges left out of the prompt so far (to report only new drops)
    if session.system is not None:
        transcript.append({"role": "system", "content": session.system})
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if commands and line.startswith("/"):
            name, _, arg = line.partition(" ")
            if name in ("/exit", "/quit"):
                break
            if name == "/reset":
                session.reset()
                dropped = 0
                out.write("(conversation cleared)\n")
            elif name == "/system":
                session.set_system(arg.strip() or None)
                if session.system is None:
                    out.write("(system message removed)\n")
                else:
                    transcript.append({"role": "system", "content": session.system})
                    out.write("(system message set)\n")
            elif name == "/help":
                out.write(HELP + "\n")
            else:
                out.write(f"unknown command {name}; /help lists the commands\n")
            out.flush()
            continue
        if echo:
            out.write(f"user: {line}\nassistant: ")
        printer = _ReplyPrinter(out, hide_thinking, color)
        try:
            reply = session.reply(line, on_part=printer.part)
        except KeyboardInterrupt:
            if not interactive:
                raise
            printer.close()
            out.write("(reply interrupted; not kept)\n")
            continue
        except UserError as err:  # e.g. a message longer than the context: say so, go on
            if not (interactive or skip_bad_lines):
                raise
            if interactive:
                out.write(f"error: {err}\n")
            else:
                out.write("(skipped)\n")
                print(f"minigpt chat: skipped line {number}: {err}", file=sys.stderr)
            continue
        printer.close()
        _notices(session, reply, dropped)
        dropped = reply.dropped_exchanges
        transcript.append({"role": "user", "content": line})
        message = {"role": "assistant", "content": reply.answer}
        if reply.thinking:
            message["reasoning_content"] = reply.thinking
        transcript.append(message)
    return transcript


def _notices(session, reply, dropped_before: int) -> None:
    """Tell the user (on stderr) when the context window cut the reply or the history."""
    if reply.finish_reason == "length" and reply.max_new_tokens < session.max_new_tokens:
        print(
            f"(reply cut at {reply.max_new_tokens} tokens: the {session.context_limit}-token context is full)",
            file=sys.stderr,
        )
    if reply.dropped_exchanges > dropped_before:
        print(
            f"(the oldest {reply.dropped_exchanges} exchange(s) no longer fit the "
            f"{session.context_limit}-token context and are left out of the prompt)",
            file=sys.stderr,
        )


def _input_lines(prompt: str = ">>> ") -> Iterator[str]:
    """Lines typed at the terminal until EOF (Ctrl-D) or Ctrl-C."""
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            print()
            return


def chat(
    model: str,
    prompt: str | None = None,
    system: str | None = None,
    sampling: SamplingOptions = CHAT_SAMPLING,
    dtype: str = "auto",
    hide_thinking: bool = False,
    seed: int | None = None,
    device: str = "auto",
    allow_base_mismatch: bool = False,
) -> list[dict[str, str]]:
    """Chat with a model: interactively, once with --prompt, or scripted from stdin.

    Replies stream as they are generated and stop at <|im_end|>. A reasoning model's
    <think> part is shown apart from the answer, and only the answer is kept in the history.
    The history is trimmed (oldest exchanges first, never the system message) to fit the
    model's context. Commands: /reset, /system TEXT, /system (remove it), /exit, /help.

    Args:
        model: model directory (e.g. the output of `minigpt sft`).
        prompt: answer this one message and exit. Without it, each non-empty line of stdin is a
            user turn when stdin is not a terminal; otherwise the chat is interactive.
        system: system message.
        sampling: how completions are sampled (`--sampling.max_new_tokens`, `.temperature`, `.top_k`,
            `.top_p`, `.repetition_penalty`; see `minigpt.inference.options.SamplingOptions`).
            `max_new_tokens` 0 (the default) takes the model's own reply length
            (`generation_config.max_new_tokens`, set by `minigpt sft` from the replies it
            trained on), else 256.
        dtype: decoding precision of the fast engine: auto (bf16 where it is the fast path,
            else fp32), fp32, bf16 or int8 (weight-only).
        hide_thinking: do not print the <think> part of replies.
        seed: random seed for sampling (reply n uses seed + n).
        device: auto, cpu, cuda or mps.
        allow_base_mismatch: load an adapter on its recorded base even when that base's
            weights are not the ones it was trained on.

    Returns:
        The transcript: every message in order (see `run_chat`).

    Raises:
        UserError: unknown dtype, a bad model directory, or a message that does not fit the
            model's context.
    """
    from minigpt.inference.chat import ChatSession, model_reply_budget
    from minigpt.inference.loading import ENGINE_DTYPES, load_model_and_tokenizer
    from minigpt.train.distributed import pick_precision

    if dtype not in ENGINE_DTYPES and dtype != "auto":
        raise UserError(f"dtype must be auto or one of {sorted(ENGINE_DTYPES)}, not {dtype!r}")
    from minigpt.errors import check_seed

    check_seed(seed)
    net, tok = load_model_and_tokenizer(model, device, allow_base_mismatch=allow_base_mismatch)
    if dtype == "auto":
        dtype = pick_precision("auto", net.device)
    session = ChatSession(
        net,
        tok,
        system=system,
        max_new_tokens=model_reply_budget(net, sampling.max_new_tokens, 256),
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=sampling.repetition_penalty,
        dtype=ENGINE_DTYPES[dtype],
        seed=seed,
    )
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt is empty")
        return run_chat(session, [prompt], hide_thinking=hide_thinking, commands=False)
    if not sys.stdin.isatty():
        return run_chat(session, sys.stdin, hide_thinking=hide_thinking, echo=True, skip_bad_lines=True)
    print(
        f"minigpt chat — {model} ({session.context_limit}-token context). "
        "Type a message; /help lists the commands, /exit leaves."
    )
    return run_chat(session, _input_lines(), hide_thinking=hide_thinking, interactive=True)
