"""Preference losses (minigpt.losses.preference) against hand-derived values, closed-form
gradients, a naive log-prob gather, and TRL 1.16's DPOTrainer on identical log-probs.

Most hand values are built around one identity: σ(ln 3) = 3/4 and σ(−ln 3) = 1/4, so
−logσ(ln 3) = ln(4/3) and −logσ(−ln 3) = ln 4.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.losses import preference as P
from minigpt.losses.preference import bradley_terry_loss, dpo_loss, kto_loss, kto_reference_point, orpo_loss, sequence_logprobs, simpo_loss
from minigpt.losses.names import PAIRED_LOSSES, PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES

LN2, LN3, LN4_3 = math.log(2.0), math.log(3.0), math.log(4.0 / 3.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def naive_sequence_log_probs(logits, targets):
    """Full fp64 log_softmax, gather the aligned targets, zero the ignored ones, sum per row."""
    logp = F.log_softmax(logits.double(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * (targets != -100)).sum(dim=1)


# ----------------------------------------------------------------------------- sequence_logprobs


def test_sequence_log_probs_hand_value():
    """Vocab 3, two sequences. Row 0: position 0 has logits (0, ln 2, 0), target 1 → p = 2/4,
    log p = −ln 2; position 1 has logits (0, 0, 0), target 2 → log(1/3) = −ln 3; position 2 is
    ignored (its logits would give a huge value if used). Sum = −ln 2 − ln 3 = −ln 6, 2 tokens.
    Row 1: every target ignored → log-prob 0, 0 tokens (not NaN)."""
    logits = torch.tensor(
        [
            [[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [-50.0, 50.0, 0.0]],
            [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],
        ]
    )
    targets = torch.tensor([[1, 2, -100], [-100, -100, -100]])
    logprobs, n = sequence_logprobs(logits, targets)
    assert logprobs.dtype == torch.float32 and n.dtype == torch.long
    assert logprobs[0].item() == pytest.approx(-math.log(6.0), rel=1e-6)
    assert logprobs[1].item() == 0.0
    assert n.tolist() == [2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_log_probs_matches_naive_gather_value_and_gradient(dtype, monkeypatch):
    """Random logits with ignored prompt/padding positions, a chunk size (7) that does not divide
    the number of supervised positions, and one fully ignored row: values equal a naive
    log_softmax gather, and the gradient equals autograd through that naive computation
    (onehot − softmax on supervised positions, 0 elsewhere)."""
    monkeypatch.setattr(P, "_CHUNK_ROWS", 7)
    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 11, 29)).to(dtype).requires_grad_()
    targets = torch.randint(0, 29, (4, 11))
    targets[0, :4] = -100  # prompt
    targets[1, 8:] = -100  # padding
    targets[2] = -100  # nothing supervised
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])  # distinct upstream gradients per row
    logprobs, n = sequence_logprobs(logits, targets)
    (logprobs * weights).sum().backward()
    ref_logits = logits.detach().double().requires_grad_()
    ref = naive_sequence_log_probs(ref_logits, targets)
    (ref * weights.double()).sum().backward()
    assert n.tolist() == [7, 8, 0, 11]
    assert torch.allclose(logprobs.double(), ref.detach(), atol=1e-4)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(logits.grad.double(), ref_logits.grad, atol=tol)
    assert logits.grad.dtype == dtype
    assert torch.count_nonzero(logits.grad[2]) == 0


def test_sequence_log_probs_gradcheck_fp64():
    """In fp64 the custom backward agrees with finite differences (torch.autograd.gradcheck)."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 5, -100, 2], [-100, 1, 1, 3]])
    assert torch.autograd.gradcheck(lambda z: sequence_logprobs(z, targets)[0], (x,))


def test_sequence_log_probs_all_ignored_and_bad_shape():
    """No supervised target at all: zeros and a zero gradient, not an error; shape mismatch raises."""
    logits = torch.randn(2, 3, 5, requires_grad=True)
    logprobs, n = sequence_logprobs(logits, torch.full((2, 3), -100))
    logprobs.sum().backward()
    assert logprobs.tolist() == [0.0, 0.0] and n.tolist() == [0, 0]
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    with pytest.raises(ValueError):
        sequence_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- DPO


def test_dpo_sigmoid_hand_value_and_rewards():
    """β = 0.5. Pair 0: policy (−1, −4), ref (−1 − ln 3, −4 + ln 3) → chosen ratio ln 3,
    rejected ratio −ln 3, h = 2 ln 3, βh = ln 3 → loss −logσ(ln 3) = ln(4/3); rewards
    β·ratio = (ln 3 / 2, −ln 3 / 2). Pair 1: policy = ref → h = 0 → loss ln 2, rewards 0."""
    pw, pl = t(-1.0, -2.0), t(-4.0, -3.0)
    rw, rl = t(-1.0 - LN3, -2.0), t(-4.0 + LN3, -3.0)
    losses, cr, rr = dpo_loss(pw, pl, rw, rl, beta=0.5)
    assert losses.tolist() == pytest.approx([LN4_3, LN2], rel=1e-6)
    assert cr.tolist() == pytest.approx([LN3 / 2, 0.0], abs=1e-6)
    assert rr.tolist() == pytest.approx([-LN3 / 2, 0.0], abs=1e-6)


def test_dpo_conservative_label_smoothing_hand_value_and_stationary_point():
    """Conservative DPO with ε = 1/4 at βh = ln 3 (β = 1, h = ln 3, no refs):
    loss = (1−ε)·ln(4/3) + ε·ln 4 = ¾·ln(4/3) + ¼·ln 4.
    dL/dh = β·[−(1−ε)·σ(−βh) + ε·σ(βh)] = −¾·¼ + ¼·¾ = 0: with label noise ε the loss is minimised
    where σ(βh) = 1 − ε, so the gradient vanishes there (plain DPO's would be −β/4)."""
    pw = t(LN3).requires_grad_()
    losses, _, _ = dpo_loss(pw, t(0.0), beta=1.0, label_smoothing=0.25)
    assert losses.item() == pytest.approx(0.75 * LN4_3 + 0.25 * math.log(4.0), rel=1e-6)
    losses.sum().backward()
    assert pw.grad.item() == pytest.approx(0.0, abs=1e-6)
    pw.grad = None
    dpo_loss(pw, t(0.0), beta=1.0)[0].sum().backward()
    assert pw.grad.item() == pytest.approx(-0.25, rel=1e-6)


def test_dpo_ipo_hand_value_with_and_without_lengths():
    """β = 0.25 → target margin 1/(2β) = 2. Chosen ratio 12 over 4 tokens = 3/token, rejected
    ratio −4 over 2 tokens = −2/token → h' = 5, loss (5 − 2)² = 9. Without lengths h = 16, loss
    (16 − 2)² = 196. Rewards are β·(summed ratio) either way: (3, −1). A zero length clamps to 1."""
    pw, pl, rw, rl = t(-8.0), t(-10.0), t(-20.0), t(-6.0)
    losses, cr, rr = dpo_loss(pw, pl, rw, rl, beta=0.25, loss_type="ipo", chosen_lengths=torch.tensor([4]),
                              rejected_lengths=torch.tensor([2]))
    assert losses.item() == pytest.approx(9.0, rel=1e-6)
    assert (cr.item(), rr.item()) == pytest.approx((3.0, -1.0))
    losses, cr2, _ = dpo_loss(pw, pl, rw, rl, beta=0.25, loss_type="ipo")
    assert losses.item() == pytest.approx(196.0, rel=1e-6) and cr2.item() == pytest.approx(3.0)
    losses, _, _ = dpo_loss(pw, pl, rw, rl, beta=0.25, loss_type="ipo", chosen_lengths=torch.tensor([0]),
                            rejected_lengths=torch.tensor([1]))
    assert losses.item() == pytest.approx(196.0, rel=1e-6)


def test_dpo_hinge_hand_value():
    """β = 0.5, no refs. h = 1 → relu(1 − 0.5) = 0.5; h = 2 → relu(0) = 0; h = 4 → 0 (past the
    margin, no gradient); h = −2 → relu(2) = 2."""
    pw = t(0.0, 0.0, 1.0, -3.0).requires_grad_()
    pl = t(-1.0, -2.0, -3.0, -1.0)
    losses, cr, rr = dpo_loss(pw, pl, beta=0.5, loss_type="hinge")
    assert losses.tolist() == pytest.approx([0.5, 0.0, 0.0, 2.0])
    losses.sum().backward()
    assert pw.grad.tolist() == pytest.approx([-0.5, 0.0, 0.0, -0.5])
    assert cr.tolist() == pytest.approx([0.0, 0.0, 0.5, -1.5])


def test_dpo_reference_free_and_missing_refs_mean_zero_reference():
    """reference_free=True ignores the given refs; refs None means refs 0; both equal an explicit
    zero reference, including the rewards (β·π)."""
    pw, pl = t(-1.0, -5.0), t(-3.0, -2.0)
    rw, rl = t(-7.0, 2.0), t(4.0, -9.0)
    explicit = dpo_loss(pw, pl, torch.zeros(2), torch.zeros(2), beta=0.3)
    for got in (dpo_loss(pw, pl, rw, rl, beta=0.3, reference_free=True), dpo_loss(pw, pl, beta=0.3)):
        for a, b in zip(got, explicit):
            assert torch.equal(a, b)
    assert explicit[1].tolist() == pytest.approx([-0.3, -1.5])
    assert not torch.equal(dpo_loss(pw, pl, rw, rl, beta=0.3)[0], explicit[0])


def test_dpo_closed_form_gradient():
    """∂/∂π_w of −logσ(βh) is −β·σ(−βh) and ∂/∂π_l is +β·σ(−βh), h = (π_w − ref_w) − (π_l − ref_l).
    The reference log-probs get no gradient, and the rewards are detached."""
    torch.manual_seed(3)
    beta = 0.7
    pw, pl = (-10 * torch.rand(5)).requires_grad_(), (-10 * torch.rand(5)).requires_grad_()
    rw, rl = (-10 * torch.rand(5)).requires_grad_(), (-10 * torch.rand(5)).requires_grad_()
    losses, cr, rr = dpo_loss(pw, pl, rw, rl, beta=beta)
    losses.sum().backward()
    h = (pw - rw - (pl - rl)).detach()
    expected = beta * torch.sigmoid(-beta * h)
    assert torch.allclose(pw.grad, -expected, atol=1e-6)
    assert torch.allclose(pl.grad, expected, atol=1e-6)
    assert rw.grad is None and rl.grad is None
    assert not cr.requires_grad and not rr.requires_grad


def test_dpo_computes_in_fp32_and_rejects_bad_arguments():
    """bf16 log-probs give fp32 losses; unknown or non-DPO loss types, β ≤ 0, ε ∉ [0, ½),
    ε with a non-sigmoid loss and a lone reference all raise ValueError (UserError for config)."""
    losses, cr, _ = dpo_loss(t(-1.0).bfloat16(), t(-2.0).bfloat16())
    assert losses.dtype == torch.float32 and cr.dtype == torch.float32
    for kwargs in ({"loss_type": "nope"}, {"loss_type": "simpo"}, {"beta": 0.0}, {"label_smoothing": 0.5},
                   {"label_smoothing": 0.1, "loss_type": "ipo"}):
        with pytest.raises(UserError):
            dpo_loss(t(-1.0), t(-2.0), **kwargs)
    with pytest.raises(ValueError):
        dpo_loss(t(-1.0), t(-2.0), ref_chosen_logprobs=t(-1.0))
    with pytest.raises(ValueError):
        dpo_loss(t(-1.0, -2.0), t(-2.0))


# ----------------------------------------------------------------------------- TRL parity


def _trl_compute(loss_type, beta, input_ids, attention_mask, completion_mask, logits, ref_w, ref_l):
    """Run TRL 1.16's `DPOTrainer._compute_loss` with a stub `self` and a stub model whose
    `log_probs` are the naive gather of `logits` at TRL's shifted labels; precomputed reference
    log-probs come in the batch. Returns (mean loss, per-example chosen rewards, rejected rewards)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    def model(input_ids, attention_mask, use_cache, labels, fused_lm_head):
        assert fused_lm_head
        shifted = labels[:, 1:]
        lp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, shifted.clamp(min=0)[..., None])[..., 0]
        zeros = torch.zeros(shifted.shape, dtype=torch.float64)
        return SimpleNamespace(log_probs=torch.where(shifted != -100, lp, zeros), entropy=zeros,
                               mean_logits=zeros, is_top1=torch.zeros(shifted.shape, dtype=torch.bool))

    gathered = []
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                  gather=lambda x: gathered.append(x) or x)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": ref_w.double(), "ref_rejected_logps": ref_l.double()}
    loss = DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, gathered[0], gathered[1]  # TRL gathers chosen then rejected rewards first


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1), ("ipo", 0.5),
                                            ("hinge", 0.1), ("hinge", 0.5)])
def test_dpo_matches_trl_dpo_trainer(loss_type, beta):
    """Three pairs of right-padded prompt+reply rows laid out as TRL's collator does ([chosen…,
    rejected…], completion_mask on the reply tokens). TRL shifts labels (position t predicts
    token t+1); our side builds ALIGNED targets (targets[t] = input_ids[t+1] on reply tokens),
    gets summed log-probs and token counts from `sequence_logprobs` on the same logits and
    calls `dpo_loss`. Each pair alone must give TRL's loss (TRL only returns the batch mean,
    so pairs are also run one at a time), the batch mean must match, and the rewards TRL gathers
    for its metrics must equal ours."""
    pytest.importorskip("trl")
    torch.manual_seed(4)
    B, T, V = 3, 10, 13
    prompt_len = [3, 2, 4, 3, 2, 4]  # rows 0..2 chosen, 3..5 rejected (same prompts)
    reply_len = [4, 7, 2, 6, 3, 5]
    input_ids = torch.full((2 * B, T), 1)
    attention_mask = torch.zeros(2 * B, T, dtype=torch.long)
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for r in range(2 * B):
        n = prompt_len[r] + reply_len[r]
        input_ids[r, :n] = torch.randint(2, V, (n,))
        attention_mask[r, :n] = 1
        completion_mask[r, prompt_len[r] : n] = 1
    logits = 2 * torch.randn(2 * B, T, V)
    targets = torch.full((2 * B, T), -100)
    nxt = input_ids[:, 1:]
    targets[:, :-1] = torch.where(completion_mask[:, 1:] == 1, nxt, torch.full_like(nxt, -100))
    ref_w, ref_l = -20 * torch.rand(B), -20 * torch.rand(B)

    logprobs, ntok = sequence_logprobs(logits, targets)
    assert ntok.tolist() == reply_len
    losses, cr, rr = dpo_loss(logprobs[:B], logprobs[B:], ref_w, ref_l, beta=beta, loss_type=loss_type,
                              chosen_lengths=ntok[:B], rejected_lengths=ntok[B:])

    for i in range(B):
        rows = [i, B + i]
        loss_i, cr_i, rr_i = _trl_compute(loss_type, beta, input_ids[rows], attention_mask[rows],
                                          completion_mask[rows], logits[rows], ref_w[i : i + 1], ref_l[i : i + 1])
        assert losses[i].item() == pytest.approx(loss_i.item(), rel=1e-5, abs=1e-6)
        assert (cr[i].item(), rr[i].item()) == pytest.approx((cr_i.item(), rr_i.item()), rel=1e-5, abs=1e-6)
    loss_all, cr_all, rr_all = _trl_compute(loss_type, beta, input_ids, attention_mask, completion_mask, logits,
                                            ref_w, ref_l)
    assert losses.mean().item() == pytest.approx(loss_all.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(cr.double(), cr_all, atol=1e-5) and torch.allclose(rr.double(), rr_all, atol=1e-5)


# ----------------------------------------------------------------------------- SimPO, ORPO


def test_simpo_hand_value():
    """β = 2, γ = 0.5. Pair 0: avg (−1, −1.25) → z = −2 + 2.5 − 0.5 = 0 → loss ln 2. Pair 1: avg
    (−1, −1.25 − ln3/2) → z = ln 3 → ln(4/3). Rewards 2·avg. With ε = ¼ pair 1 becomes
    ¾·ln(4/3) + ¼·ln 4; pair 0 stays ln 2 (both terms equal at z = 0)."""
    aw, al = t(-1.0, -1.0), t(-1.25, -1.25 - LN3 / 2)
    losses, cr, rr = simpo_loss(aw, al, beta=2.0, gamma=0.5)
    assert losses.tolist() == pytest.approx([LN2, LN4_3], rel=1e-6)
    assert cr.tolist() == pytest.approx([-2.0, -2.0]) and rr.tolist() == pytest.approx([-2.5, -2.5 - LN3])
    smoothed, _, _ = simpo_loss(aw, al, beta=2.0, gamma=0.5, label_smoothing=0.25)
    assert smoothed.tolist() == pytest.approx([LN2, 0.75 * LN4_3 + 0.25 * math.log(4.0)], rel=1e-6)
    with pytest.raises(UserError):
        simpo_loss(aw, al, beta=0.0)


def test_orpo_hand_value_and_gradient():
    """Chosen avg log-prob ln(1/2): odds (1/2)/(1/2) = 1, log-odds 0. Rejected ln(1/4): odds
    (1/4)/(3/4) = 1/3, log-odds −ln 3. Log odds ratio ln 3 → −logσ(ln 3) = ln(4/3).
    Loss = −ln(1/2) + λ·ln(4/3) with λ = 0.1; rewards λ·avg = (−0.1 ln 2, −0.1 ln 4).
    d(log odds)/da = 1/(1 − e^a) (= 2 at a = ln ½), so ∂L/∂a_w = −1 − λ·σ(−ln 3)·2 = −1 − 0.05."""
    aw = t(math.log(0.5)).requires_grad_()
    al = t(math.log(0.25))
    losses, cr, rr = orpo_loss(aw, al, lam=0.1)
    assert losses.item() == pytest.approx(LN2 + 0.1 * LN4_3, rel=1e-6)
    assert (cr.item(), rr.item()) == pytest.approx((-0.1 * LN2, -0.1 * math.log(4.0)), rel=1e-6)
    losses.sum().backward()
    assert aw.grad.item() == pytest.approx(-1.05, rel=1e-5)


def test_orpo_log_odds_stay_finite_at_the_extremes():
    """a → 0 (probability 1) would make log(1 − e^a) = −∞; a = −60 makes 1 − e^a round to 1.
    Loss and gradient stay finite; for a = −60 vs −61 the log-odds ≈ a, so the ratio is ≈ 1 and
    the loss ≈ 60 + λ·ln(1 + e^{−1})."""
    losses, _, _ = orpo_loss(t(0.0, -1e-9, -60.0), t(-1e-6, 0.0, -61.0), lam=0.5)
    assert torch.isfinite(losses).all()
    assert losses[2].item() == pytest.approx(60.0 + 0.5 * math.log1p(math.exp(-1.0)), rel=1e-6)
    aw = t(-1e-9).requires_grad_()
    orpo_loss(aw, t(-2.0), lam=0.5)[0].sum().backward()
    assert torch.isfinite(aw.grad).all()


# ----------------------------------------------------------------------------- KTO


def test_kto_both_label_kinds_hand_value():
    """β = 0.5, z0 = 1, w_d = 2, w_u = 0.5.
    Desirable, r = 1 + 2 ln 3: β(r − z0) = ln 3 → 2·(1 − ¾) = 0.5.
    Undesirable, r = 1 − 2 ln 3: β(z0 − r) = ln 3 → 0.5·(1 − ¾) = 0.125.
    Desirable, r = 1 − 2 ln 3 (a good reply the policy made less likely): 2·(1 − ¼) = 1.5.
    Undesirable, r = 1 + 2 ln 3: 0.5·(1 − ¼) = 0.375.  Rewards β·r."""
    r = t(1 + 2 * LN3, 1 - 2 * LN3, 1 - 2 * LN3, 1 + 2 * LN3)
    ref = t(-5.0, -6.0, -7.0, -8.0)
    desirable = torch.tensor([True, False, True, False])
    losses, rewards = kto_loss(ref + r, ref, desirable, torch.tensor(1.0), beta=0.5, desirable_weight=2.0,
                               undesirable_weight=0.5)
    assert losses.tolist() == pytest.approx([0.5, 0.125, 1.5, 0.375], rel=1e-5)
    assert rewards.tolist() == pytest.approx((0.5 * r).tolist(), rel=1e-5)


def test_kto_gradient_direction_and_reference_point_is_constant():
    """d/dπ of 1 − σ(β(r − z0)) is −β·σ'(·) < 0 (raise a good reply's probability) and of
    1 − σ(β(z0 − r)) is +β·σ'(·) > 0; at r = z0, σ' = ¼ so the gradients are ∓β/4. A
    reference-point tensor with requires_grad gets no gradient; a negative one counts as 0
    (z0 = −3 gives the same losses as z0 = 0)."""
    pol = t(2.0, 2.0).requires_grad_()
    z0 = torch.tensor(2.0, requires_grad=True)
    losses, _ = kto_loss(pol, t(0.0, 0.0), torch.tensor([True, False]), z0, beta=0.4)
    losses.sum().backward()
    assert pol.grad.tolist() == pytest.approx([-0.1, 0.1], rel=1e-6)
    assert z0.grad is None
    neg, _ = kto_loss(t(1.0, 1.0), t(0.0, 0.0), torch.tensor([True, False]), -3.0)
    zero, _ = kto_loss(t(1.0, 1.0), t(0.0, 0.0), torch.tensor([True, False]), 0.0)
    assert torch.equal(neg, zero)


def test_kto_reference_point_mean_clamp_and_no_gradient():
    """mean((−1 − −3), (−4 − −2), (0 − −1)) = (2 − 2 + 1)/3 = 1/3. If the mean is negative
    ((−5 − −1) → −4) it clamps to 0. Either way the result carries no gradient."""
    pol = t(-1.0, -4.0, 0.0).requires_grad_()
    z0 = kto_reference_point(pol, t(-3.0, -2.0, -1.0))
    assert z0.dim() == 0 and z0.item() == pytest.approx(1.0 / 3.0)
    assert not z0.requires_grad
    assert kto_reference_point(t(-5.0), t(-1.0)).item() == 0.0
    with pytest.raises(ValueError):
        kto_reference_point(torch.zeros(0), torch.zeros(0))


# ----------------------------------------------------------------------------- Bradley–Terry


def test_bradley_terry_hand_values_margin_and_centring():
    """r_w − r_l = ln 3 → −logσ(ln 3) = ln(4/3). A margin m = ln 3 → −logσ(0) = ln 2. A per-pair
    margin tensor (0, ln 3) gives one of each. Centring c = 0.1 adds 0.1·(r_w + r_l)²: row 0
    r = (ln 3, 0) → 0.1·(ln 3)²; row 1 r = (2 + ln 3, 2) → 0.1·(4 + ln 3)² (the BT term is shift-
    invariant, ln(4/3) in both rows, only the centring term sees the offset)."""
    rw, rl = t(LN3, 2.0 + LN3), t(0.0, 2.0)
    assert bradley_terry_loss(rw, rl).tolist() == pytest.approx([LN4_3, LN4_3], rel=1e-6)
    assert bradley_terry_loss(rw, rl, margin=LN3).tolist() == pytest.approx([LN2, LN2], rel=1e-6)
    assert bradley_terry_loss(rw, rl, margin=t(0.0, LN3)).tolist() == pytest.approx([LN4_3, LN2], rel=1e-6)
    centred = bradley_terry_loss(rw, rl, center_rewards_coef=0.1)
    assert centred.tolist() == pytest.approx([LN4_3 + 0.1 * LN3**2, LN4_3 + 0.1 * (4 + LN3) ** 2], rel=1e-6)
    with pytest.raises(UserError):
        bradley_terry_loss(rw, rl, center_rewards_coef=-1.0)


def test_bradley_terry_gradient():
    """∂/∂r_w = −σ(−(r_w − r_l − m)) + 2c(r_w + r_l); ∂/∂r_l = +σ(−(r_w − r_l − m)) + 2c(r_w + r_l).
    At r_w − r_l − m = ln 3 (σ(−ln 3) = ¼), r_w + r_l = 3, c = 0.5: (−0.25 + 3, 0.25 + 3)."""
    m = 0.5
    rw = t(1.5 + (LN3 + m) / 2).requires_grad_()
    rl = t(1.5 - (LN3 + m) / 2).requires_grad_()
    bradley_terry_loss(rw, rl, margin=m, center_rewards_coef=0.5).sum().backward()
    assert rw.grad.item() == pytest.approx(2.75, rel=1e-6)
    assert rl.grad.item() == pytest.approx(3.25, rel=1e-6)


def test_loss_name_constants():
    """The names other modules dispatch on."""
    assert PAIRED_LOSSES == ("sigmoid", "ipo", "hinge", "simpo", "orpo")
    assert PREFERENCE_LOSSES == PAIRED_LOSSES + ("kto",)
    assert REFERENCE_FREE_LOSSES == ("simpo", "orpo")
