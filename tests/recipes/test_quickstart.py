"""`minigpt quickstart` end to end at toy step counts: what each stage hands the next, and that
no held-out problem reaches any training file."""

import html
import json
import re

import pytest

from minigpt.data.arithmetic import ArithmeticProblem
from minigpt.recipes.quickstart import quickstart

_SO_RE = re.compile(r"So (\d+) ([-+×]) (\d+) = ")
_EXPR_RE = re.compile(r"(\d+) ([-+×]) (\d+)")


def _key(match: re.Match) -> tuple[int, str, int]:
    return int(match.group(1)), match.group(2), int(match.group(3))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "run"
    metrics = quickstart(
        out=str(out), pretrain_steps=4, sft_steps=4, hybrid_steps=3, grpo_steps=2, grpo_prompts=4, group_size=4,
        num_pretrain_arithmetic=300, num_docs_conversations=40, num_arithmetic=300, num_hybrid_arithmetic=200,
        num_hybrid_docs=10, num_heldout=40, num_docs_heldout=12, vocab_size=512, block_size=128, batch_size=4, cap_minutes=0, device="cpu",
    )
    return out, metrics


def test_no_heldout_problem_in_any_training_file(run):
    out, _ = run
    heldout = {_key(_EXPR_RE.search(r["prompt"])) for r in _read(out / "data" / "arithmetic_heldout.jsonl")}
    assert len(heldout) == 40
    seen: dict[str, set] = {}
    corpus = "\n".join(r["text"] for r in _read(out / "data" / "pretrain_corpus.jsonl"))
    seen["pretraining"] = {_key(m) for m in _SO_RE.finditer(corpus)}
    for name in ("arithmetic_reasoning", "hybrid_arithmetic"):
        seen[name] = {_key(_EXPR_RE.search(c["messages"][0]["content"])) for c in _read(out / "data" / f"{name}.jsonl")}
    seen["rl"] = {_key(_EXPR_RE.search(r["prompt"])) for r in _read(out / "data" / "arithmetic_rl_prompts.jsonl")}
    assert len(seen["pretraining"]) >= 290  # the worked problems are there to be checked
    for name, keys in seen.items():
        assert keys and not keys & heldout, name


def test_documentation_questions_are_held_out_and_scored(run):
    """The held-out documentation questions ask about documents no SFT conversation asks about
    (each name in backticks is absent from every training question), and the final model's
    scores are in the summary."""
    out, metrics = run
    heldout = _read(out / "data" / "docs_heldout.jsonl")
    asked = [m["content"] for r in _read(out / "data" / "docs_conversations.jsonl") for m in r["messages"] if m["role"] == "user"]
    assert len(heldout) == 12 and len(asked) >= 40
    for q in heldout:
        assert q["question"] not in asked
        if f"`{q['name']}`" in q["question"]:
            assert not any(f"`{q['name']}`" in a for a in asked), q["name"]
    assert 0 <= metrics["docs_rouge_l"] <= 1 and 0 <= metrics["docs_name_match"] <= 1
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["docs_rouge_l"] == metrics["docs_rouge_l"]
    replies = _read(out / "docs_qa_replies.jsonl")
    assert [r["question"] for r in replies] == [q["question"] for q in heldout] and all("reply" in r for r in replies)


def test_hybrid_stage_answers_mostly_bare_and_works_every_step_by_step_question(run):
    out, _ = run
    records = _read(out / "data" / "hybrid_arithmetic.jsonl")
    bare = [r for r in records if r["messages"][-1]["content"].startswith("<think></think>")]
    asked = [r for r in records if "step by step" in r["messages"][0]["content"]]
    assert asked and not any(r in bare for r in asked)
    assert 0.6 < len(bare) / (len(records) - len(asked)) < 0.9  # hybrid_direct_share 0.75
    # Every worked reply is the generator's working for its own question.
    for r in records:
        if r not in bare:
            a, op, b = _key(_EXPR_RE.search(r["messages"][0]["content"]))
            assert r["messages"][-1]["content"] == ArithmeticProblem(a, op, b, r["messages"][0]["content"]).completion


def test_stages_chain_each_from_the_last(run):
    out, metrics = run
    hybrid = json.loads((out / "hybrid" / "run.json").read_text())
    grpo = json.loads((out / "grpo" / "run.json").read_text())
    assert json.loads((out / "sft" / "run.json").read_text())["model"] == str(out / "pretrain")
    assert hybrid["model"] == str(out / "sft") and grpo["model"] == str(out / "hybrid")
    assert (hybrid["train"]["max_steps"], hybrid["train"]["lr"]) == (3, 5e-4)
    assert hybrid["data"][0].endswith("hybrid_docs_conversations.jsonl")
    assert len(_read(out / "data" / "hybrid_docs_conversations.jsonl")) == 10
    for key in ("sft_accuracy", "arithmetic_accuracy", "grpo_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0


def test_the_quickstart_ends_with_a_report_card_of_every_stage(run):
    """The page has the headline, the machine, one row and one section per stage in training
    order with its plot (a PNG, inlined in the HTML page), and the scripted chat as the final
    stage's samples."""
    from minigpt.recipes.quickstart import CHAT_SCRIPT

    out, metrics = run
    headline = json.loads((out / "quickstart.json").read_text())
    assert headline["grpo_accuracy"] == metrics["grpo_accuracy"]
    md = (out / "report.md").read_text()
    stages = ["pretrain", "sft", "hybrid", "grpo"]
    sections = [md.index(f"## {name} (`minigpt ") for name in stages]
    assert sections == sorted(sections)
    assert md.index("## Headline") < md.index("## Environment") < md.index("## Stages") < sections[0]
    assert f"| held-out arithmetic accuracy after GRPO | {metrics['grpo_accuracy']:.1%} |" in md
    for name in stages:
        assert (out / "report_files" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![{name} curves](report_files/{name}.png)" in md
    assert md[sections[-1]:].count("> **prompt:** ") == len(CHAT_SCRIPT)
    page = (out / "report.html").read_text()
    grpo = page[page.index("grpo (<code>minigpt grpo</code>)"):]
    assert all(f"<strong>prompt:</strong> {html.escape(turn, quote=False)}" in grpo for turn in CHAT_SCRIPT)
    assert "| pretrain | `minigpt pretrain` | 4 |" in md  # 4 steps, as asked
    assert page.count('src="data:image/png;base64,') == len(stages)
