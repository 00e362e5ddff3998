"""Preference-optimisation losses: DPO and its variants, SimPO, ORPO, KTO, and the
Bradley–Terry reward-model loss.

Every function here is pure: it takes per-sequence log-probabilities (or rewards) as 1-D `(B,)`
tensors, computes in fp32 and returns per-example tensors that the caller sums or averages.
Implicit rewards are returned detached (they are for logging and accuracy metrics only).

Log-probabilities are in nats. "Summed" log-probs are `Σ_t log π(y_t | x, y_<t)` over the reply
tokens (see `sequence_logprobs`); "average" log-probs divide that sum by the reply's token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.losses.lm import IGNORE_INDEX

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")  # the ones `dpo_loss` itself computes

_CHUNK_ROWS = 1024  # supervised positions per fp32 chunk in `sequence_logprobs`


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when the input already is (so `torch.autograd.gradcheck` can run)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _TokenLogProbs(torch.autograd.Function):
    """`log softmax(logits[i])[targets[i]]` for the rows `i` of flat `(M, V)` logits, computed in
    fp32 a chunk of rows at a time.

    Forward keeps one log-sum-exp per row; backward writes `grad · (onehot − softmax)` straight
    into a gradient of the logits' dtype, so no `(M, V)` fp32 log-prob tensor is ever saved for
    autograd (as `F.log_softmax(logits.float())` would save), the same trick as
    `minigpt.losses.lm._ChunkedCrossEntropy`.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk):  # noqa: D102
        dtype = _compute_dtype(logits)
        out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, logits.shape[0], chunk):
            rows = logits[s : s + chunk].to(dtype)
            # cross_entropy(reduction="none") = lse − picked, in one fused fp32 kernel per chunk
            out[s : s + chunk] = -F.cross_entropy(rows, targets[s : s + chunk], reduction="none")
            lse[s : s + chunk] = torch.logsumexp(rows, dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        dtype = lse.dtype
        g = grad_out.to(dtype)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            p = torch.exp(logits[s:e].to(dtype) - lse[s:e, None])  # softmax rows
            p.neg_().scatter_add_(1, targets[s:e, None], p.new_ones((p.shape[0], 1)))  # onehot − softmax
            grad[s:e] = p.mul_(g[s:e, None])
        return grad, None, None


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's supervised targets, in nats, computed in fp32.

    `logprobs[n] = Σ_t log softmax(logits[n, t])[targets[n, t]]` over the positions with
    `targets[n, t] != −100`. Targets are ALIGNED with the logits: position `t` predicts
    `targets[n, t]` (for a causal LM that is `input_ids[n, t + 1]` on reply tokens), so no shift
    happens here.

    Only the supervised positions are evaluated, a chunk of rows at a time in fp32 (the same value
    as `F.cross_entropy(reduction="none")` per row), and the backward pass never materialises an
    fp32 `(N, T, V)` tensor, whatever the logits' dtype.

    Args:
        logits: `(N, T, V)` scores, any float dtype, differentiable.
        targets: `(N, T)` long ids, −100 where no log-prob is wanted.

    Returns:
        `(logprobs, num_tokens)`: `(N,)` fp32 summed log-probs (0 for a row with no supervised
        target; gradients flow to `logits`) and `(N,)` long counts of supervised targets.

    Raises:
        ValueError: if the shapes do not match.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"sequence_logprobs needs logits (N, T, V) and targets (N, T); got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    n, t, v = logits.shape
    valid = targets != IGNORE_INDEX  # (N, T)
    num_tokens = valid.sum(dim=1)
    flat_index = valid.reshape(-1).nonzero().squeeze(1)  # positions that carry a log-prob
    row_of = flat_index // t  # which sequence each one belongs to
    picked = _TokenLogProbs.apply(logits.reshape(n * t, v)[flat_index], targets.reshape(-1)[flat_index], _CHUNK_ROWS)
    logprobs = picked.new_zeros(n).index_add(0, row_of, picked)
    return logprobs, num_tokens.long()


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(_compute_dtype(x)) if torch.is_floating_point(x) else x.float()


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise UserError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """`−(1−ε)·logσ(z) − ε·logσ(−z)`: the logistic loss when the label is flipped with prob. ε."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def dpo_loss(
    policy_chosen_logprobs: torch.Tensor,
    policy_rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor | None = None,
    ref_rejected_logprobs: torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    reference_free: bool = False,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimisation and two relatives on summed sequence log-probs.

    With the log-ratio margin `h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`:

    - `sigmoid` (DPO, Rafailov et al. 2023, arXiv:2305.18290 eq. 7):
      `−(1−ε)·logσ(βh) − ε·logσ(−βh)`; ε = `label_smoothing` > 0 gives conservative DPO
      (Mitchell 2023, "A note on DPO with noisy preferences"), which assumes each label is
      flipped with probability ε.
    - `ipo` (Azar et al. 2023, arXiv:2310.12036 eq. 17): `(h' − 1/(2β))²`, where `h'` uses
      per-token-average log-ratios `(log π(y) − log π_ref(y)) / |y|` when `chosen_lengths` and
      `rejected_lengths` are given (as TRL and the IPO authors do, so β does not depend on reply
      length), else `h' = h`.
    - `hinge` (SLiC, Zhao et al. 2023, arXiv:2305.10425): `relu(1 − βh)`.

    With `reference_free=True`, or with both reference log-probs `None`, the references are 0
    (an implicit uniform reference).

    Args:
        policy_chosen_logprobs, policy_rejected_logprobs: `(B,)` summed log-probs (nats) of the chosen /
            rejected replies under the policy, differentiable.
        ref_chosen_logprobs, ref_rejected_logprobs: `(B,)` the same under the frozen reference, or None.
        beta: β > 0, the strength of the implicit KL penalty (IPO: its τ).
        label_smoothing: ε in [0, 0.5); only the `sigmoid` loss uses it.
        loss_type: one of `DPO_LOSS_TYPES` ("sigmoid", "ipo", "hinge").
        reference_free: ignore the references.
        chosen_lengths, rejected_lengths: `(B,)` reply token counts (IPO only; clamped to ≥ 1).

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(B,)` fp32. Rewards are the implicit
        rewards `β·(log π(y) − log π_ref(y))` of the summed log-probs for every loss type,
        detached.

    Raises:
        UserError (a ValueError): unknown `loss_type`, β ≤ 0, ε outside [0, 0.5), or ε > 0 with a
            loss other than `sigmoid`.
        ValueError: mismatched shapes, only one of the two references / lengths given.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise UserError(
            f"unknown DPO loss_type {loss_type!r}; dpo_loss computes one of {', '.join(DPO_LOSS_TYPES)} "
            "(simpo/orpo/kto have their own functions)"
        )
    if beta <= 0:
        raise UserError(f"beta must be > 0, got {beta}")
    _check_label_smoothing(label_smoothing)
    if label_smoothing and loss_type != "sigmoid":
        raise UserError(f"label_smoothing applies to the sigmoid DPO loss only, not {loss_type!r}")
    _check_pair(policy_chosen_logprobs, policy_rejected_logprobs, "policy_chosen_logprobs and policy_rejected_logprobs")
    pw, pl = _f32(policy_chosen_logprobs), _f32(policy_rejected_logprobs)
    if (ref_chosen_logprobs is None) != (ref_rejected_logprobs is None):
        raise ValueError("give both ref_chosen_logprobs and ref_rejected_logprobs, or neither")
    if reference_free or ref_chosen_logprobs is None:
        rw, rl = torch.zeros_like(pw), torch.zeros_like(pl)
    else:
        _check_pair(pw, ref_chosen_logprobs, "policy_chosen_logprobs and ref_chosen_logprobs")
        _check_pair(pl, ref_rejected_logprobs, "policy_rejected_logprobs and ref_rejected_logprobs")
        rw, rl = _f32(ref_chosen_logprobs).detach(), _f32(ref_rejected_logprobs).detach()
    chosen_ratio, rejected_ratio = pw - rw, pl - rl
    if loss_type == "sigmoid":
        losses = _smoothed_logistic(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * (chosen_ratio - rejected_ratio))
    else:  # ipo
        if (chosen_lengths is None) != (rejected_lengths is None):
            raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
        if chosen_lengths is not None:
            chosen_ratio = chosen_ratio / chosen_lengths.to(chosen_ratio).clamp(min=1.0)
            rejected_ratio = rejected_ratio / rejected_lengths.to(rejected_ratio).clamp(min=1.0)
        losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards = beta * (pw - rw).detach()
    rejected_rewards = beta * (pl - rl).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_avg_logprobs: torch.Tensor,
    policy_rejected_avg_logprobs: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO: reference-free, length-normalised preference loss (Meng, Xia & Chen 2024,
    arXiv:2405.14734 eq. 6).

    `−(1−ε)·logσ(z) − ε·logσ(−z)` with `z = β·avg_w − β·avg_l − γ`, where `avg` is the
    per-token average log-prob of a reply (nats/token) and γ the target reward margin.

    Args:
        policy_chosen_avg_logprobs, policy_rejected_avg_logprobs: `(B,)` average log-probs, differentiable.
        beta: β > 0, the reward scale.
        gamma: γ, the target margin in reward units.
        label_smoothing: ε in [0, 0.5), as in conservative DPO.

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(B,)` fp32; rewards `β·avg`, detached.

    Raises:
        UserError: β ≤ 0 or ε outside [0, 0.5). ValueError: mismatched shapes.
    """
    if beta <= 0:
        raise UserError(f"beta must be > 0, got {beta}")
    _check_label_smoothing(label_smoothing)
    _check_pair(policy_chosen_avg_logprobs, policy_rejected_avg_logprobs, "chosen and rejected average log-probs")
    aw, al = _f32(policy_chosen_avg_logprobs), _f32(policy_rejected_avg_logprobs)
    losses = _smoothed_logistic(beta * aw - beta * al - gamma, label_smoothing)
    return losses, beta * aw.detach(), beta * al.detach()


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """`log(1 − exp(a))` for `a < 0`, accurate everywhere (Mächler 2012): `log(−expm1(a))` near
    0, `log1p(−exp(a))` below −ln 2. Each branch only sees inputs it handles (the other ones are
    replaced by −1), so the branch `torch.where` discards cannot put a NaN in the gradient."""
    near = a > -0.6931471805599453
    filler = torch.full_like(a, -1.0)
    return torch.where(
        near,
        torch.log(-torch.expm1(torch.where(near, a, filler))),
        torch.log1p(-torch.exp(torch.where(near, filler, a))),
    )


def orpo_loss(
    policy_chosen_avg_logprobs: torch.Tensor,
    policy_rejected_avg_logprobs: torch.Tensor,
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO: SFT on the chosen reply plus an odds-ratio preference term (Hong, Lee & Thorne 2024,
    arXiv:2403.07691 eq. 6–7).

    With `a` a reply's average log-prob and `log odds(y) = a − log(1 − exp(a))`:
    `losses = −a_w + λ·(−logσ(log odds(y_w) − log odds(y_l)))`. The first term is the chosen
    reply's per-token NLL (nats/token). `a` is clamped to ≤ −1e-12 so a reply of probability 1
    gives a large finite log-odds instead of ∞.

    Args:
        policy_chosen_avg_logprobs, policy_rejected_avg_logprobs: `(B,)` average log-probs (< 0), differentiable.
        lam: λ ≥ 0, weight of the odds-ratio term.

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(B,)` fp32; rewards `λ·avg`, detached.

    Raises:
        UserError: λ < 0. ValueError: mismatched shapes.
    """
    if lam < 0:
        raise UserError(f"ORPO lambda must be >= 0, got {lam}")
    _check_pair(policy_chosen_avg_logprobs, policy_rejected_avg_logprobs, "chosen and rejected average log-probs")
    aw, al = _f32(policy_chosen_avg_logprobs), _f32(policy_rejected_avg_logprobs)
    cw, cl = aw.clamp(max=-1e-12), al.clamp(max=-1e-12)
    log_odds_ratio = (cw - _log1mexp(cw)) - (cl - _log1mexp(cl))
    losses = -aw - lam * F.logsigmoid(log_odds_ratio)
    return losses, lam * aw.detach(), lam * al.detach()


def kto_loss(
    policy_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO: Kahneman–Tversky optimisation on unpaired good/bad examples (Ethayarajh et al. 2024,
    arXiv:2402.01306 eq. 8).

    With `r = log π(y|x) − log π_ref(y|x)` and the reference point `z0` (a batch estimate of
    `KL(π ‖ π_ref)`, see `kto_reference_point`; detached and clamped to ≥ 0 here):
    desirable `y`: `w_d·(1 − σ(β(r − z0)))`; undesirable `y`: `w_u·(1 − σ(β(z0 − r)))`.
    (The paper's `λ_y − v(x, y)` with `λ_y = w_y`; the constant changes no gradient.)

    Args:
        policy_logprobs: `(B,)` summed log-probs under the policy, differentiable.
        ref_logprobs: `(B,)` summed log-probs under the reference.
        desirable: `(B,)` bool, True for a desirable (good) example.
        reference_point: scalar tensor or float, `z0` in nats.
        beta: β > 0.
        desirable_weight, undesirable_weight: `w_d`, `w_u` ≥ 0 (to balance unequal counts).

    Returns:
        `(losses, rewards)`, each `(B,)` fp32; rewards `β·r`, detached.

    Raises:
        UserError: β ≤ 0 or a negative weight. ValueError: mismatched shapes.
    """
    if beta <= 0:
        raise UserError(f"beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise UserError(f"KTO weights must be >= 0, got {desirable_weight} and {undesirable_weight}")
    _check_pair(policy_logprobs, ref_logprobs, "policy_logprobs and ref_logprobs")
    _check_pair(policy_logprobs, desirable, "policy_logprobs and desirable")
    p = _f32(policy_logprobs)
    r = p - _f32(ref_logprobs).detach()
    z0 = torch.as_tensor(reference_point, dtype=p.dtype, device=p.device).detach().clamp(min=0.0)
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(desirable.to(torch.bool), good, bad)
    return losses, beta * r.detach()


def kto_reference_point(policy_kl_logprobs: torch.Tensor, ref_kl_logprobs: torch.Tensor) -> torch.Tensor:
    """KTO's reference point `z0 = max(0, mean_i [log π(y'_i|x_i) − log π_ref(y'_i|x_i)])`, detached.

    The pairs `(x_i, y'_i)` are mismatched (prompt i with another example's completion), so the
    mean is a biased but cheap estimate of `KL(π ‖ π_ref)` over the batch (Ethayarajh et al.
    2024, §4.1). Clamped at 0 because a KL is never negative; no gradient flows through it.

    Args:
        policy_kl_logprobs, ref_kl_logprobs: `(B,)` summed log-probs (nats) of the mismatched pairs.

    Returns a 0-dim fp32 tensor.

    Raises:
        ValueError: empty or mismatched inputs.
    """
    _check_pair(policy_kl_logprobs, ref_kl_logprobs, "policy_kl_logprobs and ref_kl_logprobs")
    if policy_kl_logprobs.numel() == 0:
        raise ValueError("kto_reference_point needs at least one mismatched pair")
    diff = _f32(policy_kl_logprobs).detach() - _f32(ref_kl_logprobs).detach()
    return diff.mean().clamp(min=0.0)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    center_rewards_coef: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss `−logσ(r_w − r_l − m) + c·(r_w + r_l)²`.

    The first term is the negative log-likelihood of the preference under the Bradley–Terry model
    (Bradley & Terry 1952), `P(y_w ≻ y_l) = σ(r_w − r_l)`; the margin `m` asks for a larger gap on
    clearly-preferred pairs (Llama 2, Touvron et al. 2023, eq. 2). The second term pulls the
    rewards toward zero mean (Eisenstein et al. 2023, arXiv:2312.09244), since the BT loss alone
    only fixes reward differences.

    Args:
        chosen_rewards, rejected_rewards: `(B,)` scalar rewards, differentiable.
        margin: float or `(B,)` tensor `m`, in reward units.
        center_rewards_coef: `c` ≥ 0.

    Returns:
        `(B,)` fp32 per-pair losses (differentiable w.r.t. both rewards).

    Raises:
        UserError: `c` < 0. ValueError: mismatched shapes.
    """
    if center_rewards_coef < 0:
        raise UserError(f"center_rewards_coef must be >= 0, got {center_rewards_coef}")
    _check_pair(chosen_rewards, rejected_rewards, "chosen_rewards and rejected_rewards")
    rw, rl = _f32(chosen_rewards), _f32(rejected_rewards)
    m = margin.to(rw) if isinstance(margin, torch.Tensor) else margin
    losses = -F.logsigmoid(rw - rl - m)
    if center_rewards_coef:
        losses = losses + center_rewards_coef * (rw + rl) ** 2
    return losses


__all__ = [
    "DPO_LOSS_TYPES",
    "bradley_terry_loss",
    "dpo_loss",
    "kto_loss",
    "kto_reference_point",
    "orpo_loss",
    "sequence_logprobs",
    "simpo_loss",
]
