"""PPO-RLHF pieces and the Python API: the critic's per-token values, the per-token
reward (KL penalty plus the score on the last token), GAE wiring inside the objective, the
adaptive KL controller, the on-policy ratio, the early stop, the two learning rates, and the
`ActorCritic` checkpoint layout.

Tiny random models (hidden 32, 2 layers, vocabulary 300), fp32 on the CPU, one thread. Token
ids: 1 is the pad id, 3 the stop id (no tokenizer needed for the reward-model path).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.reward_model import MiniGPTRewardModel
from minigpt.losses.kl import AdaptiveKLController, token_rewards
from minigpt.objectives.ppo import PPOObjective
from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import PPO_SAMPLING, RLHFConfig
from minigpt.objectives.ppo import ActorCritic
from minigpt.trainers.rlhf import create_rlhf_trainer
from minigpt.model.reward_model import create_reward_model
from minigpt.train import checkpoint as ckpt
from minigpt.train.optim import param_groups

PAD, STOP = 1, 3
PROMPTS = torch.tensor([[PAD, PAD, 10, 11], [PAD, 12, 13, 14], [20, 21, 22, 23], [PAD, PAD, PAD, 30]])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def tiny_policy(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, eos_token_id=STOP, pad_token_id=PAD,
                        bos_token_id=None, initializer_range=0.1)
    return MiniGPTForCausalLM(cfg)


def tiny_reward_model(seed: int = 1) -> MiniGPTRewardModel:
    torch.manual_seed(seed)
    rm = create_reward_model(tiny_policy(seed), hidden_size=32)
    for p in rm.score.parameters():  # a head large enough that rewards differ between samples
        nn.init.normal_(p, std=0.5)
    return rm


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def make_trainer(**config):
    base = {"ppo_epochs": 2, "mini_batch_size": 2, "learning_rate": 1e-2}
    return create_rlhf_trainer(tiny_policy(), tiny_reward_model(), {**base, **config}, sampling={"max_new_tokens": 6})


# ---------------------------------------------------------------------------------- the critic
def test_token_values_score_every_prefix():
    """`token_values[b, t]` is the score head on position t's hidden state. By hand: the head is
    `W2 · gelu(W1 h + b1) + b2` (two layers). And since a causal decoder's state at t sees only
    tokens 0..t, it must equal the reward (last-token pooling) of the prefix `ids[:, :t+1]` —
    a separate code path (`forward` + `pool_hidden`). Padding positions are 0. One right-padded
    and one left-padded row."""
    rm = tiny_reward_model().eval()
    ids = torch.tensor([[5, 6, 7, 8, PAD, PAD], [PAD, PAD, 9, 10, 11, 12]])
    mask = (ids != PAD).long()
    with torch.no_grad():
        values = rm.token_values(ids, mask)
        h = rm.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lin1, lin2 = [m for m in rm.score.layers if isinstance(m, nn.Linear)]
        by_hand = F.linear(F.gelu(F.linear(h, lin1.weight, lin1.bias)), lin2.weight, lin2.bias).squeeze(-1)
        assert values.shape == (2, 6) and values.dtype == torch.float32
        assert torch.allclose(values[mask.bool()], by_hand[mask.bool()], atol=1e-6)
        assert torch.all(values[mask == 0] == 0)
        for b in range(2):
            for t in range(6):
                if mask[b, t]:
                    prefix = rm(input_ids=ids[b : b + 1, : t + 1], attention_mask=mask[b : b + 1, : t + 1]).rewards
                    assert float(values[b, t]) == pytest.approx(float(prefix), abs=1e-5)
        assert len(set(values[mask.bool()].tolist())) == int(mask.sum())  # not one constant


def test_actor_critic_values_are_the_state_before_each_completion_token():
    """`ActorCritic.forward` returns V_t = the critic's value at position P + t − 1 (the state
    before completion token t), log-probs of the completion tokens, and 0 off the mask."""
    policy, critic = tiny_policy(), tiny_reward_model()
    ac = ActorCritic(policy, critic).eval()
    ids = torch.tensor([[PAD, 10, 11, 40, 41, STOP], [12, 13, 14, 42, PAD, PAD]])  # P = 3, N = 3
    attn = (ids != PAD).long()
    comp = torch.tensor([[1, 1, 1], [1, 0, 0]])
    with torch.no_grad():
        logprobs, entropy, values = ac(ids, attn, comp)
        full = critic.token_values(ids, attn)
        logits = policy(input_ids=ids, attention_mask=attn).logits.log_softmax(-1)
    assert torch.allclose(values[0], full[0, 2:5], atol=1e-6)
    assert float(values[1, 0]) == pytest.approx(float(full[1, 2]), abs=1e-6) and values[1, 1:].eq(0).all()
    assert float(logprobs[0, 2]) == pytest.approx(float(logits[0, 4, STOP]), abs=1e-5)
    assert float(logprobs[1, 0]) == pytest.approx(float(logits[1, 2, 42]), abs=1e-5)
    assert entropy[0].gt(0).all() and entropy[1, 1:].eq(0).all()


# ------------------------------------------------------------------------- per-token reward
def test_token_rewards_hand_example():
    """Row 0 has 3 tokens, row 1 two (padded). KL_t = logprobs − ref (k1):
    row 0: [0.5, −1, 0]; row 1: [0, 1, ·]. r = −0.5·KL, plus the score on the last token:
    row 0: [−0.25, 0.5, 0 + 2] ; row 1: [0, −0.5 − 1, 0]. With k3 the first token's KL is
    e^{−0.5} − 1 + 0.5."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -2.2, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef=0.5)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.5, 2.0], [0.0, -1.5, 0.0]]))
    rewards3, kl3 = token_rewards(scores, logprobs, ref, mask, kl_coef=0.5, kl_estimator="k3")
    assert float(kl3[0, 0]) == pytest.approx(math.exp(-0.5) - 1 + 0.5, abs=1e-6)
    assert float(rewards3[0, 0]) == pytest.approx(-0.5 * (math.exp(-0.5) - 0.5), abs=1e-6)
    assert (kl3 >= 0).all()


class _StubActorCritic(nn.Module):
    """Returns fixed log-probs and values, so `experience` can be checked on hand numbers."""

    def __init__(self, logprobs, values):
        super().__init__()
        self.policy = nn.Linear(1, 1)
        self.logprobs, self.values = logprobs, values

    def forward(self, input_ids, attention_mask, completion_mask, temperature=1.0, return_entropy=True):
        return self.logprobs, None, self.values


def test_experience_assembles_rewards_and_gae_on_hand_numbers():
    """Through `PPOObjective.experience` with γ = λ = 1 (GAE = reward-to-go − V), no whitening,
    kl_coef 0.5, missing_eos_penalty 1 on the truncated row 0.
    Scores: row 0: 2 − 1 = 1, row 1: −1. Rewards (see the test above, new score):
    row 0: [−0.25, 0.5, 1.0], row 1: [0, −1.5, ·]. Returns = reward-to-go:
    row 0: [1.25, 1.5, 1.0], row 1: [−1.5, −1.5, 0]. Values row 0 [0.1, 0.2, 0.3], row 1
    [0.5, −0.5, (9 ignored)] -> advantages row 0 [1.15, 1.3, 0.7], row 1 [−2.0, −1.0, 0].
    Logged: mean_reward 0, mean_kl (−0.5 + 1)/2 = 0.25, rlhf_reward 0 − 0.5·0.25."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -2.2, -9.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    config = RLHFConfig(kl_coef=0.5, gamma=1.0, gae_lambda=1.0, whiten_advantages=False, ppo_epochs=1, missing_eos_penalty=1.0)
    objective = PPOObjective(config, PPO_SAMPLING)
    objective.reference_logprobs = lambda *args: ref
    ids = torch.arange(10).reshape(2, 5)
    batches = list(objective.experience(_StubActorCritic(logprobs, values), ids, torch.ones(2, 5), mask,
                                        torch.tensor([2.0, -1.0]), torch.tensor([True, False])))
    assert len(batches) == 1
    mb = batches[0]
    assert torch.allclose(mb["returns"], torch.tensor([[1.25, 1.5, 1.0], [-1.5, -1.5, 0.0]]))
    assert torch.allclose(mb["advantages"], torch.tensor([[1.15, 1.3, 0.7], [-2.0, -1.0, 0.0]]))
    assert torch.equal(mb["values"], values)
    assert "old_logprobs" not in mb  # on-policy: the ratio will be exactly 1
    m = mb["rollout_metrics"]
    assert m["mean_reward"] == pytest.approx(0.0, abs=1e-7)
    assert m["mean_kl"] == pytest.approx(0.25)
    assert m["rlhf_reward"] == pytest.approx(-0.125)
    assert m["kl_coef"] == 0.5


def test_adaptive_kl_controller_hand_numbers():
    """β = 0.1, target 6, horizon 100, rollouts of n = 10: KL 9 -> e = clip(0.5) = 0.2,
    β = 0.1·(1 + 0.2·0.1) = 0.102; KL 5.4 -> e = −0.1, β = 0.102·0.99 = 0.10098; KL 0 ->
    e = clip(−1) = −0.2, β·0.98. A fixed controller never moves; the state round-trips."""
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(9.0, 10) == pytest.approx(0.102)
    assert ctl.update(5.4, 10) == pytest.approx(0.10098)
    assert ctl.update(0.0, 10) == pytest.approx(0.10098 * 0.98)
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(100.0, 10) == 0.1
    other = AdaptiveKLController(0.5, target=6.0, horizon=100)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
    with pytest.raises(UserError, match="target"):
        AdaptiveKLController(0.1, target=0.0)


# ------------------------------------------------------------------------------ Python API
def test_train_step_moves_policy_and_critic_but_not_reference_or_reward_model():
    """Every trainable parameter of the policy and the critic changes after one train_step;
    the frozen reference (a copy of the starting policy) and the reward model do not."""
    trainer = make_trainer()
    policy0, critic0 = snapshot(trainer.policy), snapshot(trainer.model.value_model)
    ref0, rm0 = snapshot(trainer.ref_model), snapshot(trainer.reward_model)
    out = trainer.train_step(PROMPTS, (PROMPTS != PAD).long())
    for name, p in trainer.policy.named_parameters():
        assert not torch.equal(p, policy0[name]), f"policy parameter {name} did not change"
    for name, p in trainer.model.value_model.named_parameters():
        assert not torch.equal(p, critic0[name]), f"critic parameter {name} did not change"
    for name, p in trainer.ref_model.named_parameters():
        assert torch.equal(p, ref0[name]), f"reference parameter {name} changed"
    for name, p in trainer.reward_model.named_parameters():
        assert torch.equal(p, rm0[name]), f"reward model parameter {name} changed"
    for key in ("mean_reward", "mean_kl", "ppo_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "kl_coef"):
        assert math.isfinite(out[key]), key
    assert out["updates"] == 4  # 2 epochs × 2 mini-batches of 2 prompts
    assert out["mean_kl"] == 0.0  # the first rollout samples from the reference itself


def test_ratio_is_exactly_one_on_the_first_micro_batch_only():
    """The first micro-batch of a rollout sees the policy that sampled it: ratio 1, no
    clipping, approximate KL 0 — exactly, not approximately. After an update (lr 1e-2) the
    next micro-batch's ratio moves."""
    trainer = make_trainer()
    trainer.train_step(PROMPTS, (PROMPTS != PAD).long())
    first, second = trainer.history[0], trainer.history[1]
    assert first["ratio_mean"] == 1.0 and first["ratio_max"] == 1.0
    assert first["clip_fraction"] == 0.0 and first["approx_kl"] == 0.0
    assert second["approx_kl"] > 0.0 and second["ratio_max"] > 1.0


def test_on_policy_micro_batches_follow_the_optimizer_step():
    """With grad_accum 2 every micro-batch until the end of the current optimizer step is
    on-policy (no `old_logprobs`). Rollout 1: 3 passes of 1 micro-batch -> the first 2 are
    on-policy. Rollout 2 is made after 3 micro-batches (mid-step): only its first is. The stored
    old log-probs are the policy's at sampling."""
    policy, critic = tiny_policy(), tiny_reward_model()
    ac = ActorCritic(policy, critic)
    config = RLHFConfig(ppo_epochs=3, kl_coef=0.0)
    objective = PPOObjective(config, SamplingOptions(max_new_tokens=5), reward_model=tiny_reward_model(2), eos_token_id=STOP, pad_token_id=PAD, grad_accum=2)
    prompts = [[10, 11], [12, 13, 14]]
    first = list(objective.rollout(ac, prompts))
    second = list(objective.rollout(ac, prompts))
    assert ["old_logprobs" in mb for mb in first] == [False, False, True]
    assert ["old_logprobs" in mb for mb in second] == [False, True, True]
    mb = first[2]
    with torch.no_grad():
        lp, _, _ = ac(mb["input_ids"], mb["attention_mask"], mb["completion_mask"], return_entropy=False)
    assert torch.allclose(mb["old_logprobs"], lp, atol=1e-5)


def test_target_kl_stops_the_rest_of_the_rollout():
    """4 passes over one micro-batch. The first is on-policy (approx_kl exactly 0, not above
    1e-9); the second, after an update, exceeds 1e-9, so passes 3 and 4 are dropped: 2
    updates. Without target_kl all 4 run."""
    stopped = make_trainer(ppo_epochs=4, mini_batch_size=0, target_kl=1e-9)
    assert stopped.train_step(PROMPTS, (PROMPTS != PAD).long())["updates"] == 2
    assert stopped.objective.early_stops == 1
    full = make_trainer(ppo_epochs=4, mini_batch_size=0)
    assert full.train_step(PROMPTS, (PROMPTS != PAD).long())["updates"] == 4
    assert full.objective.early_stops == 0


def test_value_model_learns_at_its_own_rate():
    """`value_learning_rate` reaches the optimizer through `lr_scale` groups: the critic's
    parameters (all of them, once) at 5e-3, the policy's at 1e-3. `param_groups` without `lr`
    keeps the scale only (the training loop's default lr applies)."""
    trainer = make_trainer(learning_rate=1e-3, value_learning_rate=5e-3)
    by_lr: dict[float, set[int]] = {}
    for g in trainer.optimizer.param_groups:
        by_lr.setdefault(round(g["lr"], 12), set()).update(id(p) for p in g["params"])
    assert by_lr[5e-3] == {id(p) for p in trainer.model.value_model.parameters()}
    assert by_lr[1e-3] == {id(p) for p in trainer.policy.parameters()}
    plain = param_groups(trainer.model, 0.0)
    scaled = [g for g in plain if "lr_scale" in g]
    assert [g["lr_scale"] for g in scaled] == [5.0, 5.0] and all("lr" not in g for g in plain)
    assert len(param_groups(tiny_policy(), 0.0)) == 2  # models without lr_scale: unchanged


def test_lora_policy_uses_adapters_disabled_as_reference():
    """With LoRA the reference is the policy with its adapters off: no copy is made, the first
    rollout's KL is exactly 0 (B = 0 at the start), only adapter weights move."""
    from minigpt.model.lora import apply_lora

    policy = apply_lora(tiny_policy(), rank=4, alpha=8, verbose=False)
    base0 = {k: v.clone() for k, v in policy.named_parameters() if "lora_" not in k}
    trainer = create_rlhf_trainer(policy, tiny_reward_model(), {"ppo_epochs": 1, "learning_rate": 1e-2}, sampling={"max_new_tokens": 6})
    assert trainer.ref_model is None
    out = trainer.train_step(PROMPTS, (PROMPTS != PAD).long())
    assert out["mean_kl"] == 0.0
    assert all(torch.equal(p, base0[k]) for k, p in policy.named_parameters() if "lora_" not in k)
    second = trainer.train_step(PROMPTS, (PROMPTS != PAD).long())
    assert second["mean_kl"] != 0.0  # the adapters moved the policy away from the base


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="ppo_epochs"):
        create_rlhf_trainer(tiny_policy(), tiny_reward_model(), {"ppo_epoch": 2})
    with pytest.raises(UserError, match="gamma"):
        RLHFConfig(gamma=1.5)
    with pytest.raises(UserError, match="reward model or reward functions"):
        create_rlhf_trainer(tiny_policy(), None, {})


# ------------------------------------------------------------------------------ checkpoints
def test_actor_critic_checkpoint_round_trip(tmp_path):
    """`save_pretrained` puts the policy at the top (loadable alone) and the critic in
    value_model/; `load_checkpoint` reads both (critic keys prefixed `value_model.`) and a
    fresh `ActorCritic.load_state_dict` restores every tensor; the only missing key is the
    tied LM head. `state_dict()` (keys prefixed `policy.`) round-trips too."""
    from transformers import AutoModelForCausalLM

    ac = ActorCritic(tiny_policy(0), tiny_reward_model(1))
    path = ckpt.save_checkpoint(tmp_path, 7, ac, {"step": 7})
    assert (path / "value_model" / "model.safetensors").is_file()
    state, weights = ckpt.load_checkpoint(path)
    assert state["step"] == 7
    assert any(k.startswith("value_model.score.") for k in weights)
    fresh = ActorCritic(tiny_policy(5), tiny_reward_model(6))
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    fresh.tie_weights()
    for (name, a), (_, b) in zip(ac.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    loaded = AutoModelForCausalLM.from_pretrained(str(path))
    ids = torch.tensor([[10, 11, 12]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, ac.policy(input_ids=ids).logits, atol=1e-6)
    again = ActorCritic(tiny_policy(8), tiny_reward_model(9))
    again.load_state_dict(ac.state_dict())
    assert torch.equal(again.value_model.score.layers[-1].weight, ac.value_model.score.layers[-1].weight)
    with pytest.raises(RuntimeError, match="unexpected"):
        again.load_state_dict({**ac.state_dict(), "value_model.bogus": torch.zeros(1)})
