"""Reward-model judging (`minigpt.evaluation.policy`): the win rate equals a comparison of rewards
computed one sequence at a time, ties count half, and sampled replies are seeded and stop-free."""

from __future__ import annotations

import pytest
import torch

from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.evaluation.policy import sample_replies, win_rate
from minigpt.model.reward_model import create_reward_model
from minigpt.tokenizer import IM_END, render_prompt, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_eval")
    tok = train_tokenizer(["the cat sat on the mat", "a dog ran in the park", "red blue green"] * 20, vocab_size=280, out_dir=root)
    torch.manual_seed(0)
    cfg = MiniGPTConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=96, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, initializer_range=0.2,
    )
    policy = MiniGPTForCausalLM(cfg).eval()
    rm = create_reward_model(policy, hidden_size=16, num_layers=1).eval()
    prompts = [render_prompt(tok, [{"role": "user", "content": t}]) for t in ("the cat", "a dog ran", "red", "blue green sat")]
    return tok, policy, rm, prompts


def test_win_rate_matches_one_by_one_rewards(setup):
    """Each reply is scored alone as prompt + reply + <|im_end|> (no padding at all); the win
    rate is the share of prompts where the candidate's reward is higher, ties half."""
    tok, _, rm, prompts = setup
    ids = tok("the cat sat on the mat a dog ran")["input_ids"]
    cand = [ids[:3], ids[2:7], ids[:1], ids[1:2]]
    base = [ids[:3], ids[:2], ids[3:9], ids[4:5]]  # the first pair is identical: a tie
    im_end = tok.convert_tokens_to_ids(IM_END)

    def alone(p, r):
        with torch.no_grad():
            return float(rm(input_ids=torch.tensor([p + r + [im_end]])).rewards[0])

    a = [alone(p, r) for p, r in zip(prompts, cand)]
    b = [alone(p, r) for p, r in zip(prompts, base)]
    expected = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / 4
    got = win_rate(rm, tok, prompts, cand, base)
    assert got["win_rate"] == pytest.approx(expected)
    assert got["mean_reward"] == pytest.approx(sum(a) / 4, abs=1e-5)
    assert got["baseline_mean_reward"] == pytest.approx(sum(b) / 4, abs=1e-5)
    assert got["mean_reply_tokens"] == (3 + 5 + 1 + 1) / 4
    same = win_rate(rm, tok, prompts, base, base)
    assert same["win_rate"] == 0.5
    with pytest.raises(ValueError, match="3 replies"):
        win_rate(rm, tok, prompts, cand[:3], base)


def test_sample_replies_are_seeded_and_stop_free(setup):
    tok, policy, _, prompts = setup
    stops = {tok.convert_tokens_to_ids(IM_END), tok.eos_token_id}
    a = sample_replies(policy, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3, batch_size=3, dtype=None)
    b = sample_replies(policy, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3, batch_size=3, dtype=None)
    c = sample_replies(policy, tok, prompts, max_new_tokens=8, temperature=1.0, seed=4, batch_size=3, dtype=None)
    assert a == b and a != c
    assert len(a) == 4 and all(len(r) <= 8 and not stops & set(r) for r in a)
