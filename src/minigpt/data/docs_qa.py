"""Documentation question answering generated on the spot: questions about the standard library
and the language reference, answered with the opening sentences of the matching document of
the embedded CPython documentation corpus (:mod:`minigpt.data.corpus`). Every answer is a
verbatim stretch of its document (only line breaks inside prose paragraphs are re-flowed), cut
at a sentence end. Records are ``{"messages": [...]}`` conversations (an optional system
message first), as the SFT loader reads them; deterministic by seed, no download, no torch.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from minigpt.errors import UserError, check_count, check_probability

__all__ = ["docs_conversations", "docs_questions"]

_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant that answers questions about Python.",
    "You are a concise Python expert. Answer briefly.",
)

# {name} is the dotted name (functions, classes, modules) or the topic title (reference topics).
_QUESTIONS = {
    "def": (
        "What does `{name}` do?",
        "What is `{name}` used for?",
        "Explain `{name}`.",
        "Can you describe what `{name}` does?",
        "In Python, what does `{name}` do?",
        "Briefly, what is the purpose of `{name}`?",
    ),
    "class": (
        "What is the `{name}` class?",
        "What does the class `{name}` represent?",
        "Explain the `{name}` class.",
        "What is `{name}` in Python?",
        "Describe the class `{name}`.",
    ),
    "module": (
        "What is the `{name}` module for?",
        "Describe the `{name}` module.",
        "What does the Python module `{name}` provide?",
        "Tell me about the `{name}` module.",
        "What is `{name}` in the standard library?",
    ),
    "topic": (
        "Explain {name}.",
        "Tell me about {name} in Python.",
        "Can you describe {name}?",
        "Give me an overview of {name}.",
        "What does the Python reference say about {name}?",
    ),
}

_FOLLOW_UPS = (
    "Tell me more.",
    "Can you go on?",
    "What else should I know about it?",
    "Go on, please.",
    "Anything else about `{name}`?",
)

# A docstring heading line written by minigpt.data.corpus: "module a.b", "class a.B(Base)",
# "def a.B.f(self, x)", "async def a.f()".
_HEADING_RE = re.compile(r"(module|class|def|async def) ([A-Za-z_][\w.]*)")
_UNDERLINE_RE = re.compile(r"[=\-*~^\"'`#+]{3,}")
# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before whitespace
# or the end of the paragraph.
_SENTENCE_END_RE = re.compile(r"(?<!\.)[.!?][\"')\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset(
    {"e.g.", "i.e.", "etc.", "cf.", "vs.", "al.", "approx.", "no.", "mr.", "dr.", "st.", "resp.",
     "incl.", "ca.", "viz.", "fig.", "sec.", "ch.", "vol.", "ed."}
)
_NOTE_PREFIXES = ("New in version", "Changed in version", "Deprecated since", "Added in version",
                  "Availability:")
_LIST_START_RE = re.compile(r"([-*+|#]|\d+[.)]|\.\.|:\w|>>>|\[\d)")
_SIGNATURE_RE = re.compile(r"[\w.]+\(.*\)(\s*->.*)?$")
_GARBAGE_RE = re.compile(r"\b(XXX|TODO|FIXME)\b")
_MIN_ANSWER_CHARS = 30


@dataclass(frozen=True)
class _DocItem:
    """One answerable document: what is asked about and the cut points of its answer text."""

    doc_index: int  # index into the documents list
    kind: str  # "def" | "class" | "module" | "topic"
    name: str  # dotted name or topic title, verbatim from the document
    text: str  # answer text: prose re-flowed, short code blocks verbatim
    cuts: tuple[int, ...]  # offsets in `text` just after each usable sentence end, ascending


def _normalize_ws(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return " ".join(text.split())


def _is_heading(lines: list[str]) -> bool:
    return len(lines) == 2 and bool(_UNDERLINE_RE.fullmatch(lines[1].strip()))


def _classify(block: str) -> str:
    """``"prose"``, ``"code"``, ``"heading"``, ``"note"`` or ``"other"`` for one paragraph."""
    lines = block.split("\n")
    if _is_heading(lines):
        return "heading"
    if all(line.startswith((" ", "\t")) for line in lines):
        return "code"
    first = lines[0]
    if first.startswith(_NOTE_PREFIXES):
        return "note"
    if (
        _LIST_START_RE.match(first)
        or _SIGNATURE_RE.match(first)
        or any(line.startswith((" ", "\t")) or line.lstrip().startswith(">>>") for line in lines)
        or (len(lines) > 1 and first.rstrip().endswith(":"))
        or any(" -- " in line for line in lines)
    ):
        # Lists, field lists ("Arguments:\nx -- a number"), doctests, signatures: re-flowing
        # them into one line would garble them.
        return "other"
    letters = sum(ch.isalpha() or ch == " " for ch in block)
    return "prose" if letters >= 0.6 * len(block) else "other"


def _sentence_ends(paragraph: str) -> list[int]:
    """Offsets just after each sentence end in a re-flowed prose paragraph.

    A full stop is not an end after a known abbreviation (``e.g.``) or a single-letter initial,
    or when the next word starts with a lower-case letter (``os.path. join``, ``e.g. foo``).
    """
    ends = []
    for m in _SENTENCE_END_RE.finditer(paragraph):
        end = m.end()
        word = paragraph[: m.start() + 1].rsplit(" ", 1)[-1].lstrip("(\"'`[").lower()
        if word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", word):
            continue
        rest = paragraph[end:].lstrip()
        if rest and rest[0].islower():
            continue
        ends.append(end)
    return ends


def _answer_text(body: str, max_code_chars: int = 300) -> tuple[str, tuple[int, ...]]:
    """The answerable opening of a document body and its sentence-end cut points.

    Leading headings, version notes, code and signature lines are skipped (at most 4 blocks);
    then consecutive prose paragraphs are taken, re-flowed to one line each. A code block is
    kept only right after a paragraph ending in ``:`` and if short; anything else stops the run.
    Cut points are only ever placed in prose, so an answer never ends inside code.
    """
    blocks = [b.strip("\n") for b in re.split(r"\n[ \t]*\n", body)]
    blocks = [b.rstrip() for b in blocks if b.strip()]
    i = 0
    while i < len(blocks) and i < 4 and _classify(blocks[i]) != "prose":
        i += 1
    parts: list[str] = []
    cuts: list[int] = []
    offset = 0
    for block in blocks[i:]:
        kind = _classify(block)
        if kind == "prose":
            text = " ".join(line.strip() for line in block.split("\n"))
            ends = _sentence_ends(text)
        elif kind == "code" and parts and parts[-1].endswith(":") and len(block) <= max_code_chars:
            text, ends = block, []
        else:
            break
        if parts:
            offset += 2  # the "\n\n" joining blocks
        cuts.extend(offset + e for e in ends)
        parts.append(text)
        offset += len(text)
    return "\n\n".join(parts), tuple(cuts)


def _parse_doc(doc: str) -> tuple[str, str, str] | None:
    """``(kind, name, body)`` of a corpus document, or None if it is not one we can ask about."""
    first, _, rest = doc.partition("\n")
    m = _HEADING_RE.match(first)
    if m:
        kind = "def" if m.group(1).endswith("def") else m.group(1)
        name = m.group(2)
        # Private names (any dotted part starting with "_", dunders included) are
        # implementation detail, not something a user asks about.
        if any(part.startswith("_") for part in name.split(".")):
            return None
        return kind, name, rest
    # A pydoc topic: a title line underlined with "*".
    second, _, body = rest.partition("\n")
    if first.strip() and second and set(second.strip()) == {"*"}:
        return "topic", first.strip(), body
    return None


def _doc_item(index: int, doc: str, max_chars: int) -> _DocItem | None:
    parsed = _parse_doc(doc)
    if parsed is None:
        return None
    kind, name, body = parsed
    text, cuts = _answer_text(body)
    first = [c for c in cuts if c <= max_chars]
    if not first:
        return None
    answer = text[: first[-1]]
    if len(answer) < _MIN_ANSWER_CHARS or len(answer.split()) < 5 or _GARBAGE_RE.search(answer):
        return None
    return _DocItem(index, kind, name, text, cuts)


@functools.lru_cache(maxsize=4)
def _doc_items(docs: tuple[str, ...], max_chars: int) -> tuple[_DocItem, ...]:
    items = []
    seen_answers: set[str] = set()
    for index, doc in enumerate(docs):
        item = _doc_item(index, doc, max_chars)
        if item is None:
            continue
        # Inherited/duplicated docstrings ("Return self==value.") would teach one answer for
        # many names; keep the first.
        key = item.text[: max(c for c in item.cuts if c <= max_chars)]
        if key in seen_answers:
            continue
        seen_answers.add(key)
        items.append(item)
    return tuple(items)


def _topic_display(title: str) -> str:
    """Title as it reads mid-sentence: ``The "if" statement`` -> ``the "if" statement``."""
    words = title.split()
    if words[0] == "The" or all(not w[:1].isupper() for w in words[1:]):
        return title[0].lower() + title[1:] if title[1:2].islower() else title
    return title


def docs_conversations(
    n: int | None = None,
    seed: int = 0,
    docs: Sequence[str] | None = None,
    *,
    multi_turn: float = 0.25,
    system_prob: float = 0.15,
    max_answer_chars: int = 400,
    with_source: bool = False,
) -> list[dict]:
    """Question/answer conversations about Python, derived from the embedded docs corpus.

    Each usable document gives one conversation: a templated question naming the function,
    class, module (``What does `json.dumps` do?``) or reference topic (``Explain the "with"
    statement.``), answered with the document's opening sentences: a verbatim stretch of the
    docstring/topic (prose line breaks re-flowed) cut at the last sentence end within
    ``max_answer_chars``. Documents that give no such answer (private names, no full sentence,
    doctest-only, duplicates, TODO notes) are skipped. A ``multi_turn`` share of the documents
    that have more text get a second exchange ("Tell me more.") answered with the next stretch,
    and a ``system_prob`` share start with a system message.

    On CPython 3.11 the full corpus yields about 4,000 conversations; building them takes well
    under a second once the corpus is parsed (the first call parses it: a few seconds).

    Args:
        n: number of conversations, a random sample without repetition; None returns all.
        seed: seeds the order, the sample, the templates and the multi-turn/system choices.
        docs: documents in the :func:`~minigpt.data.corpus.python_docs_corpus` format (a
            ``module``/``class``/``def`` heading line then the docstring, or a pydoc topic with
            its ``***``-underlined title); None uses that corpus. Other documents are ignored.
        multi_turn: probability in [0, 1] that a document with enough text gets 2 exchanges.
        system_prob: probability in [0, 1] of a leading system message.
        max_answer_chars: longest answer (characters) per assistant turn, ≥ 40.
        with_source: also put ``"source": {"doc": index into docs, "name": asked name}`` in each
            record (for tests and inspection; SFT loaders read only ``messages``).

    Returns:
        A new list of ``{"messages": [...]}`` dicts, in a seeded random order.

    Raises:
        UserError: ``n`` is negative or more than the documents give; a bad probability or
            ``max_answer_chars``.
    """
    multi_turn = check_probability(multi_turn, "multi_turn")
    system_prob = check_probability(system_prob, "system_prob")
    if isinstance(max_answer_chars, bool) or not isinstance(max_answer_chars, int) or max_answer_chars < 40:
        raise UserError(f"max_answer_chars: must be an integer >= 40, got {max_answer_chars!r}")
    if docs is None:
        from minigpt.data.corpus import python_docs_corpus

        docs = python_docs_corpus()
    items = list(_doc_items(tuple(docs), max_answer_chars))
    if n is not None:
        check_count(n)
        if n > len(items):
            raise UserError(
                f"n: asked for {n} documentation conversations, but the {len(docs)} documents "
                f"give only {len(items)}"
            )
    rng = random.Random(seed)
    rng.shuffle(items)
    if n is not None:
        items = items[:n]
    records = []
    for item in items:
        display = _topic_display(item.name) if item.kind == "topic" else item.name
        question = rng.choice(_QUESTIONS[item.kind]).format(name=display)
        end1 = max(c for c in item.cuts if c <= max_answer_chars)
        messages = []
        if rng.random() < system_prob:
            messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": item.text[:end1].strip()})
        # A second exchange continues the same document where the first answer stopped.
        later = [c for c in item.cuts if end1 < c <= end1 + max_answer_chars]
        want_more = rng.random() < multi_turn
        if want_more and later and len(item.text[end1 : later[-1]].strip()) >= _MIN_ANSWER_CHARS:
            follow = rng.choice(_FOLLOW_UPS)
            if "{name}" in follow and item.kind == "topic":
                follow = "What else should I know about it?"
            messages.append({"role": "user", "content": follow.format(name=display)})
            messages.append({"role": "assistant", "content": item.text[end1 : later[-1]].strip()})
        record: dict = {"messages": messages}
        if with_source:
            record["source"] = {"doc": item.doc_index, "name": item.name}
        records.append(record)
    return records


def docs_questions(n: int | None, seed: int = 0, skip: int = 0, docs: Sequence[str] | None = None, max_answer_chars: int = 400) -> list[dict]:
    """Single-turn documentation questions with their reference answers, for evaluation:
    `{"question", "answer", "name"}` (`name`: the function, class, module or topic asked
    about), from the conversations `docs_conversations(seed=seed, docs=docs)` gives after its
    first `skip`: `docs_conversations(skip, seed)` (what SFT trains on) and these never share a
    document. Each is the first question and answer of its conversation (no system message).
    `n=None`: all of them.

    Raises:
        UserError: `n` or `skip` negative, or more than the documents give.
    """
    check_count(skip, "skip")
    records = docs_conversations(None, seed=seed, docs=docs, max_answer_chars=max_answer_chars, with_source=True)
    n = len(records) - skip if n is None else check_count(n)
    if n < 0 or skip + n > len(records):
        raise UserError(f"n: asked for {n} documentation questions after the first {skip}, but the documents give only {len(records)}")
    out = []
    for record in records[skip : skip + n]:
        turns = [m for m in record["messages"] if m["role"] != "system"]
        out.append({"question": turns[0]["content"], "answer": turns[1]["content"], "name": record["source"]["name"]})
    return out
