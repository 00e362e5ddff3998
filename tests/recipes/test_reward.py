"""The reward-model recipes end to end: `minigpt reward` trains through the one loop to 100 %
held-out pairwise accuracy on a separable toy set, OUT loads back (with its tokenizer) and gives
the rewards the run measured, a frozen backbone stays bit-identical to the base, `minigpt score`
scores prompt/response records and preference pairs with ids rendered independently through
`apply_chat_template`, skipped records are counted, and user errors are one line.

One tiny base model (random weights, hidden 32, 2 layers, vocabulary ~320) is written once per
module. The preference data: prompts about numbered items, a chosen reply made of "positive"
words and a rejected one of "negative" words (random picks, so a random reward model is near
chance), in three record formats, plus records that must be skipped. Training is fp32 on the CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt import cli
from minigpt.errors import UserError
from minigpt.model.reward_model import MiniGPTRewardModel
from minigpt.model.loading import check_same_tokenizer, load_reward_model
from minigpt.recipes.reward import reward, score
from minigpt.tokenizer import load_tokenizer, train_tokenizer
from minigpt.train.config import TrainConfig
from tiny_models import save_tiny_chat_model

VOCAB = 320
CONTEXT = 128
MAX_LENGTH = 64
GOOD = ["good", "great", "nice", "happy", "love", "best", "glad", "kind"]
BAD = ["bad", "awful", "sad", "hate", "worst", "poor", "ugly", "angry"]
FILLER = ["it", "is", "very", "so", "the", "day", "was", "and"]
N_PAIRS = 80  # usable pairs written below
N_MISSING, N_IDENTICAL = 2, 1  # records that must be skipped


def _reply(rng: random.Random, words: list[str]) -> str:
    picked = rng.sample(words, 2) + rng.sample(FILLER, 3)
    rng.shuffle(picked)
    return " ".join(picked).capitalize() + "."


def _records() -> list[dict]:
    """N_PAIRS usable pairs (plain strings, message lists and HH-RLHF transcripts in turn) and
    N_MISSING + N_IDENTICAL records to skip."""
    rng = random.Random(0)
    recs = []
    for i in range(N_PAIRS):
        question = f"What about item {i}?"
        chosen, rejected = _reply(rng, GOOD), _reply(rng, BAD)
        if i % 3 == 0:
            recs.append({"prompt": question, "chosen": chosen, "rejected": rejected})
        elif i % 3 == 1:
            prompt = [{"role": "user", "content": question}]
            recs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            recs.append({"chosen": f"\n\nHuman: {question}\n\nAssistant: {chosen}",
                         "rejected": f"\n\nHuman: {question}\n\nAssistant: {rejected}"})
    recs.insert(5, {"prompt": "No rejected here", "chosen": "Good."})
    recs.insert(17, {"prompt": "No chosen here", "rejected": "Bad."})
    recs.insert(30, {"prompt": "Same twice", "chosen": "Fine day.", "rejected": "Fine day."})
    return recs


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _model_dir(root: Path, name: str, texts: list[str], seed: int) -> Path:
    """A saved causal LM directory (random weights) with a tokenizer trained on `texts`."""
    out = root / name
    save_tiny_chat_model(out, texts, vocab_size=VOCAB, max_position_embeddings=CONTEXT, seed=seed)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """`(root, base_dir, data_file)`."""
    root = tmp_path_factory.mktemp("reward_recipe")
    recs = _records()
    texts = [json.dumps(r) for r in recs] * 2 + [" ".join(GOOD + BAD + FILLER)] * 20
    base = _model_dir(root, "base", texts, seed=0)
    return root, base, _write_jsonl(root / "prefs.jsonl", recs)


@pytest.fixture(autouse=True)
def reward_commands(monkeypatch):
    """Route `minigpt reward` / `minigpt score` through `minigpt.cli.main` whether or not cli.py
    registers them yet (it is the lead's file); once it does, this changes nothing."""
    original = cli._commands
    monkeypatch.setattr(cli, "_commands", lambda: {**original(), "reward": reward, "score": score})


def train_config(**kw) -> TrainConfig:
    """fp32 CPU steps at a constant learning rate, no weight decay, no periodic evaluation."""
    base = dict(max_steps=40, batch_size=8, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
                precision="fp32", device="cpu", eval_interval=0, eval_batches=0, save_interval=0, log_interval=1,
                progress=False, tensorboard=False, seed=3)
    return TrainConfig(**{**base, **kw})


def train_argv(**kw) -> list[str]:
    cfg = train_config(**kw)
    argv = []
    for name, value in vars(cfg).items():
        if value is None or name == "compile":
            continue
        argv += [f"--train.{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


@pytest.fixture(scope="module")
def trained(env):
    """One `reward()` run: `(out_dir, metrics)`."""
    root, base, data = env
    out = root / "rm"
    metrics = reward(model=str(base), data=str(data), out=str(out), max_length=MAX_LENGTH, val_fraction=0.25,
                     head_hidden_size=16, train=train_config())
    return out, metrics


def _val_pairs(env):
    """The held-out pairs of the run: the same data, split the way the recipe splits it."""
    from minigpt.data.preference import PreferenceDataset, split_preference

    _, base, data = env
    ds = PreferenceDataset(str(data), load_tokenizer(base), max_length=MAX_LENGTH)
    return split_preference(ds, 0.25, seed=train_config().seed, max_val=500)[1]


def _stack(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != pad).long()


# ------------------------------------------------------------------------------ training


def test_training_reaches_full_held_out_accuracy_and_reloads(env, trained):
    """20 held-out pairs (a quarter of 80): the random starting model ranks them near chance,
    the trained one all correctly. OUT loads back through `load_reward_model` and plain
    `AutoModelForSequenceClassification`; scoring the held-out pairs (split again here from the
    same file and seed) with the loaded model gives exactly the run's held-out accuracy and
    mean margin (the run's figures are sums over the same pairs divided by 20)."""
    from transformers import AutoModelForSequenceClassification

    out, m = trained
    assert m["steps"] == 40
    assert 0.2 <= m["val_accuracy_before"] <= 0.8
    assert m["val_accuracy"] == 1.0 and m["val_reward_margin"] > 0.5
    assert m["val_loss"] < m["val_loss_before"]

    model, tok = load_reward_model(out)
    assert type(model) is MiniGPTRewardModel and not model.training
    assert (model.config.reward_head_hidden_size, model.config.reward_pooling) == (16, "last")
    val = _val_pairs(env)
    assert len(val) == 20
    chosen = _stack([ex.prompt_ids + ex.chosen_ids for ex in val.examples], tok.pad_token_id)
    rejected = _stack([ex.prompt_ids + ex.rejected_ids for ex in val.examples], tok.pad_token_id)
    rw, rl = model.compare_responses(chosen[0], rejected[0], chosen[1], rejected[1])
    assert (rw > rl).float().mean().item() == m["val_accuracy"]
    assert (rw - rl).mean().item() == pytest.approx(m["val_reward_margin"], abs=1e-5)
    auto = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(auto.compare_responses(chosen[0], rejected[0])[0], rw, atol=0, rtol=0)


def test_frozen_backbone_stays_as_the_base(env, tmp_path):
    """`--freeze_backbone`: every decoder tensor in OUT equals the base LM's, the head trained."""
    from safetensors.torch import load_file

    _, base, data = env
    out = tmp_path / "frozen"
    m = reward(model=str(base), data=str(data), out=str(out), max_length=MAX_LENGTH, val_fraction=0.25,
               head_hidden_size=16, freeze_backbone=True, train=train_config(max_steps=3))
    assert m["steps"] == 3
    saved, lm = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    backbone = [k for k in saved if k.startswith("model.")]
    assert len(backbone) == len([k for k in lm if k.startswith("model.")]) > 0
    for k in backbone:
        assert torch.equal(saved[k], lm[k]), k
    head = [k for k in saved if k.startswith("score.")]
    assert len(head) == 4  # two Linear layers, weight and bias each


def test_cli_reward_reports_skipped_records(env, tmp_path, capsys):
    """Through `minigpt.cli.main` with dashed options: exit 0, the two records missing a field and
    the identical pair are counted (83 records -> 80 pairs), and OUT holds a reward model and its
    tokenizer."""
    _, base, data = env
    out = tmp_path / "cli"
    argv = ["reward", "--model", str(base), "--data", str(data), "--out", str(out), "--max-length", str(MAX_LENGTH),
            "--val-fraction", "0.25", "--head-hidden-size", "8", "--head-num-layers", "1", "--pooling", "mean",
            *train_argv(max_steps=2)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{N_PAIRS + N_MISSING + N_IDENTICAL} records -> {N_PAIRS} pairs" in printed
    assert f"skipped: {N_MISSING} missing_field, {N_IDENTICAL} identical" in printed
    assert "60 train / 20 held-out pairs" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MiniGPTRewardModel"]
    assert (cfg["reward_head_num_layers"], cfg["reward_pooling"]) == (1, "mean")
    assert (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------ scoring


def _chat_ids(tok, prompt: str, reply: str) -> list[int]:
    """prompt + reply rendered by the tokenizer's own chat template: the full conversation
    `...<|im_start|>assistant\\n{reply}<|im_end|>\\n` without the final newline token."""
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                                  tokenize=True, return_dict=False)
    assert tok.decode(ids[-2:]) == "<|im_end|>\n"
    return list(ids[:-1])


def test_score_one_prompt_response_and_a_file(env, trained, tmp_path, capsys):
    """`minigpt score --prompt P --response R` prints one JSON line whose reward is the model's
    reward of the independently rendered conversation ids. A file of prompt/response records
    (one missing its response, one with an empty response) gives one line per usable record,
    the two others counted as skipped, and the same rewards at batch size 2 as one by one."""
    out, _ = trained
    model, tok = load_reward_model(out)
    prompt, resp = "What about item 3?", "Great day, love it."
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([_chat_ids(tok, prompt, resp)])).rewards.item()
    assert cli.main(["score", "--model", str(out), "--prompt", prompt, "--response", resp]) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out)
    assert line["reward"] == pytest.approx(expected, abs=1e-5)
    assert "scored 1 record(s)" in captured.err

    rng = random.Random(7)  # new replies in the training data's style
    replies = [_reply(rng, GOOD), _reply(rng, BAD), _reply(rng, GOOD), _reply(rng, BAD)]
    recs = [{"prompt": f"What about item {100 + i}?", "response": r} for i, r in enumerate(replies)]
    recs.insert(1, {"prompt": "x"})
    recs.insert(3, {"prompt": "y", "response": "   "})
    data = _write_jsonl(tmp_path / "resp.jsonl", recs)
    lines_file = tmp_path / "scores.jsonl"
    result = score(model=str(out), data=str(data), out=str(lines_file), batch_size=2, device="cpu")
    assert result["skipped"] == {"missing_field": 1, "empty_response": 1}
    lines = [json.loads(x) for x in lines_file.read_text().splitlines()]
    assert [x["where"] for x in lines] == [f"{data}:{n}" for n in (1, 3, 5, 6)]
    for x in lines:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([_chat_ids(tok, x["prompt"], x["response"])])).rewards.item()
        assert x["reward"] == pytest.approx(alone, abs=1e-5)
    assert result["mean_reward"] == pytest.approx(sum(x["reward"] for x in lines) / 4, abs=1e-9)
    # the trained model prefers the positive replies
    assert min(lines[0]["reward"], lines[2]["reward"]) > max(lines[1]["reward"], lines[3]["reward"])


def test_score_preference_pairs_reports_accuracy(env, trained, tmp_path):
    """Scoring the whole preference file: one line per usable pair (80), accuracy = the share
    of lines marked correct, and each pair's rewards are the model's rewards of
    prompt + chosen / prompt + rejected rendered through the chat template."""
    _, _, data = env
    out, _ = trained
    model, tok = load_reward_model(out)
    result = score(model=str(out), data=str(data), out=str(tmp_path / "s.jsonl"), device="cpu")
    assert result["pairs"] == result["num_scored"] == N_PAIRS
    assert result["skipped"] == {"missing_field": N_MISSING, "identical": N_IDENTICAL}
    lines = result["records"]
    assert result["accuracy"] == sum(x["correct"] for x in lines) / N_PAIRS
    assert result["accuracy"] >= 0.9  # 60 training pairs and 20 held-out ones, trained to 100 %
    rec = _records()[0]  # a plain-string pair, file line 1
    assert lines[0]["where"] == f"{data}:1"
    with torch.no_grad():
        rw = model(input_ids=torch.tensor([_chat_ids(tok, rec["prompt"], rec["chosen"])])).rewards.item()
        rl = model(input_ids=torch.tensor([_chat_ids(tok, rec["prompt"], rec["rejected"])])).rewards.item()
    assert lines[0]["chosen_reward"] == pytest.approx(rw, abs=1e-5)
    assert lines[0]["rejected_reward"] == pytest.approx(rl, abs=1e-5)


# ------------------------------------------------------------------------------ bad input


def _one_line_error(capsys, argv: list[str], command: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"minigpt {command}: error:") and "Traceback" not in err
    return err


def test_score_refuses_a_language_model_dir(env, capsys):
    _, base, _ = env
    err = _one_line_error(capsys, ["score", "--model", str(base), "--prompt", "a", "--response", "b"], "score")
    assert str(base) in err and "not a reward model" in err


def test_reward_with_no_usable_pair_is_one_line(env, tmp_path, capsys):
    """Only skippable records: the error names the file and the skip counts; no run started."""
    _, base, _ = env
    data = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}, {"prompt": "c", "chosen": "d", "rejected": "d"}])
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["reward", "--model", str(base), "--data", str(data), "--out", str(out),
                                   "--max-length", str(MAX_LENGTH), *train_argv(max_steps=1)], "reward")
    assert str(data) in err and "1 missing_field" in err and "1 identical" in err
    assert not (out / "run.json").exists()


def test_wrong_field_type_names_file_and_line(env, tmp_path, capsys):
    _, base, _ = env
    recs = _records()[:4]
    recs[2] = {"prompt": "q", "chosen": 7, "rejected": "r"}
    data = _write_jsonl(tmp_path / "typed.jsonl", recs)
    err = _one_line_error(capsys, ["reward", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "o"),
                                   "--max-length", str(MAX_LENGTH), *train_argv(max_steps=1)], "reward")
    assert f"{data}:3" in err and "chosen" in err


def test_check_same_tokenizer(env, trained, tmp_path):
    """The reward model's directory shares the base's tokenizer; a directory whose tokenizer
    was trained on other text is refused with both paths in the message."""
    root, base, _ = env
    out, _ = trained
    check_same_tokenizer(base, out)  # no error
    other = tmp_path / "other"
    train_tokenizer(["Съешь же ещё этих мягких французских булок, да выпей чаю. " * 5] * 30, vocab_size=VOCAB, out_dir=other)
    with pytest.raises(UserError) as e:
        check_same_tokenizer(out, other)
    assert str(out) in str(e.value) and str(other) in str(e.value) and "tokenizer" in str(e.value)


# ------------------------------------------------------------------------------ resume, continue


def test_resume_equals_an_uninterrupted_run(env, tmp_path):
    """4 steps straight vs 2 steps, stop, `resume=True` to 4 (constant learning rate): the
    same weights, head included, bit for bit."""
    from safetensors.torch import load_file

    _, base, data = env
    kw = dict(model=str(base), data=str(data), max_length=MAX_LENGTH, val_fraction=0.25, head_hidden_size=16)
    straight = reward(out=str(tmp_path / "a"), train=train_config(max_steps=4), **kw)
    reward(out=str(tmp_path / "b"), train=train_config(max_steps=2, save_interval=2), **kw)
    resumed = reward(out=str(tmp_path / "b"), train=train_config(max_steps=4, save_interval=2), resume=True, **kw)
    assert resumed["steps"] == 4 and "val_accuracy_before" not in resumed
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("score.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["loss"] == straight["loss"]


def test_a_reward_model_dir_continues_with_its_head(env, trained, tmp_path):
    """Starting from the trained reward model (one step): the pre-training evaluation of
    the same held-out split is the trained run's final evaluation, so the head was loaded, not
    replaced by a fresh one (whose accuracy is near chance); the head options are ignored."""
    _, _, data = env
    out, m = trained
    again = reward(model=str(out), data=str(data), out=str(tmp_path / "again"), max_length=MAX_LENGTH,
                   val_fraction=0.25, head_hidden_size=99, pooling="max", train=train_config(max_steps=1))
    assert again["val_accuracy_before"] == m["val_accuracy"] == 1.0
    assert again["val_loss_before"] == pytest.approx(m["val_loss"], abs=1e-6)
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (cfg["reward_head_hidden_size"], cfg["reward_pooling"]) == (16, "last")
