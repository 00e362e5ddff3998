"""Contrastive pretraining (SimCLR, MoCo) and the text augmentations."""

from __future__ import annotations

import pytest
import torch

from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTModel
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.pretraining import ContrastiveConfig, TextAugmentation, create_contrastive_pretrainer

VOCAB = 60


def _config(**kw) -> MiniGPTConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return MiniGPTConfig(**{**base, **kw})


def _pairs(g: torch.Generator, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of each row: the same 12 random tokens, the second with 2 of them masked."""
    x = torch.randint(10, VOCAB, (rows, 12), generator=g)
    return x, TextAugmentation.random_mask(x, 9, 0.2, generator=g)


def test_simclr_learns_to_match_views():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    trainer = create_contrastive_pretrainer(MiniGPTForMaskedLM(_config()), 32, {"temperature": 0.1, "projection_dim": 16, "learning_rate": 1e-3})
    rows = [trainer.train_step(*_pairs(g)) for _ in range(120)]
    assert set(rows[0]) == {"loss", "accuracy"} and all(isinstance(v, float) for v in rows[0].values())
    first, last = rows[:10], rows[-20:]  # means over several steps: one batch of 8 is noisy
    first_loss = sum(r["loss"] for r in first) / len(first)
    last_loss = sum(r["loss"] for r in last) / len(last)
    last_accuracy = sum(r["accuracy"] for r in last) / len(last)
    assert last_loss < first_loss / 2 and last_accuracy >= 0.9, (first_loss, last_loss, last_accuracy)
    x1, x2 = _pairs(g, 16)  # held-out texts: each view's nearest neighbour is its partner
    e1, e2 = trainer.embed(x1), trainer.embed(x2)
    assert e1.shape == (16, 32) and torch.allclose(e1.norm(dim=-1), torch.ones(16), atol=1e-5)
    assert ((e1 @ e2.T).argmax(-1) == torch.arange(16)).float().mean() >= 0.75


def test_moco_key_encoder_is_the_ema_and_the_queue_is_fifo():
    """After a step: θ_k = m·θ_k_before + (1 − m)·θ_q_after, with no gradient on the key encoder;
    the queue holds the newest keys, oldest first, and never the batch being scored."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    trainer = create_contrastive_pretrainer(
        MiniGPTModel(_config(use_bidirectional_attention=True)), 32,
        {"use_momentum_encoder": True, "queue_size": 12, "momentum": 0.9, "projection_dim": 8},
    )
    key = trainer.objective.key_encoder
    before = [p.detach().clone() for p in key.parameters()]
    trainer.train_step(*_pairs(g, 4))
    for k0, k1, q in zip(before, key.parameters(), trainer.model.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q.detach(), atol=1e-6)
        assert k1.grad is None and not k1.requires_grad
    first_keys = trainer.objective.queue.clone()
    assert first_keys.shape == (8, 8)  # both sides' keys of the 4 pairs
    trainer.train_step(*_pairs(g, 4))
    queue = trainer.objective.queue
    assert queue.shape == (12, 8)  # 16 keys seen, the 4 oldest dropped
    assert torch.equal(queue[:4], first_keys[4:])  # FIFO: the first batch's newer keys stay, in order


def test_moco_first_step_has_a_gradient():
    """The queue is empty at step 1: the batch's other keys are the negatives, so the loss is
    above 0 (a positive alone gives exactly 0) and reaches the encoder's weights."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    trainer = create_contrastive_pretrainer(MiniGPTModel(_config()), 32, {"use_momentum_encoder": True, "queue_size": 64, "projection_dim": 8})
    assert trainer.objective.queue is None
    x1, x2 = _pairs(g, 4)
    batch = {"input_ids_1": x1, "attention_mask_1": torch.ones_like(x1), "input_ids_2": x2, "attention_mask_2": torch.ones_like(x2)}
    out = trainer.objective.compute_loss(trainer.model, batch)
    assert out.loss_sum.item() > 0
    out.loss_sum.backward()
    q_proj = trainer.model.model.layers[0].self_attn.q_proj.weight
    assert q_proj.grad is not None and q_proj.grad.abs().sum() > 0
    trainer.objective._pending = []  # this probe's keys are not a step's


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(10, 30).repeat(50, 1)  # (50, 20)
    masked = TextAugmentation.random_mask(ids, 9, 0.3, generator=g)
    share = (masked == 9).float().mean().item()
    assert abs(share - 0.3) < 0.03 and torch.equal(masked[masked != 9], ids[masked != 9])
    out, mask = TextAugmentation.random_delete(ids, 0.5, generator=g)
    for row, m, orig in zip(out, mask, ids):
        kept = row[m.bool()]
        assert kept.numel() >= 1 and (torch.diff(kept) > 0).all()  # survivors keep their order
        assert set(kept.tolist()) <= set(orig.tolist()) and (row[~m.bool()] == 1).all()
    all_gone, all_mask = TextAugmentation.random_delete(torch.tensor([5, 6, 7]), 1.0)
    assert all_gone.tolist() == [5, 1, 1] and all_mask.tolist() == [1, 0, 0]
    swapped = TextAugmentation.random_swap(ids, 0.3, generator=g)
    assert (swapped != ids).any()
    assert torch.equal(swapped.sort(dim=1).values, ids.sort(dim=1).values)  # a permutation of each row
    padded = torch.tensor([[10, 11, 12, 1, 1]])
    att = torch.tensor([[1, 1, 1, 0, 0]])
    assert (TextAugmentation.random_swap(padded, 1.0, att, generator=g)[:, 3:] == 1).all()
    assert (TextAugmentation.random_mask(padded, 9, 1.0, att)[:, 3:] == 1).all()


def test_bad_input_is_a_clear_error():
    model = MiniGPTModel(_config())
    trainer = create_contrastive_pretrainer(model, 32, {"projection_dim": 8})
    with pytest.raises(UserError, match="at least 2 pairs"):
        trainer.train_step(torch.randint(10, VOCAB, (1, 5)), torch.randint(10, VOCAB, (1, 5)))
    with pytest.raises(UserError, match="x1 has 2 rows but x2 has 3"):
        trainer.train_step(torch.randint(10, VOCAB, (2, 5)), torch.randint(10, VOCAB, (3, 5)))
    with pytest.raises(UserError, match="hidden_size 16"):
        create_contrastive_pretrainer(model, 16)
    with pytest.raises(UserError, match="temperature"):
        ContrastiveConfig(temperature=0)
    with pytest.raises(UserError, match="probability"):
        TextAugmentation.random_swap(torch.tensor([1, 2]), 1.5)
