"""A chat model's default reply length comes from the replies it was trained on: `minigpt sft`
saves it as `generation_config.max_new_tokens`, and `chat` / `generate` use it unless told
otherwise (a small model that never says `<|im_end|>` used to run on for 256 tokens)."""

from __future__ import annotations

import json

import pytest

from minigpt.cli import main
from minigpt.errors import UserError
from minigpt.inference.chat import model_reply_budget
from minigpt.data.sft import reply_budget

from tiny_models import save_tiny_chat_model


def test_the_budget_is_the_99th_percentile_reply_with_a_margin():
    # 100 conversations of 10 trained tokens and one of 40: the 99th percentile is 10 -> 12.5 -> 16.
    assert reply_budget([10] * 100 + [40], context=512) == 16
    # Four: ceil(0.99 * 4) = 4th smallest = 40 -> 50 -> rounded up to 64; capped by the context.
    assert reply_budget([3, 5, 10, 40], context=512) == 64
    assert reply_budget([3, 5, 10, 40], context=48) == 48
    assert reply_budget([1], context=512) == 16  # never below 16


def test_chat_and_generate_take_the_models_budget_unless_asked(tmp_path):
    class Config:
        max_new_tokens = 48

    class Net:
        generation_config = Config()

    assert model_reply_budget(Net(), 0, 256) == 48
    assert model_reply_budget(Net(), 7, 256) == 7
    Config.max_new_tokens = None
    assert model_reply_budget(Net(), 0, 256) == 256
    with pytest.raises(UserError, match="max_new_tokens"):
        model_reply_budget(Net(), -1, 256)


def test_sft_saves_the_budget_and_chat_stops_there(tmp_path, capsys):
    texts = ["What is 2 + 3?", "5"] * 20
    save_tiny_chat_model(tmp_path / "base", texts, max_position_embeddings=96)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + 3?"},
                                                      {"role": "assistant", "content": str(a + 3)}]}) + "\n" for a in range(30)))
    train = ["--train.max_steps", "1", "--train.eval_interval", "0", "--train.progress", "false", "--train.tensorboard", "false",
             "--train.batch_size", "2", "--train.device", "cpu", "--train.precision", "fp32"]
    assert main(["sft", "--model", str(tmp_path / "base"), "--data", str(chats), "--out", str(tmp_path / "sft"),
                 "--max_length", "64", *train]) == 0
    saved = json.loads((tmp_path / "sft" / "generation_config.json").read_text())
    # Each reply is 1–2 digit tokens plus <|im_end|>: 1.25 × at most 3 rounds up to 16.
    assert saved["max_new_tokens"] == 16
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "sft"), "--prompt", "x", "--greedy"]) == 0
    assert len(capsys.readouterr().out) < 200  # 16 tokens at most (a few characters each), not 200
