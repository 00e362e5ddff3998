"""Self-supervised losses and the encoder mode, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from minigpt.errors import UserError
from minigpt.losses.contrastive import info_nce, moco_loss
from minigpt.losses.mlm import IGNORE_INDEX, mask_tokens, mlm_loss, nsp_loss

MASK, PAD, EOS = 8, 1, 0


def test_masking_follows_bert_80_10_10_and_never_touches_padding_or_specials():
    """200 × 400 tokens, 15 % selected: the shares land within a few standard errors of
    15 % / 80 % / 10 % / 10 % (the sample has ~10,000 selections, so sd ≈ 0.4 points on 80 %)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (200, 400), generator=g)
    ids[:, 0] = EOS  # a special token in every row
    attention = torch.ones_like(ids)
    attention[:, 350:] = 0  # padding
    ids[:, 350:] = PAD
    masked, labels = mask_tokens(ids, MASK, 500, 0.15, attention, special_ids=[EOS, PAD], generator=g)
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])  # labels are the originals, exactly there
    assert not selected[:, 0].any() and not selected[:, 350:].any()
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
    share = selected[:, 1:350].float().mean().item()
    assert abs(share - 0.15) < 0.006
    n = int(selected.sum())
    to_mask = (masked[selected] == MASK).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    random = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.012 and abs(random - 0.1) < 0.012
    replaced = masked[selected & (masked != MASK) & (masked != ids)]
    assert ((replaced >= 0) & (replaced < 500)).all() and not torch.isin(replaced, torch.tensor([EOS, PAD, MASK])).any()


def test_masking_errors():
    ids = torch.tensor([[10, 11]])
    with pytest.raises(UserError, match="mask_prob"):
        mask_tokens(ids, MASK, 20, 0.0)
    with pytest.raises(UserError, match="every id is special"):
        mask_tokens(ids, 0, 1, 0.5)


def test_mlm_loss_by_hand():
    """V = 2. Position 0: logits (0, ln 3), so p(1) = 3/4; label 1 costs ln(4/3) and argmax is
    right. Position 1: label 0 costs ln 4 and argmax is wrong. Position 2 is not masked."""
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, IGNORE_INDEX]])
    loss, n, correct = mlm_loss(logits, labels)
    assert loss.item() == pytest.approx(math.log(4 / 3) + math.log(4), rel=1e-6)
    assert (n, correct) == (2, 1)


def test_nsp_loss_by_hand():
    """Logits (ln 3, 0): p(label 0) = 3/4. Labels (0, 1): ln(4/3) + ln 4, one right."""
    loss, correct = nsp_loss(torch.tensor([[math.log(3), 0.0]] * 2), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(4 / 3) + math.log(4), rel=1e-6)
    assert correct == 1


def test_info_nce_by_hand():
    """Two orthogonal unit pairs, τ = 1: logits = I, so each row costs −log(e / (e + 1)) =
    log(1 + 1/e) in both directions. Swapped partners cost log(1 + e) and score 0 accuracy.
    Scaling an embedding changes nothing (cosine)."""
    z = torch.eye(2)
    loss, acc = info_nce(z, 3 * z, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6) and acc == 1.0
    loss, acc = info_nce(z, z.flip(0), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e), rel=1e-6) and acc == 0.0
    with pytest.raises(UserError, match="at least 2 pairs"):
        info_nce(z[:1], z[:1])


def test_moco_loss_by_hand():
    """q = k = (1, 0), queue = (0, 1), (−1, 0), τ = 0.5: logits (2, 0, −2), loss
    −log(e² / (e² + 1 + e⁻²))."""
    q = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss, acc = moco_loss(q, q.clone(), queue, temperature=0.5)
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and acc == 1.0


def test_moco_loss_with_an_empty_queue_uses_the_batchs_other_keys():
    """K = 0: q = (1, 0), (0, 1), keys equal to the queries, τ = 1: logits [[1, 0], [0, 1]], each
    row's CE is −log(e / (e + 1)); a positive alone would give 0 and no gradient. One pair and
    no queue has no negative at all: refused."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss, acc = moco_loss(q, q.detach().clone(), q.new_zeros(0, 2), temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6) and acc == 1.0
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(UserError, match="at least 2 pairs"):
        moco_loss(q[:1], q[:1].detach(), q.new_zeros(0, 2))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_encoder_mode_sees_later_tokens_and_causal_mode_does_not(bidirectional):
    from minigpt.model import MiniGPTConfig, MiniGPTModel

    torch.manual_seed(0)
    config = MiniGPTConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_bidirectional_attention=bidirectional,
    )
    model = MiniGPTModel(config).eval()
    ids = torch.randint(10, 300, (2, 8))
    later = ids.clone()
    later[:, 6] = 11 if int(ids[0, 6]) != 11 else 12
    with torch.no_grad():
        a = model(ids, use_cache=False).last_hidden_state
        b = model(later, use_cache=False).last_hidden_state
        padded = torch.ones_like(ids)
        padded[:, 7] = 0  # the last token is padding: no real position may see it
        c = model(ids, attention_mask=padded, use_cache=False).last_hidden_state
        e = model(ids.index_fill(1, torch.tensor([7]), 5), attention_mask=padded, use_cache=False).last_hidden_state
    changed = (a[:, :6] - b[:, :6]).abs().max().item()
    assert (changed > 1e-3) if bidirectional else changed == 0.0
    # padding is invisible in both modes: changing the padded token changes no real position
    assert torch.allclose(c[:, :7], e[:, :7], atol=1e-6)
