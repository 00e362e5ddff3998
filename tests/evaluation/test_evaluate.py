"""`minigpt eval`: BLEU/ROUGE against sacrebleu and rouge-score, hand-computed Chinese ROUGE,
bootstrap intervals, the data formats, bits per byte, the answer checker, pairwise win rates
(position bias cancelled), and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from minigpt.errors import UserError
from minigpt.evaluation.evaluate import (
    EvalExample,
    answer_correct,
    final_answer,
    judge_preferences,
    load_eval_examples,
    reference_nll,
    reward_model_preferences,
)
from minigpt.evaluation.metrics import MixedScriptTokenizer, bleu, bootstrap, mean_estimate, rouge

from tiny_models import save_tiny_chat_model

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PREDS = ["the cat sat on the mat", "a dog ran in the park today", "it is raining again", "hello there my friend",
         "one two three four five"]
REFS = ["the cat is on the mat", "a dog runs in the park", "it rains again today", "hello my dear friend",
        "one two three four"]


def test_bleu_is_sacrebleus_corpus_bleu_with_an_interval_around_it():
    est = bleu(PREDS, REFS, resamples=300)
    assert est.value == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score, abs=1e-9)
    assert est.low <= est.value <= est.high and est.high > est.low and est.n == 5
    assert bleu(PREDS, PREDS, resamples=50).as_dict()["ci_low"] == pytest.approx(100.0)
    zh_pred, zh_ref = ["我爱北京天安门", "今天天气很好"], ["我爱北京天安门广场", "今天天气不错"]
    assert bleu(zh_pred, zh_ref, resamples=0).value == pytest.approx(
        sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="zh").score)
    with pytest.raises(UserError, match="2 predictions but 1 references"):
        bleu(zh_pred, zh_ref[:1])


def test_rouge_matches_rouge_score_on_english_and_counts_chinese_characters():
    ours = rouge(PREDS, REFS, resamples=0)
    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for kind in ("rouge1", "rouge2", "rougeL"):
        want = np.mean([reference.score(r, p)[kind].fmeasure for p, r in zip(PREDS, REFS)])
        assert ours[kind].value == pytest.approx(want)
    # By hand: 我爱北京 vs 我爱上海. Unigrams: 我, 爱 shared of 4 each -> F1 = 1/2. Bigrams:
    # 我爱 shared of 3 each -> 1/3. Longest common subsequence 我爱 = 2 of 4 -> 1/2.
    zh = rouge(["我爱北京"], ["我爱上海"], resamples=0)
    assert (zh["rouge1"].value, zh["rouge2"].value, zh["rougeL"].value) == pytest.approx((1 / 2, 1 / 3, 1 / 2))
    # rouge-score's own tokenizer deletes Chinese: it would score nothing at all.
    assert reference.score("我爱上海", "我爱北京")["rouge1"].fmeasure == 0.0
    assert MixedScriptTokenizer().tokenize("GPT-4 说: 你好!") == ["gpt", "4", "说", "你", "好"]


def test_the_bootstrap_interval_has_the_width_of_the_normal_approximation():
    rng = np.random.default_rng(1)
    values = (rng.random(400) < 0.3).astype(float)
    est = mean_estimate(values, resamples=2000, seed=3)
    p = values.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / len(values))  # the binomial interval's half-width
    assert est.value == pytest.approx(p)
    assert (est.high - est.low) / 2 == pytest.approx(half, rel=0.15)
    assert est.low < p < est.high
    assert mean_estimate(values, resamples=2000, seed=3) == est  # seeded
    assert mean_estimate(values, resamples=0).low == p
    # A ratio metric is recomputed from resampled sums, not averaged per example: with two
    # examples (1 of 1) and (0 of 9), resamples give 2/2, 1/10 or 0/18.
    draws = bootstrap(np.array([[1.0, 1.0], [0.0, 9.0]]), lambda s: s[0] / s[1], resamples=500)
    assert draws.value == pytest.approx(0.1) and draws.low == 0.0 and draws.high == 1.0


def test_eval_records_in_every_format(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"prompt": "What is 12 * 3?", "answer": "36"},
        {"prompt": "Say hi.", "reference": "hi"},
        {"text": "Once upon a time."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = load_eval_examples(path)
    assert [e.reference for e in ex] == ["5", "hello", "3 + 4 = 7\n#### 7", "", "hi", ""]
    assert [e.answer for e in ex] == [None, None, "7", "36", None, None]
    assert ex[1].messages == [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}]
    assert ex[2].prompt == "Tom has 3 apples and buys 4. How many?" and ex[5].text == "Once upon a time."
    assert len(load_eval_examples(path, limit=2)) == 2
    path.write_text(json.dumps(rows[0]) + "\n[1, 2]\n")
    with pytest.raises(UserError, match=r"data.jsonl:2: a record must be a JSON object"):
        load_eval_examples(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(UserError, match=r"data.jsonl:1: the conversation must end with the assistant reply"):
        load_eval_examples(path)


def test_the_answer_is_the_tagged_one_else_the_last_number():
    assert final_answer("<think>3+4</think><answer>7</answer>") == "7"
    assert final_answer("First 3, then 4, so the total is $1,234.") == "$1,234"
    assert final_answer("no idea") is None
    assert answer_correct(["<answer> 7 </answer>", "the total is 1,234.", "It is 8", "none"],
                          ["7", "1234", "7", "7"]) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(UserError, match="needs an `answer`"):
        answer_correct(["7"], [None])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from minigpt.inference.loading import load_model_and_tokenizer

    out = tmp_path_factory.mktemp("eval") / "tiny"
    save_tiny_chat_model(out, ["hello world, the cat sat on the mat. 一只猫"] * 20, max_position_embeddings=32)
    model, tok = load_model_and_tokenizer(out, device="cpu")
    return out, model, tok


def test_bits_per_byte_counts_every_byte_once(tiny):
    """A text longer than the context is cut into windows that overlap by one token: every
    token but the first is scored once, so the scored bytes are the text's bytes minus the first
    token's. A reply is scored on its own tokens (and the closing <|im_end|>, which spells no
    bytes), so its bytes are the reply's UTF-8 bytes."""
    _, model, tok = tiny
    text = "hello world, the cat sat on the mat. " * 6 + "一只猫"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * 32
    reply = "the cat 一只猫"
    examples = [EvalExample([], text=text), EvalExample([{"role": "user", "content": "hi"}], reference=reply)]
    nll, tokens, nbytes = reference_nll(model, tok, examples, batch_size=3)
    assert tokens[0] == len(ids) - 1
    assert nbytes[0] == len(text.encode()) - len(tok.decode(ids[:1]).encode())
    assert nbytes[1] == len(reply.encode())
    # The first window by hand: the model's own loss on it.
    short = EvalExample([], text=tok.decode(ids[:20]))
    [n], [t], _ = reference_nll(model, tok, [short])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids[:20]]), labels=torch.tensor([ids[:20]])).loss
    assert t == 19 and n == pytest.approx(float(loss) * 19, rel=1e-5)


class LetterJudge(torch.nn.Module):
    """A stand-in judge: prefers the letter of the reply holding token `good`, or always "A"."""

    def __init__(self, vocab: int, a: int, b: int, good: int | None) -> None:
        super().__init__()
        self.config = type("C", (), {"max_position_embeddings": 10_000})()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.a, self.b, self.good = vocab, a, b, good

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r, row in enumerate(input_ids.tolist()):
            prefer_a = True
            if self.good is not None:
                # Reply A comes first in the prompt: the good token in its first half means A.
                where = row.index(self.good)
                markers = [i for i, t in enumerate(row) if t == self.b]
                prefer_a = where < markers[-2] if len(markers) >= 2 else True
            logits[r, -1, self.a if prefer_a else self.b] = 5.0
        return type("Out", (), {"logits": logits})()


def test_a_judge_asked_in_both_orders_cancels_position_bias(tiny):
    _, _, tok = tiny
    a, b = (tok("A", add_special_tokens=False)["input_ids"][0], tok("B", add_special_tokens=False)["input_ids"][0])
    always_a = LetterJudge(len(tok), a, b, None)
    assert judge_preferences(always_a, tok, ["q1", "q2"], ["x", "y"], ["z", "w"]) == [0.5, 0.5]
    good = tok("!", add_special_tokens=False)["input_ids"][0]
    fair = LetterJudge(len(tok), a, b, good)
    assert judge_preferences(fair, tok, ["q"], ["yes!"], ["no"]) == [1.0]
    assert judge_preferences(fair, tok, ["q"], ["no"], ["yes!"]) == [0.0]


def test_reward_model_preferences_are_antisymmetric(tiny):
    from minigpt.model.reward_model import MiniGPTRewardModel

    out, _, tok = tiny
    rm = MiniGPTRewardModel.from_pretrained(str(out)).eval()
    prompts = [tok("hi", add_special_tokens=False)["input_ids"]] * 4
    x = [tok(s, add_special_tokens=False)["input_ids"] for s in ["the cat", "a mat", "hello", "world"]]
    y = [tok(s, add_special_tokens=False)["input_ids"] for s in ["mat", "the cat sat", "hello", "cat"]]
    ours, theirs = reward_model_preferences(rm, tok, prompts, x, y), reward_model_preferences(rm, tok, prompts, y, x)
    assert [p + q for p, q in zip(ours, theirs)] == [1.0] * 4
    assert ours[2] == 0.5  # the same reply ties


def test_eval_command_end_to_end(tiny, tmp_path, capsys):
    from minigpt.cli import main

    out, _, _ = tiny
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": f"{w} the cat"}) + "\n"
                            for w in ["hello", "world", "cat", "mat", "一只猫", "sat"]))
    report_path, gens = tmp_path / "report.json", tmp_path / "gens.jsonl"
    code = main(["eval", "--model", str(out), "--data", str(data), "--metrics", "bpb,ppl,bleu,rouge",
                 "--out", str(report_path), "--save_generations", str(gens), "--sampling.max_new_tokens", "8",
                 "--resamples", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rougeL" in printed and "interval" in printed
    report = json.loads(report_path.read_text())
    assert set(report) >= {"bpb", "ppl", "bleu", "rouge1", "rouge2", "rougeL", "intervals", "n", "settings"}
    assert report["n"]["bleu"] == 6 and report["settings"]["chat"] is True
    for key in ("bpb", "ppl", "bleu", "rougeL"):
        assert report["intervals"][key]["low"] <= report[key] <= report["intervals"][key]["high"]
    lines = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(lines) == 6 and lines[0]["reference"] == "hello the cat"
    # Scoring the saved generations alone gives the same BLEU and ROUGE.
    again = tmp_path / "again.json"
    assert main(["eval", "--predictions", str(gens), "--metrics", "bleu,rouge", "--out", str(again)]) == 0
    rescored = json.loads(again.read_text())
    for key in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert rescored[key] == pytest.approx(report[key])
    assert main(["eval", "--predictions", str(gens), "--metrics", "bleu,perplexity"]) == 2
    assert "unknown ['perplexity']" in capsys.readouterr().err
    assert main(["eval", "--model", str(out), "--data", str(data), "--metrics", "win_rate"]) == 2
    assert "win_rate needs --reward_model or --judge_model" in capsys.readouterr().err


SCRIPTS = {
    "russian": ("Кошка сидела на ковре и смотрела в окно", "Кошка сидела на полу и смотрела в окно"),
    "greek": ("Η γάτα κάθεται στο χαλί", "Η γάτα κοιμάται στο χαλί"),
    "arabic": ("جلست القطة على السجادة", "نامت القطة على السجادة"),
    "hebrew": ("החתול ישב על השטיח", "החתול ישן על השטיח"),
    "hindi": ("बिल्ली चटाई पर बैठी थी", "बिल्ली चटाई पर सो रही थी"),
    "thai": ("แมวนั่งบนเสื่อ", "แมวนอนบนเสื่อ"),
    "japanese": ("猫はマットの上に座った", "猫はマットの上で寝た"),
    "korean": ("고양이가 매트 위에 앉았다", "고양이가 매트 위에서 잤다"),
    "chinese": ("猫坐在垫子上", "猫睡在垫子上"),
    "english": ("The cat sat on the mat", "The cat slept on the mat"),
}


def test_rouge_scores_every_script_identical_pairs_one_and_matches_rouge_score_on_pretokenised_text():
    """An identical pair scores 1.0 in every script (rouge-score's own tokenizer scores 0 for
    all but Latin); on different pairs our figures are rouge-score's on the same texts split
    into the same tokens beforehand (joined by spaces, read back by a whitespace tokenizer)."""

    class Whitespace:
        def tokenize(self, text):
            return text.split()

    ours_tok = MixedScriptTokenizer()
    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Whitespace())
    for script, (a, b) in SCRIPTS.items():
        same = rouge([a], [a], resamples=0)
        assert [same[k].value for k in ("rouge1", "rouge2", "rougeL")] == [1.0, 1.0, 1.0], script
        assert len(ours_tok.tokenize(a)) >= 3, script  # the text really is split into tokens
        got = rouge([b], [a], resamples=0)
        want = reference.score(" ".join(ours_tok.tokenize(a)), " ".join(ours_tok.tokenize(b)))
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert got[kind].value == pytest.approx(want[kind].fmeasure), (script, kind)
            assert 0 < got[kind].value < 1 or kind == "rouge2", (script, kind, got[kind].value)
    # Words stay whole where words are spaced; unspaced scripts go character by character.
    assert ours_tok.tokenize("Кошка сидела") == ["кошка", "сидела"]
    assert ours_tok.tokenize("बिल्ली चटाई") == ["बिल्ली", "चटाई"]  # vowel signs stay in their word
    assert ours_tok.tokenize("แมวนั่ง") == ["แ", "ม", "ว", "น\u0e31\u0e48", "ง"]  # marks stay on their letter
