"""Tests for the documentation Q&A conversations (`minigpt.data.docs_qa`), on hand-built
documents worked by hand and on the Python documentation corpus.
"""

from __future__ import annotations

import re

import pytest

from minigpt.data.corpus import python_docs_corpus
from minigpt.data.docs_qa import docs_conversations
from minigpt.errors import UserError


def _norm(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------- docs Q&A


HAND_DOCS = [
    "def pkg.mod.frob(x, y=1)\nReturn x frobnicated, e.g. frob(2).  It is fast.\n\n"
    ">>> frob(2)\n4",
    "def pkg._private(x)\nReturn something private and long enough to answer.",
    "class pkg.Widget(Base)\nA widget\nthat wraps long lines of text.\n\n"
    "Second paragraph is here. More text follows here.",
    'The "spam" statement\n********************\n\nNew in version 3.99.\n\n'
    'The "spam" statement prints spam:\n\n   spam_stmt ::= "spam" expression\n\n'
    "It never fails. Really.\n",
    "just some text without a heading. It has sentences.",
    "def pkg.g()\nTODO: write the docs for this function properly.",
    "def pkg.h()\nno sentence end here at all just words",
    "def pkg.copy_of_frob(x)\nReturn x frobnicated, e.g. frob(2).  It is fast.",
    "def pkg.args(a)\nArguments:\na -- a number\n\nMore prose after the list.",
]


def test_hand_built_documents():
    """Worked by hand with max_answer_chars=60: frob stops before the doctest and keeps "e.g."
    inside its sentence (35 + 2 + 11 = 48 chars); Widget's first answer is its re-flowed first
    paragraph (39 chars; the next sentence would end at 39 + 2 + 25 = 66 > 60) and its
    follow-up the next two sentences (ending at 90 <= 39 + 60). The topic skips its version note and keeps the grammar block
    after "spam:"; its first sentence end is at 33 + 2 + 34 + 2 + 15 = 86, so with 60 it is
    skipped and with 90 the answer stops after "fails." ("Really." ends at 94). Private, TODO,
    sentence-less, heading-less, duplicate and list-led documents are always skipped."""
    records = docs_conversations(docs=HAND_DOCS, multi_turn=1.0, system_prob=0.0,
                                 max_answer_chars=60, with_source=True)
    by_name = {r["source"]["name"]: r for r in records}
    assert set(by_name) == {"pkg.mod.frob", "pkg.Widget"}
    frob = by_name["pkg.mod.frob"]
    assert frob["source"]["doc"] == 0
    assert [m["role"] for m in frob["messages"]] == ["user", "assistant"]
    assert "`pkg.mod.frob`" in frob["messages"][0]["content"]
    assert frob["messages"][1]["content"] == "Return x frobnicated, e.g. frob(2).  It is fast."
    widget = by_name["pkg.Widget"]["messages"]
    assert [m["role"] for m in widget] == ["user", "assistant", "user", "assistant"]
    assert widget[1]["content"] == "A widget that wraps long lines of text."
    assert widget[3]["content"] == "Second paragraph is here. More text follows here."
    records = docs_conversations(docs=HAND_DOCS, system_prob=0.0, max_answer_chars=90,
                                 with_source=True)
    spam = next(r for r in records if r["source"]["name"] == 'The "spam" statement')["messages"]
    assert 'the "spam" statement' in spam[0]["content"]
    assert spam[1]["content"] == (
        'The "spam" statement prints spam:\n\n   spam_stmt ::= "spam" expression\n\nIt never fails.'
    )


def test_docs_conversation_arguments():
    assert docs_conversations(2, seed=0, docs=HAND_DOCS) == docs_conversations(2, seed=0, docs=HAND_DOCS)
    with pytest.raises(UserError, match="give only 3"):
        docs_conversations(4, docs=HAND_DOCS)
    with pytest.raises(UserError, match="multi_turn"):
        docs_conversations(docs=HAND_DOCS, multi_turn=1.5)
    with pytest.raises(UserError, match="max_answer_chars"):
        docs_conversations(docs=HAND_DOCS, max_answer_chars=10)


@pytest.fixture(scope="module")
def corpus_prefix() -> list[str]:
    # The pydoc topics plus the first stdlib modules: both document kinds, parsed in ~1 s.
    return python_docs_corpus(max_chars=1_200_000)


def test_corpus_answers_are_verbatim_and_name_the_asked_thing(corpus_prefix):
    """Each answer, whitespace-normalised, occurs in its source document; the asked name occurs
    in that document and in the question; a follow-up answer continues after the first."""
    records = docs_conversations(docs=corpus_prefix, seed=0, with_source=True)
    assert len(records) > 800
    normalized = {}
    kinds = set()
    for record in records:
        src = record["source"]
        doc = corpus_prefix[src["doc"]]
        norm_doc = normalized.setdefault(src["doc"], _norm(doc))
        assert src["name"] in doc
        kinds.add(doc.split(" ", 1)[0] if doc.startswith(("def ", "class ", "module ")) else "topic")
        messages = [m for m in record["messages"] if m["role"] != "system"]
        assert [m["role"] for m in messages] in (["user", "assistant"], ["user", "assistant"] * 2)
        assert src["name"].lower() in messages[0]["content"].lower()
        position = 0
        for answer in (m["content"] for m in messages if m["role"] == "assistant"):
            assert 30 <= len(answer) <= 400 and answer == answer.strip()
            assert re.search(r"[.!?][\"')\]]*$", answer), answer
            found = norm_doc.find(_norm(answer), position)
            assert found >= position, (answer, doc[:300])
            position = found + len(_norm(answer))
    assert kinds == {"def", "class", "module", "topic"}


def test_corpus_conversations_vary_by_seed(corpus_prefix):
    a = docs_conversations(300, seed=0, docs=corpus_prefix)
    b = docs_conversations(300, seed=1, docs=corpus_prefix)
    assert a == docs_conversations(300, seed=0, docs=corpus_prefix)
    assert a != b
    lengths = [len(r["messages"]) for r in a]
    assert any(n >= 4 for n in lengths)  # multi-turn exercised
    assert any(r["messages"][0]["role"] == "system" for r in a)
    questions = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in a]
    templates = {re.sub(r"`[^`]+`", "N", q) for q in questions}
    assert len(templates) >= 8


def test_held_out_questions_never_share_a_document_with_the_training_conversations(corpus_prefix):
    """`docs_conversations(k)` is the prefix of the full seeded order, and `docs_questions(n,
    skip=k)` continues after it: no asked name is in both; each reference answer is the first
    answer of its document's conversation."""
    from minigpt.data.docs_qa import docs_questions

    train = docs_conversations(200, seed=3, docs=corpus_prefix, with_source=True)
    full = docs_conversations(None, seed=3, docs=corpus_prefix, with_source=True)
    assert full[:200] == train
    held = docs_questions(50, seed=3, skip=200, docs=corpus_prefix)
    assert len(held) == 50 and not {q["name"] for q in held} & {r["source"]["name"] for r in train}
    for q, record in zip(held, full[200:250]):
        turns = [m["content"] for m in record["messages"] if m["role"] != "system"]
        assert (q["question"], q["answer"], q["name"]) == (turns[0], turns[1], record["source"]["name"])
    with pytest.raises(UserError, match="after the first"):
        docs_questions(len(full), seed=3, skip=1, docs=corpus_prefix)
