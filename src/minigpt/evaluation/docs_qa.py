"""How well a chat model answers questions about the documentation it was trained on.

Two scores over held-out questions (`minigpt.data.docs_qa.docs_questions`), from greedy
replies:

* **ROUGE-L** (Lin 2004): the F-measure of the longest common subsequence of words between the
  reply and the reference answer (the opening sentences of the asked document), by
  rouge-score, averaged over questions (0–1).
* **Name match**: the share of replies that describe the asked function, class, module or
  topic and no other: the reply, used as a BM25 query (Robertson & Zaragoza 2009, by
  rank-bm25) over the reference answers of every documentation question, finds the asked
  one's answer first. A reply that copies another function's docstring scores ROUGE-L above
  zero but fails this.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from minigpt.errors import UserError

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class DocsQAScores:
    """Held-out documentation Q&A scores: `rouge_l` and `name_match` in [0, 1] over `n`
    questions, and the replies (answer part, `<think>` removed) in question order."""

    rouge_l: float
    name_match: float
    n: int
    replies: list[str] = field(default_factory=list)


def name_matches(replies: Sequence[str], names: Sequence[str], candidates: Sequence[dict]) -> list[bool]:
    """For each reply, whether BM25 over the candidates' `answer` texts ranks first a candidate
    whose `name` is the reply's asked `name` (an empty reply never matches; ties go to the
    earlier candidate, so a name must win outright or come first).

    Raises:
        UserError: `replies` and `names` differ in length, or no candidates.
    """
    from rank_bm25 import BM25Okapi

    if len(replies) != len(names):
        raise UserError(f"name_matches: {len(replies)} replies for {len(names)} names")
    if not candidates:
        raise UserError("name_matches: no candidate answers to match against")
    index = BM25Okapi([_words(c["answer"]) or ["<empty>"] for c in candidates])
    out = []
    for reply, name in zip(replies, names):
        query = _words(reply)
        if not query:
            out.append(False)
            continue
        scores = index.get_scores(query)
        best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
        out.append(candidates[best]["name"] == name)
    return out


def docs_qa_scores(model, tok, questions: Sequence[dict], candidates: Sequence[dict], max_new_tokens: int = 128,
                   batch_size: int = 64) -> DocsQAScores:
    """Greedy replies of a chat model to `questions` (`{"question", "answer", "name"}`, one
    user turn each; `minigpt.evaluation.evaluate.generate_replies`, thinking removed) scored by
    ROUGE-L against each `answer` (`minigpt.evaluation.metrics.rouge`) and by `name_matches`
    against `candidates` (every documentation question's `{"answer", "name"}`, the held-out
    ones included).

    Raises:
        UserError: no questions.
    """
    from minigpt.evaluation.evaluate import EvalExample, generate_replies
    from minigpt.evaluation.metrics import rouge

    if not questions:
        raise UserError("docs_qa_scores: no questions")
    examples = [EvalExample(messages=[{"role": "user", "content": q["question"]}], reference=q["answer"]) for q in questions]
    replies = [a.strip() for a in generate_replies(model, tok, examples, max_new_tokens=max_new_tokens, batch_size=batch_size).answers]
    rouge_l = rouge(replies, [q["answer"] for q in questions])["rougeL"].value
    matches = name_matches(replies, [q["name"] for q in questions], candidates)
    return DocsQAScores(rouge_l=rouge_l, name_match=sum(matches) / len(matches), n=len(questions), replies=replies)


__all__ = ["DocsQAScores", "docs_qa_scores", "name_matches"]
