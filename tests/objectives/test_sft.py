"""SFT and distillation math: masked / tag-weighted cross-entropy and the distillation loss,
each against a value derived by hand in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.objectives.config import DistillConfig
from minigpt.losses.distill import distillation_loss
from minigpt.losses.lm import IGNORE_INDEX, tag_loss_weights, token_cross_entropy
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.objectives.distill import DistillationObjective
from minigpt.objectives.sft import SFTObjective

TAGS = [4, 5, 6, 7]  # <think> </think> <answer> </answer>


def _tiny(seed=0, vocab=64):
    torch.manual_seed(seed)
    cfg = MiniGPTConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return MiniGPTForCausalLM(cfg).float()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(8, 64, (2, 10), generator=g)
    targets = torch.full((2, 10), IGNORE_INDEX)
    # row 0: assistant tokens at positions 4..8 (a tag at 5 and 8); row 1: positions 2..3
    targets[0, 4:9] = torch.tensor([20, 4, 21, 22, 7])
    targets[1, 2:4] = torch.tensor([30, 5])
    return {"input_ids": ids, "targets": targets, "attention_mask": torch.ones_like(ids)}


def test_sft_loss_is_the_masked_mean_cross_entropy():
    """Expected: (1/7) Σ over the 7 supervised positions of −log softmax(logits)[target],
    computed position by position here."""
    model, batch = _tiny().eval(), _batch()
    seen = []  # the logits the objective's own forward produced, so the check is of the loss alone
    model.register_forward_hook(lambda mod, args, out: seen.append(out.logits.detach()))
    out = SFTObjective(tag_ids=TAGS, tag_weight=10.0).compute_loss(model, batch)  # eval: unweighted
    logits = seen[0]
    total, n = 0.0, 0
    for b in range(2):
        for t in range(10):
            y = int(batch["targets"][b, t])
            if y != IGNORE_INDEX:
                total += -float(torch.log_softmax(logits[b, t].double(), -1)[y])
                n += 1
    assert n == 7
    assert out.num_units == 7
    assert float(out.loss_sum) / out.num_units == pytest.approx(total / n, rel=1e-5)


def test_tag_weights_land_exactly_on_tag_targets():
    batch = _batch()
    w = tag_loss_weights(batch["targets"], TAGS, 10.0)
    expected = torch.zeros(2, 10)
    expected[0, 4:9] = torch.tensor([1.0, 10.0, 1.0, 1.0, 10.0])  # targets 20, <think>, 21, 22, </answer>
    expected[1, 2:4] = torch.tensor([1.0, 10.0])  # 30, </think>
    assert torch.equal(w, expected)


def test_weighted_training_loss_is_normalised_by_the_weight_sum():
    """Training mode: L = Σ w·CE / Σ w with w = 10 on the 3 tag targets, 1 on the 4 others
    (Σ w = 34). Gradients of the chunked loss equal those of a plain weighted F.cross_entropy."""
    model, batch = _tiny().train(), _batch()
    obj = SFTObjective(tag_ids=TAGS, tag_weight=10.0)
    assert obj.num_units(batch) == pytest.approx(34.0)
    out = obj.compute_loss(model, batch)
    assert out.num_units == pytest.approx(34.0)
    (out.loss_sum / out.num_units).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(batch["input_ids"]).logits
    ce = F.cross_entropy(logits.reshape(-1, 64).double(), batch["targets"].reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    w = torch.zeros(20, dtype=torch.double)
    w[4], w[5], w[6], w[7], w[8] = 1, 10, 1, 1, 10
    w[12], w[13] = 1, 10
    ref = (ce * w).sum() / w.sum()
    assert float(out.loss_sum) / out.num_units == pytest.approx(float(ref), rel=1e-5)
    ref.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad.to(got[n].dtype), rtol=1e-4, atol=1e-6, msg=n)


def test_weight_one_is_plain_sft():
    batch = _batch()
    obj = SFTObjective(tag_ids=TAGS, tag_weight=1.0)
    assert obj.num_units(batch) == 7
    model = _tiny().train()
    logits = model(batch["input_ids"]).logits
    assert float(obj.compute_loss(model, batch).loss_sum) == pytest.approx(float(token_cross_entropy(logits, batch["targets"], "sum")), rel=1e-5)


def test_distillation_loss_hand_value():
    """Two positions, V = 2, τ = 2, α = 0.5; the second position is ignored.
    Teacher logits (0, 2·ln 3): softened p_T = softmax(0, ln 3) = (1/4, 3/4).
    Student logits (0, 0): p_S = (1/2, 1/2) at any temperature.
    KL(p_T ‖ p_S) = 1/4·ln(1/2) + 3/4·ln(3/2); CE of target 1 under p_S = ln 2.
    Loss = τ²·KL + α·CE = 4·KL + 0.5·ln 2."""
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 2 * math.log(3)], [1.0, 1.0]]])
    targets = torch.tensor([[1, IGNORE_INDEX]])
    loss, parts = distillation_loss(student, teacher, targets, temperature=2.0, alpha=0.5)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(parts["kl"]) == pytest.approx(kl, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(loss) == pytest.approx(4 * kl + 0.5 * math.log(2), rel=1e-6)
    loss.backward()
    assert torch.all(student.grad[0, 1] == 0)  # the ignored position gets no gradient


def test_distillation_of_a_model_by_itself_is_pure_ce():
    """Teacher == student: KL is 0, so with α = 1 the loss is exactly the student's CE."""
    model, batch = _tiny().eval(), _batch()
    obj = DistillationObjective(_tiny(), DistillConfig(temperature=3.0, alpha=1.0))
    out = obj.compute_loss(model, batch)
    assert out.sums["kl"] == pytest.approx(0.0, abs=1e-6)
    logits = model(batch["input_ids"]).logits
    assert float(out.loss_sum) == pytest.approx(float(token_cross_entropy(logits, batch["targets"], "sum")), rel=1e-5)


def test_distillation_mismatched_vocab_is_an_error():
    with pytest.raises(ValueError, match="same tokenizer|share"):
        distillation_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), torch.zeros(1, 2, dtype=torch.long))


def test_teacher_is_frozen_and_gets_no_gradient():
    teacher = _tiny(seed=3)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    obj = DistillationObjective(teacher, DistillConfig(temperature=2.0, alpha=0.5))
    student = _tiny(seed=4).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(3):
        out = obj.compute_loss(student, _batch())
        (out.loss_sum / out.num_units).backward()
        opt.step()
        opt.zero_grad()
    assert not teacher.training
    for n, p in teacher.named_parameters():
        assert p.grad is None and not p.requires_grad
        assert torch.equal(p, before[n]), n
