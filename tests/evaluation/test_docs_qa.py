"""Held-out documentation Q&A scores (`minigpt.evaluation.docs_qa`): the name match on replies
written by hand, and the whole scorer on a model trained here to recite two answers."""

from __future__ import annotations

import pytest
import torch

from minigpt.errors import UserError
from minigpt.evaluation.docs_qa import docs_qa_scores, name_matches

CANDIDATES = [
    {"name": "json.dumps", "answer": "Serialize obj to a JSON formatted str."},
    {"name": "json.loads", "answer": "Deserialize s (a str, bytes or bytearray instance containing a JSON document) to a Python object."},
    {"name": "os.getcwd", "answer": "Return a string representing the current working directory."},
]


def test_name_match_finds_the_document_a_reply_describes():
    replies = ["Serialize obj to a JSON formatted str.",  # json.dumps, verbatim
               "Return a string with the current working directory.",  # os.getcwd, reworded
               "Serialize obj to a JSON formatted str.",  # json.dumps's answer, asked about json.loads
               ""]
    names = ["json.dumps", "os.getcwd", "json.loads", "os.getcwd"]
    assert name_matches(replies, names, CANDIDATES) == [True, True, False, False]
    with pytest.raises(UserError, match="2 replies for 1 names"):
        name_matches(replies[:2], names[:1], CANDIDATES)


@pytest.mark.usefixtures("one_thread")
def test_a_model_that_recites_one_answer_scores_it_and_only_it(tmp_path):
    """A tiny chat model trained to answer both questions with json.dumps's sentence: on the
    json.dumps question ROUGE-L is 1 and the name matches; on the os.getcwd question the name
    does not, and ROUGE-L is that of the two sentences (computed here by rouge-score)."""
    from rouge_score import rouge_scorer

    from minigpt.tokenizer import render_conversation
    from tiny_models import save_tiny_chat_model

    answer = CANDIDATES[0]["answer"]
    questions = [{"question": "What does `json.dumps` do?", "answer": answer, "name": "json.dumps"},
                 {"question": "What does `os.getcwd` do?", "answer": CANDIDATES[2]["answer"], "name": "os.getcwd"}]
    texts = [q["question"] + " " + answer for q in questions] * 10 + [c["answer"] for c in CANDIDATES] * 10
    tok, model = save_tiny_chat_model(tmp_path, texts, vocab_size=320, max_position_embeddings=128)
    rows = [render_conversation(tok, [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": answer}])
            for q in questions]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        for ids, mask in rows:
            labels = [t if m else -100 for t, m in zip(ids, mask)]
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    scores = docs_qa_scores(model, tok, questions, CANDIDATES, max_new_tokens=40)
    assert scores.replies == [answer, answer]
    other = rouge_scorer.RougeScorer(["rougeL"]).score(CANDIDATES[2]["answer"], answer)["rougeL"].fmeasure
    assert scores.rouge_l == pytest.approx((1.0 + other) / 2) and other < 0.5
    assert scores.name_match == 0.5 and scores.n == 2
