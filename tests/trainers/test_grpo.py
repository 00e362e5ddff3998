"""GRPO / GSPO and the rollout engine on tiny random models.

Rollout log-probs equal a full-forward recomputation; the importance ratio is exactly 1 on the
first pass; every trainable parameter changes while the reference never does; the first-pass
loss equals the hand-derived −Σ A·n / Σ n; a toy reward is learned; config resolution and errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.reward_model import MiniGPTRewardModel
from minigpt.objectives.config import GRPOConfig
from minigpt.trainers.grpo import create_grpo_trainer
from minigpt.inference.rollout import RolloutEngine, completion_logprobs

EOS, PAD = 0, 1


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def tiny_config(**kw) -> MiniGPTConfig:
    base = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None,
        initializer_range=0.2,
    )
    base.update(kw)
    return MiniGPTConfig(**base)


def tiny_policy(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    return MiniGPTForCausalLM(tiny_config())


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def test_rollout_logprobs_equal_full_forward_recomputation():
    """Sampling log-probs (temperature 0.7, top-p 0.9, left-padded prompts of 5, 2 and 3 tokens)
    equal `log_softmax(logits / 0.7)` of one fp32 forward over prompt + completion, within 1e-4."""
    model = tiny_policy().eval()
    engine = RolloutEngine(model, eos_token_id=[EOS, 3], pad_token_id=PAD)
    r = engine.sample(PROMPTS, group_size=3, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=11)
    assert r.prompt_ids.shape == (9, 5) and r.completion_ids.shape[0] == 9
    for g, p in enumerate(PROMPTS):  # rows g*3 .. g*3+2 carry prompt g, left-padded
        for row in range(3 * g, 3 * g + 3):
            assert r.prompt_ids[row][r.prompt_mask[row].bool()].tolist() == p
    with torch.no_grad():
        lp = completion_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask, temperature=0.7)
    assert r.completion_mask.sum() > 9
    assert torch.allclose(lp, r.logprobs, atol=1e-4)
    assert (r.logprobs[r.completion_mask == 0] == 0).all()


def test_rollout_masks_and_truncation():
    """The completion mask is ones then zeros; a row is `truncated` exactly when its last
    generated token is not a stop id."""
    model = tiny_policy(1).eval()
    engine = RolloutEngine(model, eos_token_id=[EOS, 3, 4, 5, 6], pad_token_id=PAD)  # frequent stops
    r = engine.sample(PROMPTS, group_size=4, max_new_tokens=6, temperature=1.0, seed=2)
    m = r.completion_mask
    assert bool((m.cummin(dim=1).values == m).all())
    lengths = m.sum(1)
    last = r.completion_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    stopped = torch.isin(last, torch.tensor([EOS, 3, 4, 5, 6]))
    assert torch.equal(r.truncated, ~stopped)
    assert r.truncated.any() and (~r.truncated).any()
    assert bool((lengths[r.truncated] == 6).all())


def test_rollout_rejects_a_prompt_longer_than_the_context():
    engine = RolloutEngine(tiny_policy(), pad_token_id=PAD)
    with pytest.raises(UserError, match=r"prompt 1 has 60 tokens.*context of 64"):
        engine.sample([[5, 6], [7] * 60], max_new_tokens=8)


def _sampled(trainer, prompts=PROMPTS):
    r = trainer.generate(prompts)
    return r, r.input_ids, torch.cat([torch.zeros_like(r.prompt_mask), r.completion_mask], dim=1)


def test_first_pass_ratio_is_exactly_one_and_loss_is_minus_mean_advantage():
    """On the first pass the policy is the sampling policy, so ratio = 1 exactly, nothing is
    clipped, and with β = 0 and token aggregation the loss is −Σ_i A_i·n_i / Σ_i n_i, with
    A_i = (r_i − mean_g)/(std_g + 1e-4) (unbiased std) computed here by hand."""
    policy = tiny_policy()
    trainer = create_grpo_trainer(policy, None, {"group_size": 3, "beta": 0.0, "learning_rate": 1e-3}, sampling={"max_new_tokens": 8})
    assert trainer.ref_model is None  # beta = 0 loads no reference
    r, ids, masks = _sampled(trainer)
    rewards = [1.0, 0.0, 0.5, 2.0, 2.0, -1.0, 0.0, 0.0, 3.0]
    expected_num, expected_den = 0.0, 0.0
    n = r.completion_mask.sum(1).tolist()
    for g in range(3):
        grp = rewards[3 * g : 3 * g + 3]
        mean = sum(grp) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 2)
        for i in range(3):
            a = (grp[i] - mean) / (std + 1e-4)
            expected_num += -a * n[3 * g + i]
            expected_den += n[3 * g + i]
    out = trainer.train_step(ids, masks, rewards=rewards, attention_mask=r.attention_mask)
    assert out["ratio_mean"] == 1.0 and out["ratio_max"] == 1.0 and out["clip_fraction"] == 0.0
    assert out["policy_loss"] == pytest.approx(expected_num / expected_den, abs=1e-5)
    assert out["mean_reward"] == pytest.approx(sum(rewards) / 9)


def test_second_pass_is_off_policy_and_clipped():
    """With two passes the second one sees the updated policy: the ratio moves away from 1."""
    trainer = create_grpo_trainer(tiny_policy(), None, {"group_size": 3, "beta": 0.0, "learning_rate": 5e-2, "num_iterations": 2}, sampling={"max_new_tokens": 8})
    r, ids, masks = _sampled(trainer)
    out = trainer.train_step(ids, masks, rewards=[1.0, 0.0, 0.0] * 3, attention_mask=r.attention_mask)
    assert out["ratio_max"] > 1.0  # averaged over the passes: the second pass's max is above 1


def test_every_parameter_changes_and_the_reference_never_does():
    policy = tiny_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = create_grpo_trainer(policy, None, GRPOConfig(group_size=3, beta=0.1, learning_rate=1e-2), sampling={"max_new_tokens": 8})
    ref_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    r, ids, masks = _sampled(trainer)
    out = trainer.train_step(ids, masks, rewards=[1.0, 0.0, 0.5] * 3, attention_mask=r.attention_mask)
    assert out["kl"] == 0.0  # policy == reference before the update: k3 of log-ratio 0 is 0
    r, ids, masks = _sampled(trainer)
    out = trainer.train_step(ids, masks, rewards=[0.0, 1.0, 0.5] * 3, attention_mask=r.attention_mask)
    assert out["kl"] > 0.0
    unchanged = [k for k, v in policy.state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []
    for k, v in trainer.ref_model.state_dict().items():
        assert torch.equal(v, ref_before[k]), k


def test_grpo_learns_a_toy_reward():
    """Reward = share of completion tokens with an id below 32 (half the vocabulary). GRPO
    raises the mean sampled reward well above its starting level within 30 steps."""
    trainer = create_grpo_trainer(tiny_policy(3), None, {"group_size": 8, "beta": 0.0, "learning_rate": 1e-2}, sampling={"max_new_tokens": 6})
    eos_free = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    torch.manual_seed(0)

    def run() -> float:
        r, ids, masks = _sampled(trainer, eos_free)
        rows = [row[m.bool()].tolist() for row, m in zip(r.completion_ids, r.completion_mask)]
        rewards = [sum(t < 32 for t in row) / len(row) for row in rows]
        trainer.train_step(ids, masks, rewards=rewards, attention_mask=r.attention_mask)
        return sum(rewards) / len(rewards)

    curve = [run() for _ in range(30)]
    start, end = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert end > start + 0.25, (start, end)


def test_train_step_scores_with_the_reward_model():
    """With no rewards given, the reward model's score of each whole row is the reward."""
    torch.manual_seed(4)
    rm = MiniGPTRewardModel(tiny_config()).eval()
    # fp32 pinned: `auto` is bf16 on AVX-512 hosts, and the reference score below is fp32
    trainer = create_grpo_trainer(tiny_policy(), rm, {"group_size": 3, "beta": 0.0}, sampling={"max_new_tokens": 6},
                                  train={"precision": "fp32"})
    r, ids, masks = _sampled(trainer)
    with torch.no_grad():
        expected = rm(input_ids=ids, attention_mask=r.attention_mask).rewards.float().mean().item()
    out = trainer.train_step(ids, masks, attention_mask=r.attention_mask)
    assert out["mean_reward"] == pytest.approx(expected, abs=1e-5)


def test_gspo_defaults_and_config_errors():
    c = GRPOConfig(algorithm="gspo").resolved()
    assert (c.importance_sampling_level, c.aggregation, c.clip_epsilon, c.clip_epsilon_high) == ("sequence", "sequence", 3e-4, 4e-4)
    g = GRPOConfig().resolved()
    assert (g.importance_sampling_level, g.aggregation, g.clip_epsilon, g.clip_epsilon_high) == ("token", "token", 0.2, 0.2)
    with pytest.raises(UserError, match="unknown GRPOConfig field"):
        GRPOConfig.from_dict({"grop_size": 4})
    assert GRPOConfig(algorithm="gspo", clip_epsilon=0.1).resolved().clip_epsilon_high == 4e-4
    assert GRPOConfig(clip_epsilon=0.1).resolved().clip_epsilon_high == 0.1
    with pytest.raises(UserError, match="advantage_type"):
        GRPOConfig(advantage_type="zscore")
    with pytest.raises(UserError, match="rloo needs group_size >= 2"):
        GRPOConfig(advantage_type="rloo", group_size=1)
    trainer = create_grpo_trainer(tiny_policy(), None, {"group_size": 3, "beta": 0.0})
    with pytest.raises(UserError, match="not a multiple of group_size"):
        trainer.train_step(torch.ones(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long), rewards=[0.0] * 4)
    with pytest.raises(UserError, match="needs rewards"):
        trainer.train_step(torch.ones(3, 6, dtype=torch.long), torch.ones(3, 6, dtype=torch.long))


def test_cispo_defaults_and_config_errors():
    c = GRPOConfig(algorithm="cispo").resolved()
    assert (c.importance_sampling_level, c.aggregation, c.clip_epsilon, c.clip_epsilon_high) == ("token", "token", 1.0, 3.0)
    assert GRPOConfig(algorithm="cispo", clip_epsilon=0.2).resolved().clip_epsilon_high == 3.0
    with pytest.raises(UserError, match="importance_sampling_level must be token with algorithm cispo"):
        GRPOConfig(algorithm="cispo", importance_sampling_level="sequence")
    with pytest.raises(UserError, match="clip_epsilon must be < 1"):
        GRPOConfig(clip_epsilon=1.5)


def test_cispo_first_pass_loss_is_minus_advantage_times_log_prob():
    """CISPO's first pass: weight 1, so the token-mean loss is −Σ_i A_i·Σ_t ℓ_{i,t} / Σ_i n_i with
    the completion log-probs ℓ of the policy before the step (fp32, recomputed here) and the
    group advantages by hand; GRPO's loss on the same batch is −Σ A_i·n_i / Σ n_i instead."""
    policy = tiny_policy()
    trainer = create_grpo_trainer(policy, None, {"algorithm": "cispo", "group_size": 3, "beta": 0.0, "learning_rate": 1e-3},
                                  sampling={"max_new_tokens": 8}, train={"precision": "fp32"})
    r, ids, masks = _sampled(trainer)
    rewards = [1.0, 0.0, 0.5, 2.0, 2.0, -1.0, 0.0, 0.0, 3.0]
    with torch.no_grad():
        lp = completion_logprobs(policy, r.input_ids, r.attention_mask, r.completion_mask, temperature=1.0)
    num, den = 0.0, float(r.completion_mask.sum())
    for g in range(3):
        grp = rewards[3 * g : 3 * g + 3]
        mean = sum(grp) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 2)
        for i in range(3):
            num += -(grp[i] - mean) / (std + 1e-4) * float(lp[3 * g + i].sum())
    out = trainer.train_step(ids, masks, rewards=rewards, attention_mask=r.attention_mask)
    assert out["ratio_mean"] == 1.0 and out["clip_fraction"] == 0.0
    assert out["policy_loss"] == pytest.approx(num / den, abs=1e-4)


def test_cispo_learns_a_toy_reward():
    """The reward of test_grpo_learns_a_toy_reward (share of ids below 32), learned by CISPO."""
    trainer = create_grpo_trainer(tiny_policy(3), None, {"algorithm": "cispo", "group_size": 8, "beta": 0.0, "learning_rate": 1e-2},
                                  sampling={"max_new_tokens": 6})
    torch.manual_seed(0)
    curve = []
    for _ in range(30):
        r, ids, masks = _sampled(trainer, [[10, 11, 12], [20, 21], [30, 31, 32, 33]])
        rows = [row[m.bool()].tolist() for row, m in zip(r.completion_ids, r.completion_mask)]
        rewards = [sum(t < 32 for t in row) / len(row) for row in rows]
        trainer.train_step(ids, masks, rewards=rewards, attention_mask=r.attention_mask)
        curve.append(sum(rewards) / len(rewards))
    assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.25, curve


def test_gspo_step_uses_the_sequence_ratio():
    """GSPO's first pass: the sequence ratio is 1 too; a second pass with a large step moves it
    and GSPO's tiny clip range (3e-4 / 4e-4) clips whole sequences."""
    trainer = create_grpo_trainer(copy.deepcopy(tiny_policy()), None, {"algorithm": "gspo", "group_size": 3, "beta": 0.0, "learning_rate": 5e-2, "num_iterations": 2}, sampling={"max_new_tokens": 8})
    r, ids, masks = _sampled(trainer)
    out = trainer.train_step(ids, masks, rewards=[1.0, 0.0, 0.0] * 3, attention_mask=r.attention_mask)
    assert out["clip_fraction"] > 0.0


def test_rollouts_follow_fused_optimizer_updates():
    """Fused AdamW (the loop's optimizer) changes weights without moving `_version`; the
    rollout engine must still sample from the updated policy: after a large update its bf16
    log-probs equal those of a brand-new engine on the same weights, not the old ones."""
    policy = tiny_policy(5)
    engine = RolloutEngine(policy, pad_token_id=PAD, dtype=torch.bfloat16)
    before = engine.sample(PROMPTS, max_new_tokens=6, temperature=0.0)
    opt = torch.optim.AdamW(policy.parameters(), lr=0.5, fused=True)
    versions = [p._version for p in policy.parameters()]
    policy(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    opt.step()
    assert [p._version for p in policy.parameters()] == versions  # the trap this guards against
    after = engine.sample(PROMPTS, max_new_tokens=6, temperature=0.0)
    fresh = RolloutEngine(policy, pad_token_id=PAD, dtype=torch.bfloat16).sample(PROMPTS, max_new_tokens=6, temperature=0.0)
    assert torch.equal(after.completion_ids, fresh.completion_ids)
    assert torch.equal(after.logprobs, fresh.logprobs)
    assert not torch.equal(after.logprobs, before.logprobs)


def test_relative_advantage_trains_on_r_minus_group_mean():
    """`GRPOConfig(advantage_type="relative")` keeps its name and computes r − mean(group): the
    experience of rewards [1, 0, 0, 0] carries advantages (0.75, −0.25, −0.25, −0.25)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = GRPOConfig(advantage_type="relative", group_size=4, beta=0.0)
    assert c.advantage_type == "relative"
    trainer = create_grpo_trainer(tiny_policy(), None, c, sampling={"max_new_tokens": 6})
    rollout = trainer.generate([[5, 6, 7]])
    batches = trainer.objective.experience(
        trainer.policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask, torch.tensor([1.0, 0.0, 0.0, 0.0]), None
    )
    assert torch.allclose(torch.cat([b["advantages"] for b in batches]), torch.tensor([0.75, -0.25, -0.25, -0.25]))
