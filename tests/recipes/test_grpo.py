"""`minigpt grpo` end to end on a tiny model: it trains and saves a loadable policy with the
SPEC metrics logged, a resumed run equals an uninterrupted one, and bad input (an empty prompt
file, prompts longer than the context, a failing reward function, a reward model with another
tokenizer) gives one-line errors that leave nothing behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.cli import main
from minigpt.data.prompts import PromptDataset, collate_prompts
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.objectives.grpo import GRPOObjective
from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import GRPOConfig
from minigpt.rewards.functions import CombinedReward
from minigpt.tokenizer import train_tokenizer
from tiny_models import save_tiny_chat_model

COLOURS = ["red", "blue", "green", "pink", "black", "white", "grey", "gold"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _prompts() -> list[dict]:
    out = []
    for i in range(24):
        c = COLOURS[i % 8]
        if i % 3 == 0:
            out.append({"prompt": f"Name the colour {c}.", "answer": c})
        elif i % 3 == 1:
            out.append({"question": f"Which colour is {c}?", "answer": f"It is {c}.\n#### {c}"})
        else:
            out.append({"prompt": [{"role": "user", "content": f"Say {c}."}], "answer": c})
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """`(root, model_dir, prompts_file)`: a random tiny chat model and 24 prompts in three formats."""
    root = tmp_path_factory.mktemp("grpo_recipe")
    recs = _prompts()
    base = root / "base"
    texts = [json.dumps(r) for r in recs] + [f"<think>{c}</think><answer>{c}</answer>" for c in COLOURS]
    save_tiny_chat_model(base, texts * 3)
    return root, base, _write_jsonl(root / "prompts.jsonl", recs)


def _args(env, out, *extra):
    root, base, data = env
    return [
        "grpo", "--model", str(base), "--data", str(data), "--out", str(out), "--sampling.max_new_tokens", "8",
        "--max_prompt_length", "40", "--grpo.group_size", "4", "--reward", "format:0.5,answer,length:0.1",
        "--train.batch_size", "4", "--train.lr", "1e-3", "--train.progress", "false", "--train.tensorboard", "false",
        "--train.precision", "fp32", "--train.eval_interval", "2", "--train.save_interval", "2", *extra,
    ]


def test_grpo_cli_trains_saves_and_logs(env, capsys):
    root = env[0]
    out = root / "run"
    assert main(_args(env, out, "--train.max_steps", "3", "--grpo.beta", "0.05")) == 0
    printed = capsys.readouterr().out
    assert "24 records -> 24 prompts" in printed and "held-out before training" in printed
    policy = MiniGPTForCausalLM.from_pretrained(out)
    start = MiniGPTForCausalLM.from_pretrained(env[1])
    assert any(not torch.equal(a, b) for a, b in zip(policy.state_dict().values(), start.state_dict().values()))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/mean_reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in ("train/mean_reward", "train/group_variance", "train/kl", "train/clip_fraction", "train/reward/format", "train/reward/length"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    assert train_rows[0]["train/clip_fraction"] == 0.0  # on-policy: ratio 1
    assert any("val_reward" in r for r in rows)
    assert json.loads((out / "run.json").read_text())["stage"] == "grpo"


def test_grpo_resume_equals_uninterrupted(env):
    root = env[0]
    full, part = root / "full", root / "part"
    assert main(_args(env, full, "--train.max_steps", "4")) == 0
    assert main(_args(env, part, "--train.max_steps", "2")) == 0
    assert main(_args(env, part, "--train.max_steps", "4", "--resume")) == 0
    a = MiniGPTForCausalLM.from_pretrained(full).state_dict()
    b = MiniGPTForCausalLM.from_pretrained(part).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_empty_prompt_file_is_a_one_line_error(env, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = _args(env, tmp_path / "out", "--train.max_steps", "1")
    args[args.index("--data") + 1] = str(empty)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable prompt" in err[0] and "empty.jsonl" in err[0]
    assert not (tmp_path / "out" / "run.json").exists()


def test_prompts_longer_than_the_limit_are_skipped_and_counted(env, tmp_path, capsys):
    recs = _prompts()[:6] + [{"prompt": "red " * 200, "answer": "red"}]
    data = _write_jsonl(tmp_path / "p.jsonl", recs)
    tok = __import__("minigpt.tokenizer", fromlist=["load_tokenizer"]).load_tokenizer(env[1])
    ds = PromptDataset(data, tok, max_prompt_length=40)
    assert len(ds) == 6 and ds.stats["skipped_too_long"] == 1
    only_long = _write_jsonl(tmp_path / "long.jsonl", recs[-1:])
    with pytest.raises(UserError, match=r"no usable prompt \(max_prompt_length 40\).*skipped_too_long 1"):
        PromptDataset(only_long, tok, max_prompt_length=40)
    # A context too small for prompt + completion is refused before anything is written.
    args = _args(env, tmp_path / "out", "--train.max_steps", "1", "--sampling.max_new_tokens", "90")
    assert main(args) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


def test_bare_string_prompts_in_jsonl_json_txt_and_lists(env, tmp_path):
    """Prompts as bare strings: JSON string lines, a JSON array of strings, a .txt file with one
    prompt per line, or a Python list; each gives the same rendered prompts as {"prompt": …}
    records. A number is still refused, naming the line."""
    import json as _json

    from minigpt.tokenizer import load_tokenizer

    tok = load_tokenizer(env[1])
    texts = ["Name the colour red.", "Say blue.", "Which colour is green?"]
    want = [item["prompt_ids"] for item in PromptDataset([{"prompt": t} for t in texts], tok)]
    (tmp_path / "s.jsonl").write_text("".join(_json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    (tmp_path / "s.json").write_text(_json.dumps(texts), encoding="utf-8")
    (tmp_path / "s.txt").write_text("\n".join(texts[:1] + [""] + texts[1:]) + "\n", encoding="utf-8")
    for source in (tmp_path / "s.jsonl", tmp_path / "s.json", tmp_path / "s.txt", texts):
        assert [item["prompt_ids"] for item in PromptDataset(source, tok)] == want, source
    (tmp_path / "bad.jsonl").write_text('"fine"\n42\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2: line holds a JSON int, not an object or a string"):
        PromptDataset(tmp_path / "bad.jsonl", tok)


def test_a_failing_reward_function_names_itself_and_the_sample(env):
    """A reward function that raises, or returns NaN, stops the rollout with an error naming the
    function and the sample; the model is not updated."""
    from minigpt.tokenizer import load_tokenizer

    tok = load_tokenizer(env[1])
    model = MiniGPTForCausalLM.from_pretrained(env[1])
    ds = PromptDataset(env[2], tok, max_prompt_length=40)
    batch = collate_prompts([ds[i] for i in range(2)])

    def nan_on_third(prompts, completions, **kw):
        return [float("nan") if i == 2 else 0.0 for i in range(len(completions))]

    def boom(prompts, completions, **kw):
        raise RuntimeError("no network")

    for fn, pattern in ((nan_on_third, r"nan_on_third.*sample 2"), (boom, r"boom.*sample 0.*no network")):
        obj = GRPOObjective(GRPOConfig(group_size=2, beta=0.0), SamplingOptions(max_new_tokens=4), CombinedReward([(fn.__name__, fn, 1.0)]), tok, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
        with pytest.raises(UserError, match=pattern):
            obj.make_batches(model, batch)


def test_reward_model_with_another_tokenizer_is_refused(env, tmp_path, capsys):
    from minigpt.model.reward_model import create_reward_model

    other = tmp_path / "rm"
    tok = train_tokenizer(["completely different text " * 20, "another corpus"] * 5, vocab_size=280, out_dir=other)
    cfg = MiniGPTConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96)
    create_reward_model(MiniGPTForCausalLM(cfg), hidden_size=16, num_layers=1).save_pretrained(other)
    args = _args(env, tmp_path / "out", "--train.max_steps", "1", "--reward", "model", "--reward_model", str(other))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(other) in err and str(env[1]) in err
    assert not (tmp_path / "out" / "run.json").exists()


def test_sampled_evaluation_is_seeded_and_separate_from_greedy(env):
    """`evaluate_policy(samples=k)` adds mean@k rewards at the given temperature: the same call
    twice gives the same figures (seeded draws), the greedy figures are those of a greedy-only
    call, and a length reward's sampled mean differs from its greedy value on a random model."""
    from minigpt.evaluation.policy import evaluate_policy
    from minigpt.tokenizer import load_tokenizer

    tok = load_tokenizer(env[1])
    model = MiniGPTForCausalLM.from_pretrained(env[1])
    ds = PromptDataset(env[2], tok, max_prompt_length=40)
    items = [ds[i] for i in range(6)]

    def tokens(prompts, completions, completion_ids, **kw):
        return [float(len(c)) for c in completion_ids]

    reward = CombinedReward([("tokens", tokens, 1.0)])
    greedy = evaluate_policy(model, tok, items, reward, 12, "fp32")
    a = evaluate_policy(model, tok, items, reward, 12, "fp32", samples=4, temperature=1.0)
    b = evaluate_policy(model, tok, items, reward, 12, "fp32", samples=4, temperature=1.0)
    assert "sampled_reward" not in greedy and a == b
    assert a["reward"] == greedy["reward"] and a["reward/tokens"] == greedy["reward/tokens"]
    assert a["sampled_reward/tokens"] != greedy["reward/tokens"]
