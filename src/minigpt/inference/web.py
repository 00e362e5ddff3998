"""The chat page `minigpt serve` shows at `/`, and the Markdown rendering it asks the server for.

The page (`web/chat.html`, plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
streams replies from `/v1/chat/completions`, keeps the conversation for multi-turn chat, shows
a reasoning model's thinking in a collapsible box apart from the answer, and has fields for the
system prompt and the sampling settings. Replies are Markdown: the page posts the text to
`/render` while it streams (at most a few times a second) and once at the end, and shows the
HTML it gets back.

The server renders in a child process (`MarkdownWorker`): CommonMark parsing is pure Python
and some inputs (`"[" * 100000`) take seconds, which on a thread would hold the interpreter
lock and stall every other client; a child that runs past its time budget is killed.

Rendering is markdown-it-py (CommonMark, plus tables and strikethrough) with raw HTML
disabled, so model output cannot inject markup or scripts; markdown-it also refuses
`javascript:` and similar link targets. Fenced code blocks are highlighted by Pygments when
their language is known.
"""

from __future__ import annotations

import functools
import html
from importlib import resources


@functools.cache
def _markdown():
    from markdown_it import MarkdownIt

    def highlight(code: str, lang: str, attrs: str) -> str:
        from pygments import highlight as pyg_highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound

        try:
            lexer = get_lexer_by_name(lang) if lang else None
        except ClassNotFound:
            lexer = None
        if lexer is None:
            body = html.escape(code)
        else:
            body = pyg_highlight(code, lexer, HtmlFormatter(nowrap=True))
        label = f' data-lang="{html.escape(lang)}"' if lang else ""
        return f'<pre class="code"{label}><code>{body}</code></pre>\n'

    return MarkdownIt("commonmark", {"html": False, "highlight": highlight}).enable(["table", "strikethrough"])


def render_markdown(text: str) -> str:
    """HTML of Markdown `text` (CommonMark + tables + strikethrough, raw HTML escaped, code
    highlighted). Safe to insert into a page: no tag of the input survives as markup."""
    return _markdown().render(text)


@functools.cache
def chat_page() -> str:
    """The chat page's HTML, with Pygments' token colours inlined."""
    from pygments.formatters import HtmlFormatter

    page = resources.files("minigpt.inference").joinpath("web/chat.html").read_text(encoding="utf-8")
    return page.replace("/*PYGMENTS*/", HtmlFormatter(style="default").get_style_defs(".code"))


class MarkdownWorker:
    """`render_markdown` in a child Python process, one text at a time, with a hard time budget.

    The child runs this file as a script (it imports only the standard library, markdown-it
    and Pygments, never torch) and answers one JSON line per request. A render that takes
    longer than `seconds` kills the child; the next request starts a new one.

    Args:
        seconds: time budget of one render, in seconds.
    """

    def __init__(self, seconds: float = 2.0) -> None:
        self.seconds = float(seconds)
        self._proc = None
        self._lock = None

    async def render(self, text: str) -> str | None:
        """HTML of `text`, or None when rendering ran past the budget (or the child failed)."""
        import asyncio
        import json
        import sys

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", __file__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL, limit=64 * 2**20)
            proc = self._proc
            try:
                proc.stdin.write(json.dumps({"text": text}).encode() + b"\n")
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), self.seconds)
                return json.loads(line)["html"]
            except (asyncio.TimeoutError, OSError, ValueError, KeyError):
                await self._kill()
                return None

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        """Stop the child (if one runs)."""
        await self._kill()


def _serve_renders() -> None:
    """The child's loop: a JSON line `{"text"}` in, a JSON line `{"html"}` out, until EOF."""
    import json
    import sys

    for line in sys.stdin:
        sys.stdout.write(json.dumps({"html": render_markdown(json.loads(line)["text"])}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve_renders()


__all__ = ["MarkdownWorker", "chat_page", "render_markdown"]
