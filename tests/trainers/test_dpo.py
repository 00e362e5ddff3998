"""The DPO family's Python API and its objective: `create_dpo_trainer(...).train_step`
with a frozen reference, precomputed reference log-probs, LoRA with adapters disabled as the
reference, and the reference-free variants (SimPO, ORPO) and KTO.

All on a tiny random model with raw token ids (no tokenizer needed): the properties tested are
exact identities (policy == reference gives zero rewards and loss log 2; precomputed == live),
or changes that could fail (every trainable parameter moves, the reference never does).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from minigpt.errors import UserError
from minigpt.losses.preference import sequence_logprobs
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.lora import apply_lora
from minigpt.objectives.preference import KTOObjective, PreferenceObjective, adapters_disabled, precompute_reference_logprobs, model_sequence_logprobs
from minigpt.objectives.config import DPOConfig
from minigpt.trainers.dpo import DPOTrainer, create_dpo_trainer

VOCAB = 48
PAD = 1


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def tiny_model(seed: int = 0) -> MiniGPTForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=0, initializer_range=0.1,
    )
    return MiniGPTForCausalLM(cfg)


def pairs(seed: int = 1, b: int = 4):
    """`b` pairs sharing a 5-token prompt; chosen replies have 4 tokens, rejected 3..6 (so the
    rejected tensor is right-padded with PAD)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(8, VOCAB, (b, 5), generator=g)
    chosen = torch.cat([prompt, torch.randint(8, VOCAB, (b, 4), generator=g)], dim=1)
    rejected = torch.full((b, 11), PAD)
    for i in range(b):
        n = 3 + i % 4
        rejected[i, : 5 + n] = torch.cat([prompt[i], torch.randint(8, VOCAB, (n,), generator=g)])
    return chosen, rejected


def test_policy_equal_to_reference_gives_zero_rewards_and_loss_log2():
    """With π = π_ref every implicit reward β·log(π/π_ref) is 0, so the sigmoid loss is
    −log σ(0) = log 2 and no pair counts as correctly ranked (accuracy uses a strict >)."""
    policy = tiny_model()
    trainer = create_dpo_trainer(policy, copy.deepcopy(policy), {"beta": 0.1})
    chosen, rejected = pairs()
    m = trainer.evaluate_step(chosen, rejected, prompt_lengths=5)
    assert set(m) >= {"loss", "accuracy", "chosen_reward", "rejected_reward", "reward_margin"}
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["chosen_reward"] == pytest.approx(0.0, abs=1e-6) and m["rejected_reward"] == pytest.approx(0.0, abs=1e-6)
    assert m["accuracy"] == 0.0


def test_train_step_moves_every_policy_parameter_and_never_the_reference():
    policy, ref = tiny_model(), tiny_model()
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    pol_before = {k: v.clone() for k, v in policy.named_parameters()}
    trainer = create_dpo_trainer(policy, ref, DPOConfig(beta=0.5, learning_rate=1e-3))
    chosen, rejected = pairs()
    for _ in range(3):
        m = trainer.train_step(chosen, rejected, prompt_lengths=5)
        assert all(isinstance(v, float) for v in m.values())
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_before[k]), k
    assert all(not p.requires_grad for p in ref.parameters())
    unchanged = [k for k, p in policy.named_parameters() if torch.equal(p, pol_before[k])]
    assert unchanged == []


def test_dpo_training_ranks_the_chosen_replies_first():
    """A few steps on the same batch must push the chosen log-ratios above the rejected ones."""
    policy = tiny_model()
    trainer = create_dpo_trainer(policy, None, DPOConfig(beta=0.5, learning_rate=3e-3))
    assert trainer.ref_policy is not None and trainer.ref_policy is not policy  # frozen copy made
    chosen, rejected = pairs()
    first = trainer.train_step(chosen, rejected, prompt_lengths=5)
    for _ in range(15):
        last = trainer.train_step(chosen, rejected, prompt_lengths=5)
    assert last["loss"] < first["loss"] - 0.1
    assert last["accuracy"] == 1.0 and last["reward_margin"] > 0


def test_precomputed_reference_equals_a_live_reference():
    """The objective fed stored `ref_logprobs` gives exactly the loss of a live reference forward."""
    policy, ref = tiny_model(0), tiny_model(5)
    trainer = create_dpo_trainer(policy, ref, {"beta": 0.3})
    chosen, rejected = pairs()
    batch = trainer.make_batch(chosen, rejected, prompt_lengths=5)
    live = trainer.objective.compute_loss(policy, batch)
    with torch.no_grad():
        ref_logprobs, _ = model_sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["targets"])
    stored = PreferenceObjective("sigmoid", beta=0.3).compute_loss(policy, {**batch, "ref_logprobs": ref_logprobs})
    assert float(stored.loss_sum.detach()) == pytest.approx(float(live.loss_sum.detach()), abs=1e-6)
    assert stored.sums == pytest.approx(live.sums, abs=1e-6)


class _ListDataset:
    """The two methods `precompute_reference_logprobs` needs from a preference dataset."""

    def __init__(self, chosen, rejected):
        self.items = [{"c": c, "r": r} for c, r in zip(chosen, rejected)]
        self.stored = None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])

    def set_reference_logprobs(self, chosen, rejected):
        self.stored = (chosen, rejected)


def test_precompute_reference_logprobs_stores_the_reference_values_in_order():
    policy, ref = tiny_model(0), tiny_model(5)
    trainer = create_dpo_trainer(policy, ref, {"beta": 0.3})
    chosen, rejected = pairs(b=5)

    def collate(items):
        return trainer.make_batch(torch.stack([it["c"] for it in items]), torch.stack([it["r"] for it in items]), prompt_lengths=5)

    ds = _ListDataset(chosen, rejected)
    precompute_reference_logprobs(trainer.objective, policy, ds, collate, batch_size=2, device=torch.device("cpu"))
    batch = collate(ds.items)
    with torch.no_grad():
        expect, _ = model_sequence_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["targets"])
    assert ds.stored[0] == pytest.approx(expect[:5].tolist(), abs=1e-5)
    assert ds.stored[1] == pytest.approx(expect[5:].tolist(), abs=1e-5)


def test_selected_positions_head_equals_the_full_forward():
    """`model_sequence_logprobs` runs the LM head only on target positions and drops a right-padding mask;
    it must equal Σ log-probs from the full logits (with the mask) gathered naively."""
    model = tiny_model().eval()
    trainer = create_dpo_trainer(model, copy.deepcopy(model), {})
    batch = trainer.make_batch(*pairs(), prompt_lengths=5)
    with torch.no_grad():
        fast, n_fast = model_sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["targets"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        slow, n_slow = sequence_logprobs(logits, batch["targets"])
    assert torch.equal(n_fast, n_slow)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_make_batch_scores_only_reply_tokens():
    model = tiny_model()
    trainer = create_dpo_trainer(model, copy.deepcopy(model), {})
    chosen, rejected = pairs()
    batch = trainer.make_batch(chosen, rejected, prompt_lengths=5)
    scored = (batch["targets"] != -100).sum(dim=1).tolist()
    assert scored == [4, 4, 4, 4] + [3, 4, 5, 6]
    row = 5  # rejected of pair 1: prompt 5 + reply 4 tokens
    assert batch["targets"][row, 4:8].tolist() == rejected[1, 5:9].tolist()


def test_lora_reference_is_the_model_with_adapters_disabled():
    """With LoRA no reference copy is made: the reference log-probs are the base model's, and
    training moves the adapters only."""
    base = tiny_model()
    frozen_base = copy.deepcopy(base)
    policy = apply_lora(base, rank=4, alpha=8, verbose=False)
    trainer = create_dpo_trainer(policy, None, DPOConfig(beta=0.5, learning_rate=5e-3))
    assert trainer.ref_policy is None
    chosen, rejected = pairs()
    for _ in range(3):
        trainer.train_step(chosen, rejected, prompt_lengths=5)
    batch = trainer.make_batch(chosen, rejected, prompt_lengths=5)
    with torch.no_grad():
        ref = trainer.objective.reference_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["targets"])
        base_logprobs, _ = model_sequence_logprobs(frozen_base, batch["input_ids"], batch["attention_mask"], batch["targets"])
        trained, _ = model_sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["targets"])
    assert torch.allclose(ref, base_logprobs, atol=1e-5)
    assert not torch.allclose(trained, base_logprobs, atol=1e-3)  # the adapters did change the policy
    with torch.no_grad():
        with adapters_disabled(policy):
            inside, _ = model_sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["targets"])
        after, _ = model_sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["targets"])
    assert torch.allclose(inside, base_logprobs, atol=1e-5) and torch.equal(after, trained)  # switched back on
    base_params = {k.replace(".base_layer", ""): v for k, v in policy.named_parameters() if "lora_" not in k}
    for k, v in frozen_base.named_parameters():
        assert torch.equal(base_params[k], v), k


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_keep_no_reference_and_learn(loss_type):
    policy = tiny_model()
    trainer = create_dpo_trainer(policy, tiny_model(9), {"loss_type": loss_type, "beta": 2.0 if loss_type == "simpo" else 0.5, "learning_rate": 3e-3})
    assert trainer.ref_policy is None and trainer.objective.reference is None
    chosen, rejected = pairs()
    first = trainer.train_step(chosen, rejected, prompt_lengths=5)
    for _ in range(15):
        last = trainer.train_step(chosen, rejected, prompt_lengths=5)
    assert last["loss"] < first["loss"] and last["accuracy"] == 1.0


def test_kto_step_on_pairs_starts_at_one_half():
    """Policy == reference: every log-ratio r = 0 and the KL reference point z0 = 0, so each
    example's KTO loss is 1 − σ(0) = 0.5 whatever its label (weights 1)."""
    policy = tiny_model()
    trainer = create_dpo_trainer(policy, copy.deepcopy(policy), {"loss_type": "kto"})
    assert isinstance(trainer.objective, KTOObjective)
    chosen, rejected = pairs()
    m = trainer.evaluate_step(chosen, rejected, prompt_lengths=5)
    assert m["loss"] == pytest.approx(0.5, abs=1e-6)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["desirable"] == pytest.approx(0.5) and m["undesirable"] == pytest.approx(0.5)


def test_bad_config_and_inputs_are_clear_errors():
    policy = tiny_model()
    with pytest.raises(UserError, match="unknown DPOConfig field"):
        create_dpo_trainer(policy, None, {"betta": 0.1})
    with pytest.raises(UserError, match="loss_type"):
        DPOConfig(loss_type="dpo2")
    trainer = create_dpo_trainer(policy, copy.deepcopy(policy), {})
    chosen, rejected = pairs()
    with pytest.raises(UserError, match="rows"):
        trainer.train_step(chosen, rejected[:2], prompt_lengths=5)
    with pytest.raises(UserError, match="none after its prompt"):
        trainer.train_step(chosen, rejected, prompt_lengths=9)
