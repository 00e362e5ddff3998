"""The chat page `minigpt serve` shows at `/`, and the Markdown rendering it asks the server for.

The page (`web/chat.html`, plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
streams replies from `/v1/chat/completions`, keeps the conversation for multi-turn chat, shows
a reasoning model's thinking in a collapsible box apart from the answer, and has fields for the
system prompt and the sampling settings. Replies are Markdown: the page posts the text to
`/render` while it streams (at most a few times a second) and once at the end, and shows the
HTML it gets back.

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


__all__ = ["chat_page", "render_markdown"]
