"""Online-RL math (minigpt.losses.advantages / kl / policy) against hand-derived values.

Every expected number below is worked out in the test's docstring from the paper's formula; the
inputs are chosen so that the arithmetic is exact in binary (halves, quarters, ln 2 multiples).
"""

from __future__ import annotations

import math

import pytest
import torch

from minigpt.errors import UserError
from minigpt.losses import policy as P
from minigpt.losses.advantages import ADVANTAGE_TYPES, gae, group_advantages, group_stats, whiten
from minigpt.losses.kl import KL_ESTIMATORS, kl_estimate
from minigpt.losses.policy import (
    AGGREGATIONS,
    aggregate,
    cispo_policy_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    importance_ratio_log,
)

LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------- GAE


def test_gae_three_steps_with_padded_row():
    """γ = 0.5, λ = 0.25, so γλ = 0.125.

    Row 0 (3 tokens): r = (1, 0, 2), V = (0.5, 1, 1).
      t=2 (last): δ = 2 + 0 − 1 = 1;               A₂ = 1
      t=1:        δ = 0 + 0.5·1 − 1 = −0.5;        A₁ = −0.5 + 0.125·1 = −0.375
      t=0:        δ = 1 + 0.5·1 − 0.5 = 1;         A₀ = 1 + 0.125·(−0.375) = 0.953125
      returns = A + V = (1.453125, 0.625, 2).
    Row 1 (2 tokens, then padding with junk reward 99 and value NaN that must be ignored):
      t=1 (last): δ = 3 + 0 − 1 = 2;               A₁ = 2
      t=0:        δ = 0 + 0.5·1 − 2 = −1.5;        A₀ = −1.5 + 0.125·2 = −1.25
      returns = (0.75, 3, 0); the padded position gives 0 for both.
    """
    rewards = t([1, 0, 2], [0, 3, 99])
    values = t([0.5, 1, 1], [2, 1, float("nan")])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.25)
    close(adv, [[0.953125, -0.375, 1.0], [-1.25, 2.0, 0.0]])
    close(ret, [[1.453125, 0.625, 2.0], [0.75, 3.0, 0.0]])
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    """λ = 1, γ = 1: A_t = Σ_{k≥t} r_k − V_t (rewards-to-go minus the value): for r = (1, 2, 4),
    V = (3, 1, 5) that is (7−3, 6−1, 4−5) = (4, 5, −1); returns are the rewards-to-go (7, 6, 4).
    λ = 0, γ = 0.5: A_t = δ_t = r_t + 0.5·V_{t+1} − V_t = (1 + 0.5 − 3, 2 + 2.5 − 1, 4 − 5)
    = (−1.5, 3.5, −1)."""
    r, v, m = t([1, 2, 4]), t([3, 1, 5]), torch.ones(1, 3)
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    close(adv, [[4.0, 5.0, -1.0]])
    close(ret, [[7.0, 6.0, 4.0]])
    adv0, _ = gae(r, v, m, gamma=0.5, lam=0.0)
    close(adv0, [[-1.5, 3.5, -1.0]])


def test_gae_rejects_bad_masks_and_parameters():
    r = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="right-padded"):
        gae(r, r, torch.tensor([[1, 0, 1]]), 0.9, 0.9)
    with pytest.raises(UserError, match="gamma"):
        gae(r, r, torch.ones(1, 3), 1.5, 0.9)
    with pytest.raises(UserError, match="lam"):
        gae(r, r, torch.ones(1, 3), 0.9, -0.1)
    with pytest.raises(ValueError, match="same"):
        gae(r, torch.zeros(1, 2), torch.ones(1, 3), 0.9, 0.9)


# ------------------------------------------------------------------------- group advantages


def test_group_advantages_normalized_uses_bessel_std():
    """Group [1, 1, 3, 3]: mean 2, deviations ±1, unbiased variance 4/3, std 2/√3, so
    A = ±1 / (2/√3 + 1e-4) ≈ ±0.866 (a population std of 1 would give ±1). Group [5, 5, 5, 5]:
    std 0, every A = 0 / (0 + eps) = 0."""
    adv = group_advantages(t(1, 1, 3, 3, 5, 5, 5, 5), group_size=4)
    a = 1.0 / (2.0 / math.sqrt(3.0) + 1e-4)
    close(adv, [-a, -a, a, a, 0, 0, 0, 0])
    assert not adv.requires_grad


def test_group_advantages_unscaled_is_dr_grpo_mean_centring():
    """scale_rewards=False: A = r − mean_g. Groups [1, 1, 3, 3] (mean 2) and [0, 4, 8, 0]
    (mean 3): (−1, −1, 1, 1) and (−3, 1, 5, −3)."""
    adv = group_advantages(t(1, 1, 3, 3, 0, 4, 8, 0), group_size=4, scale_rewards=False)
    close(adv, [-1, -1, 1, 1, -3, 1, 5, -3])


def test_group_advantages_relative_is_r_minus_group_mean():
    """The API guide's `relative`: A = r − mean(group). Rewards [1, 0, 0, 0] (mean 0.25) give
    (0.75, −0.25, −0.25, −0.25); group [1, 2, 6] (mean 3) gives (−2, −1, 3). No warning: it is
    the meaning, not a deprecation."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv = group_advantages(t(1, 0, 0, 0), group_size=4, advantage_type="relative")
    close(adv, [0.75, -0.25, -0.25, -0.25])
    close(group_advantages(t(1, 2, 6), group_size=3, advantage_type="relative"), [-2, -1, 3])


def test_group_advantages_rank_averages_ties():
    """Group [3, 1, 3, 0, 7]: sorted 0 < 1 < 3 = 3 < 7, so 0-based ranks are 0 (for 0), 1 (for 1),
    2 and 3 shared by the two 3s (each 2.5), 4 (for 7). A = 2·rank/(5−1) − 1 = rank/2 − 1:
    (0.25, −0.5, 0.25, −1, 1), which sums to 0. Any increasing transform of the rewards (here
    exp) gives the same ranks, hence the same advantages."""
    r = t(3, 1, 3, 0, 7)
    adv = group_advantages(r, group_size=5, advantage_type="rank")
    close(adv, [0.25, -0.5, 0.25, -1.0, 1.0])
    close(group_advantages(torch.exp(r), group_size=5, advantage_type="rank"), adv)


def test_group_advantages_group_of_one():
    """G = 1: there is nothing to compare with: normalized, relative and rank give 0;
    leave-one-out has no "others" and raises."""
    r = t(3, -2)
    close(group_advantages(r, 1, "normalized"), [0.0, 0.0])
    close(group_advantages(r, 1, "relative"), [0.0, 0.0])
    close(group_advantages(r, 1, "rank"), [0.0, 0.0])
    with pytest.raises(UserError, match="group_size >= 2"):
        group_advantages(r, 1, "rloo")


def test_group_advantages_errors():
    with pytest.raises(UserError, match="normalized, relative, rank"):
        group_advantages(t(1, 2), 2, "zscore")
    with pytest.raises(UserError, match="group_size=3"):
        group_advantages(t(1, 2, 3, 4), 3)
    with pytest.raises(UserError, match="group_size"):
        group_advantages(t(1, 2), 0)
    assert ADVANTAGE_TYPES == ("normalized", "relative", "rank", "rloo")


def test_group_advantages_rloo_is_leave_one_out():
    """`rloo`: group [1, 2, 6]: the mean of the others is (2+6)/2 = 4, (1+6)/2 = 3.5,
    (1+2)/2 = 1.5, so A = (−3, −1.5, 4.5); group [4, 0, 2]: others' means 1, 3, 2 → (3, −3, 0).
    Group [4, 0] (G = 2): each one's "others" is the other sample, so A = (4, −4), twice
    `relative`'s r − mean (±2)."""
    close(group_advantages(t(1, 2, 6, 4, 0, 2), group_size=3, advantage_type="rloo"), [-3, -1.5, 4.5, 3, -3, 0])
    close(group_advantages(t(4, 0), group_size=2, advantage_type="rloo"), [4, -4])
    close(group_advantages(t(4, 0), group_size=2, advantage_type="relative"), [2, -2])
    with pytest.raises(UserError, match="'rloo' .*group_size >= 2"):
        group_advantages(t(1, 2), 1, "rloo")


def test_group_stats_hand_values():
    """Groups [1, 1, 3, 3] and [5, 5, 5, 5]: mean reward (8 + 20)/8 = 3.5; unbiased variances
    4/3 and 0, mean 2/3; one of the two groups has all-equal rewards → frac_zero_std 0.5.
    With G = 1 the variance is 0 and every group is trivially constant."""
    s = group_stats(t(1, 1, 3, 3, 5, 5, 5, 5), 4)
    assert s == pytest.approx({"mean_reward": 3.5, "group_variance": 2.0 / 3.0, "frac_zero_std": 0.5})
    assert all(isinstance(v, float) for v in s.values())
    assert group_stats(t(1, 2), 1) == pytest.approx({"mean_reward": 1.5, "group_variance": 0.0, "frac_zero_std": 1.0})


# ----------------------------------------------------------------------------------- whiten


def test_whiten_hand_example_and_shift_mean():
    """Masked-in values 1 and 3 (the 100 is masked out): mean 2, unbiased variance
    ((−1)² + 1²)/(2 − 1) = 2, so the output is (−1/√2, 1/√2, 0). shift_mean=False adds the mean
    back: (2 − 1/√2, 2 + 1/√2, 0)."""
    x, m = t([1, 3, 100]), t([1, 1, 0])
    h = 1.0 / math.sqrt(2.0)
    close(whiten(x, m), [[-h, h, 0.0]], tol=1e-5)
    close(whiten(x, m, shift_mean=False), [[2 - h, 2 + h, 0.0]], tol=1e-5)


def test_whiten_random_masked_entries_have_mean_zero_unit_std():
    """Whatever the input, the masked-in entries come out with mean 0 and unbiased std 1, and
    the masked-out ones as 0; without a mask, all entries are used."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * 5 + 3
    m = (torch.arange(9)[None, :] < torch.tensor([[9], [5], [1], [3]])).long()
    w = whiten(x, m)
    kept = w[m.bool()]
    assert abs(kept.mean().item()) < 1e-5
    assert kept.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.all(w[~m.bool()] == 0)
    w1 = whiten(x[0])
    assert abs(w1.mean().item()) < 1e-5 and w1.std().item() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------- KL


def test_kl_estimators_expectations_under_p_match_closed_forms():
    """p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4). KL(p‖q) = ½ ln 2 + ¼ ln ½ + 0 = ¼ ln 2.
    Weighting each outcome's estimate by p gives the exact expectation over x ~ p:
    E[k1] = Σ p log(p/q) = KL and E[k3] = Σ p (q/p − 1 − log(q/p)) = Σq − 1 + KL = KL (both
    unbiased); E[k2] = ½ Σ p (log q/p)² = ½(½ + ¼) ln²2 = (3/8) ln²2, which is not KL (biased)."""
    p, q = t(0.5, 0.25, 0.25), t(0.25, 0.5, 0.25)
    kl = 0.25 * LN2
    assert float((p * kl_estimate(p.log(), q.log(), "k1")).sum()) == pytest.approx(kl, abs=1e-6)
    assert float((p * kl_estimate(p.log(), q.log(), "k3")).sum()) == pytest.approx(kl, abs=1e-6)
    assert float((p * kl_estimate(p.log(), q.log(), "k2")).sum()) == pytest.approx(0.375 * LN2**2, abs=1e-6)
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


def test_k3_nonnegative_and_gradient_and_clamp():
    """k3 = e^y − 1 − y with y = ref − lp is ≥ 0 everywhere and 0 only at y = 0. Its gradient
    w.r.t. lp is −e^y + 1 = 1 − r: at lp = ref − ln 2 (r = 2) it is −1, at lp = ref (r = 1) 0.
    A log-ratio of 100 is clamped to 20 before exp: the value is e^20 − 21, finite."""
    g = torch.Generator().manual_seed(1)
    lp, ref = torch.randn(200, generator=g) * 3, torch.randn(200, generator=g) * 3
    assert torch.all(kl_estimate(lp, ref, "k3") >= 0)
    assert torch.all(kl_estimate(lp, lp, "k3") == 0)

    x = t(-LN2, 0.0).requires_grad_(True)
    kl_estimate(x, torch.zeros(2), "k3").sum().backward()
    close(x.grad, [-1.0, 0.0])
    big = kl_estimate(t(0.0), t(100.0), "k3")
    assert torch.isfinite(big).all()
    assert float(big) == pytest.approx(math.exp(20.0) - 21.0, rel=1e-6)


def test_kl_estimate_errors_and_dtype():
    with pytest.raises(UserError, match="k1, k2, k3"):
        kl_estimate(t(0.0), t(0.0), "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_estimate(t(0.0), t(0.0, 1.0), "k1")
    assert kl_estimate(t(0.0).bfloat16(), t(1.0).bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------------- ratios and PPO clip


def test_ratio_one_gives_minus_advantage_and_neutral_stats():
    """logprobs == old_logprobs: ρ = 1 inside [1 − ε, 1 + ε], so loss_t = −A_t on real tokens
    (A broadcast from (B,)), 0 on padding; nothing clipped, mean ratio 1, approx KL 0."""
    lp = t([-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = clipped_policy_loss(lp, lp.clone(), t(2.0, -3.0), m)
    close(loss, [[-2.0, -2.0, -2.0], [3.0, 3.0, 0.0]])
    assert stats == pytest.approx({"clip_fraction": 0.0, "ratio_mean": 1.0, "ratio_max": 1.0, "approx_kl": 0.0})


def test_clipped_loss_gradient_zero_only_on_the_clipped_side():
    """ε = 0.2, one token per row, d loss/d logprob = −A·ρ where the unclipped term is chosen
    and 0 where the clipped (constant) one is:
      ρ = 1.5, A = +2 → min(3, 1.2·2 = 2.4) is clipped: loss −2.4, grad 0
      ρ = 0.5, A = +2 → min(1, 0.8·2 = 1.6) = 1 unclipped: loss −1, grad −2·0.5 = −1
      ρ = 0.5, A = −2 → min(−1, −1.6) is clipped: loss 1.6, grad 0
      ρ = 1.5, A = −2 → min(−3, −2.4) = −3 unclipped: loss 3, grad 2·1.5 = 3
      ρ = 1.1, A = +2 → inside: loss −2.2, grad −2.2
    clip_fraction = 2/5."""
    ratios = t(1.5, 0.5, 0.5, 1.5, 1.1)
    adv = t(2.0, 2.0, -2.0, -2.0, 2.0)
    old = torch.full((5, 1), -1.0)
    lp = (old + ratios.log()[:, None]).requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, old, adv, torch.ones(5, 1), clip_epsilon=0.2)
    close(loss[:, 0], [-2.4, -1.0, 1.6, 3.0, -2.2], tol=1e-5)
    loss.sum().backward()
    close(lp.grad[:, 0], [0.0, -1.0, 0.0, 3.0, -2.2], tol=1e-5)
    assert stats["clip_fraction"] == pytest.approx(0.4)
    quiet, no_stats = clipped_policy_loss(lp, old, adv, torch.ones(5, 1), clip_epsilon=0.2, with_stats=False)
    assert no_stats == {} and torch.equal(quiet, loss)


def test_clip_higher_is_asymmetric():
    """ε_low = 0.2, ε_high = 0.28 (DAPO): ρ = 1.25 with A = 1 is inside [0.8, 1.28], so the loss
    is −1.25 with gradient −1.25; symmetric ε = 0.2 clips it to −1.2 with gradient 0. ρ = 0.75
    with A = −1 is below 0.8 and clipped in both cases: loss 0.8, gradient 0."""
    old = torch.zeros(2, 1)
    adv = t(1.0, -1.0)
    lp = (old + t(1.25, 0.75).log()[:, None]).requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, old, adv, torch.ones(2, 1), clip_epsilon=0.2, clip_epsilon_high=0.28)
    close(loss[:, 0], [-1.25, 0.8], tol=1e-5)
    loss.sum().backward()
    close(lp.grad[:, 0], [-1.25, 0.0], tol=1e-5)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    sym, _ = clipped_policy_loss(lp.detach(), old, adv, torch.ones(2, 1), clip_epsilon=0.2)
    close(sym[:, 0], [-1.2, 0.8], tol=1e-5)


def test_cispo_weights_the_log_prob_gradient_by_the_clipped_ratio():
    """CISPO, ε_low = 0.2, ε_high = 0.28 (weights clipped to [0.8, 1.28]); logprob ℓ = −1 on
    every token, so loss = −w·A·ℓ = w·A and d loss/d ℓ = −w·A, never 0:
      ρ = 1.5, A = +2 → w = 1.28: loss 2.56, grad −2.56 (PPO: grad 0)
      ρ = 0.5, A = +2 → w = 0.8:  loss 1.6,  grad −1.6
      ρ = 0.5, A = −2 → w = 0.8:  loss −1.6, grad 1.6  (PPO: grad 0)
      ρ = 1.1, A = +2 → w = 1.1:  loss 2.2,  grad −2.2
    clip_fraction 3/4; a padded token (ρ = 10) counts nowhere."""
    ratios = t(1.5, 0.5, 0.5, 1.1)
    adv = t(2.0, 2.0, -2.0, 2.0)
    lp = torch.full((4, 2), -1.0, requires_grad=True)
    old = torch.stack([lp.detach()[:, 0] - ratios.log(), lp.detach()[:, 1] - math.log(10.0)], dim=1)
    mask = torch.tensor([[1, 0]] * 4)
    loss, stats = cispo_policy_loss(lp, old, adv, mask, clip_epsilon=0.2, clip_epsilon_high=0.28)
    close(loss[:, 0], [2.56, 1.6, -1.6, 2.2], tol=1e-5)
    close(loss[:, 1], [0.0] * 4)
    loss.sum().backward()
    close(lp.grad[:, 0], [-2.56, -1.6, 1.6, -2.2], tol=1e-5)
    close(lp.grad[:, 1], [0.0] * 4)
    assert stats["clip_fraction"] == pytest.approx(0.75)
    assert stats["ratio_max"] == pytest.approx(1.5) and stats["ratio_mean"] == pytest.approx(0.9)


def test_cispo_defaults_cap_only_above_and_match_ppo_on_policy():
    """Defaults ε_low = 1, ε_high = 3: a ratio of 0.01 keeps its weight (no lower bound), 9 is
    capped at 4. On-policy (ρ = 1) CISPO's gradient −A·∇ℓ equals the PPO surrogate's."""
    old = torch.zeros(2, 1)
    lp = (old + t(0.01, 9.0).log()[:, None]).requires_grad_(True)
    loss, stats = cispo_policy_loss(lp, old, t(1.0, 1.0), torch.ones(2, 1))
    close(loss[:, 0], [-0.01 * math.log(0.01), -4.0 * math.log(9.0)], tol=1e-5)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    torch.manual_seed(0)
    lp = torch.randn(3, 4, requires_grad=True)
    adv, mask = torch.randn(3), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    cispo_policy_loss(lp, lp.detach(), adv, mask)[0].sum().backward()
    g_cispo, lp.grad = lp.grad.clone(), None
    clipped_policy_loss(lp, lp.detach(), adv, mask)[0].sum().backward()
    close(g_cispo, lp.grad, tol=1e-6)
    with pytest.raises(UserError, match="clip_epsilon must be > 0"):
        cispo_policy_loss(lp, lp.detach(), adv, mask, clip_epsilon=0.0)


def test_clipped_loss_stats_over_masked_tokens_only():
    """Row 0 has ratios 2 and ¼ (A = 1, ε = 0.2) and a padded token with ratio 10 that must not
    count. Ratio 2 is clipped (1.2 < 2), ratio ¼ is not (¼ < 0.8). clip_fraction ½, ratio_mean
    (2 + ¼)/2 = 1.125, ratio_max 2, approx_kl = mean((ρ − 1) − ln ρ)
    = ((1 − ln 2) + (−¾ + 2 ln 2))/2 = ⅛ + ½ ln 2. An all-padding batch reports zeros."""
    old = torch.zeros(1, 3)
    lp = t([LN2, -2 * LN2, math.log(10.0)])
    loss, stats = clipped_policy_loss(lp, old, t(1.0), torch.tensor([[1, 1, 0]]))
    expected = {"clip_fraction": 0.5, "ratio_mean": 1.125, "ratio_max": 2.0, "approx_kl": 0.125 + 0.5 * LN2}
    assert stats == pytest.approx(expected)
    assert loss[0, 2] == 0
    _, empty = clipped_policy_loss(lp, old, t(1.0), torch.zeros(1, 3))
    assert empty == {"clip_fraction": 0.0, "ratio_mean": 0.0, "ratio_max": 0.0, "approx_kl": 0.0}


def test_clipped_loss_per_token_advantages_dtype_and_errors():
    """(B, T) advantages are used as given: ρ = 1 → loss = −A per token; bf16 inputs compute and
    return fp32."""
    lp = torch.zeros(1, 2, dtype=torch.bfloat16)
    loss, _ = clipped_policy_loss(lp, lp, t([1.0, -4.0]), torch.ones(1, 2))
    assert loss.dtype == torch.float32
    close(loss, [[-1.0, 4.0]])
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(lp, lp, t(1.0, 2.0, 3.0), torch.ones(1, 2))
    with pytest.raises(UserError, match="clip_epsilon"):
        clipped_policy_loss(lp, lp, t(1.0), torch.ones(1, 2), clip_epsilon=1.5)
    with pytest.raises(UserError, match="token, sequence"):
        importance_ratio_log(lp, lp, torch.ones(1, 2), level="sentence")


def test_gspo_sequence_ratio_is_geometric_mean_with_mean_gradient():
    """Row 0 token log-ratios ln 2 and ln 8 (third token padded, log-ratio ln 1000 ignored):
    log s = (ln 2 + ln 8)/2 = ln 4, the log of the geometric mean √(2·8) = 4, on both real tokens
    and 0 on the padding. Row 1 has one token with log-ratio −ln 2: log s = −ln 2.
    ∂ log s₀ / ∂ logprobs₀ = m/|y| = (½, ½, 0); the token-level ratio is just the difference."""
    old = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    lp = (old + t([LN2, 3 * LN2, math.log(1000.0)], [-LN2, 5.0, 5.0])).requires_grad_(True)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    log_s = importance_ratio_log(lp, old, m, level="sequence")
    close(log_s, [[2 * LN2, 2 * LN2, 0.0], [-LN2, 0.0, 0.0]], tol=1e-5)
    close(log_s.exp()[0, 0], (2.0 * 8.0) ** 0.5, tol=1e-5)
    log_s[0, 0].backward()
    close(lp.grad, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    close(importance_ratio_log(lp, old, m, "token"), [[LN2, 3 * LN2, 0.0], [-LN2, 0.0, 0.0]], tol=1e-5)


def test_gspo_clips_the_whole_sequence():
    """Sequence level, ε = 0.2, A = 1 per row. Row 0: token ratios 2 and 8 → s = 4 > 1.2, so
    every token is clipped: loss −1.2 each, gradient 0, clip_fraction counts both tokens.
    Row 1: token ratios 2 and ½ → s = 1, inside: loss −1 on each token; the token-sum −2·s has
    gradient −2·s·(½) = −1 per token. (Token level would clip row 1's ratio-2 token instead.)"""
    old = torch.zeros(2, 2)
    lp = t([LN2, 3 * LN2], [LN2, -LN2]).requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, old, t(1.0, 1.0), torch.ones(2, 2), level="sequence")
    close(loss, [[-1.2, -1.2], [-1.0, -1.0]], tol=1e-5)
    loss.sum().backward()
    close(lp.grad, [[0.0, 0.0], [-1.0, -1.0]], tol=1e-5)
    assert stats["clip_fraction"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------- aggregate


def test_aggregate_token_vs_sequence():
    """per_token [[1, 2, 3], [4, 7, 7], [9, 9, 9]], mask [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    (the 7s and 9s are padding and must be ignored):
    token: sum 1+2+3+4 = 10 over 4 tokens; sequence: row means 2 and 4, sum 6 over 2 rows (the
    empty row does not count). The gradient of the sequence sum is m/|y| per row: ⅓ and 1."""
    x = t([1, 2, 3], [4, 7, 7], [9, 9, 9]).requires_grad_(True)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    s, n = aggregate(x, m, "token")
    assert (float(s.detach()), n) == (10.0, 4) and isinstance(n, int)
    s, n = aggregate(x, m, "sequence")
    assert (float(s.detach()), n) == (6.0, 2)
    s.backward()
    close(x.grad, [[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(UserError, match="token, sequence"):
        aggregate(x, m, "batch")
    assert AGGREGATIONS == ("token", "sequence")


# ------------------------------------------------------------------------------- value loss


def test_clipped_value_loss_takes_the_max():
    """c = 0.2, V_old = 1 everywhere.
      V = 2, R = 3: unclipped (2−3)² = 1; V_clip = 1.2, (1.2−3)² = 3.24 → max 3.24, loss 1.62,
                    clipped chosen, gradient 0 (V_clip is constant in V once clamped)
      V = 2, R = 1: unclipped 1; V_clip = 1.2, 0.04 → max 1, loss 0.5, gradient V − R = 1
      V = 1.1, R = 3: |V − V_old| < c, both terms 1.9² = 3.61 → loss 1.805, gradient −1.9
      fourth position padded (NaN-free junk values), loss 0.
    value_clip_fraction = 1/3. With clipping disabled (None or 0) every loss is ½(V − R)²."""
    v = t([2.0, 2.0, 1.1, 50.0]).requires_grad_(True)
    old, ret = torch.ones(1, 4), t([3.0, 1.0, 3.0, -50.0])
    m = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(v, old, ret, m, clip_range_value=0.2)
    close(loss, [[1.62, 0.5, 1.805, 0.0]], tol=1e-5)
    loss.sum().backward()
    close(v.grad, [[0.0, 1.0, -1.9, 0.0]], tol=1e-5)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)
    for c in (None, 0.0):
        plain, s = clipped_value_loss(v.detach(), old, ret, m, clip_range_value=c)
        close(plain, [[0.5, 0.5, 0.5 * 1.9**2, 0.0]], tol=1e-5)
        assert s["value_clip_fraction"] == 0.0


# ---------------------------------------------------------------------------------- entropy


def test_entropy_hand_values_across_chunks(monkeypatch):
    """Uniform over V = 7 → ln 7. p = (½, ¼, ¼) from logits ln p → −Σ p ln p = 1.5 ln 2.
    A −inf logit is a zero-probability token: (0, −inf, 0) is uniform over 2 → ln 2, with a
    finite gradient. A one-hot-like row (1000, 0, 0) → 0. The chunk size is forced to one row so
    the rows go through separate chunks; bf16 input still gives fp32 output."""
    monkeypatch.setattr(P, "_ENTROPY_CHUNK_ELEMENTS", 7)
    uniform = entropy_from_logits(torch.full((2, 3, 7), 0.3))
    assert uniform.shape == (2, 3)
    close(uniform, torch.full((2, 3), math.log(7.0)))
    rows = torch.tensor(
        [[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, float("-inf"), 0.0], [1000.0, 0.0, 0.0]]
    ).requires_grad_(True)
    h = entropy_from_logits(rows)
    close(h, [1.5 * LN2, LN2, 0.0])
    h.sum().backward()
    assert torch.isfinite(rows.grad).all()
    assert entropy_from_logits(torch.zeros(4, 5, dtype=torch.bfloat16)).dtype == torch.float32
