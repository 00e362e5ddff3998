"""Per-token Monte-Carlo estimators of KL(π ‖ π_ref) from sampled tokens (Schulman 2020,
"Approximating KL divergence", http://joschu.net/blog/kl-approx.html).

For a token `x` sampled from π, let `log r = log π_ref(x) − log π(x)` (nats). Then

    k1 = −log r                    unbiased, high variance, can be negative per token
    k2 = (log r)² / 2              biased (low bias when π ≈ π_ref), always ≥ 0
    k3 = (r − 1) − log r           unbiased (E_π[r] = 1), always ≥ 0 (since e^y ≥ 1 + y)

Summing a per-token estimate over a completion estimates the sequence-level KL. RLHF with PPO
puts `−β·k1` into the per-token reward; GRPO adds `β·k3` to the loss (Shao et al. 2024,
arXiv:2402.03300 eq. 4), so the estimates stay differentiable w.r.t. `logprobs`.

Also here: RLHF's per-token reward with its KL penalty (`token_rewards`) and the adaptive KL
coefficient (`AdaptiveKLController`, Ziegler et al. 2019).
"""

from __future__ import annotations

import torch

from minigpt.losses.names import KL_ESTIMATORS
from minigpt.errors import UserError


_LOG_RATIO_CLAMP = 20.0  # |log r| bound before exp in k3: e^20 ≈ 4.9e8 stays finite in fp32


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when the input already is."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) for tokens sampled from π.

    See the module docstring for `k1`, `k2`, `k3`. For `k3`, `log r` is clamped to [−20, 20]
    before the exponential (so a reference that gives a token probability ~0 cannot overflow;
    the gradient is 0 where the clamp binds). The caller masks padding and reduces.

    Args:
        logprobs: `(…)` log π of the sampled tokens (nats), differentiable.
        ref_logprobs: `(…)` log π_ref of the same tokens, same shape; treated as a constant
            (gradients still flow if it requires grad, but it normally comes from a frozen model).
        estimator: one of `KL_ESTIMATORS`.

    Returns:
        `(…)` fp32 (fp64 for fp64 input) per-token estimates in nats, differentiable w.r.t.
        `logprobs`.

    Raises:
        UserError (a ValueError): unknown `estimator`.
        ValueError: shapes differ.
    """
    if estimator not in KL_ESTIMATORS:
        raise UserError(f"kl_estimate: unknown estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_estimate: logprobs shape {tuple(logprobs.shape)} != ref_logprobs shape {tuple(ref_logprobs.shape)}"
        )
    dtype = torch.promote_types(_compute_dtype(logprobs), _compute_dtype(ref_logprobs))
    log_r = ref_logprobs.to(dtype) - logprobs.to(dtype)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r * log_r
    log_r = log_r.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.expm1(log_r) - log_r


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RLHF reward: a KL penalty on every token plus the score on the last one.

        KL_t = kl_estimate(logprobs_t, ref_logprobs_t)      (k1: log π(y_t) − log π_ref(y_t))
        r_t  = −kl_coef · KL_t + [t = last completion token of the row] · s

    (Ziegler et al. 2019, arXiv:1909.08593 §2.2, eq. 2; InstructGPT's objective, Ouyang et al.
    2022, arXiv:2203.02155 eq. 2, spread over tokens as in TRL's PPOTrainer.) Summed over a
    completion the reward is `s − kl_coef · Σ_t KL_t`, whose expectation is
    `s − kl_coef · KL(π ‖ π_ref)` of the sequence.

    Args:
        scores: `(B,)` scalar score of each completion (reward-model output and/or rule
            rewards), in reward units.
        logprobs: `(B, N)` log π of the sampled tokens under the policy that sampled them (nats).
        ref_logprobs: `(B, N)` the same under the reference policy.
        completion_mask: `(B, N)` 0/1, right-padded per row (ones then zeros).
        kl_coef: β ≥ 0, reward units per nat.
        kl_estimator: `"k1"` (the plain log-ratio, TRL's default) or `"k3"` (≥ 0), see
            `minigpt.losses.kl`.

    Returns:
        `(rewards, kl)`, each `(B, N)` fp32, 0 where the mask is 0; rows without any completion
        token get no score.

    Raises:
        ValueError: shapes that disagree.
    """
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != completion_mask.shape or logprobs.dim() != 2:
        raise ValueError(
            f"token_rewards: logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must share one (B, N) shape"
        )
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"token_rewards: scores must be (B,) = ({logprobs.shape[0]},), got {tuple(scores.shape)}")
    keep = completion_mask != 0
    kl = kl_estimate(logprobs.float(), ref_logprobs.float(), kl_estimator)
    kl = torch.where(keep, kl, torch.zeros_like(kl))  # (B, N)
    rewards = -kl_coef * kl
    lengths = keep.sum(dim=1)  # (B,)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    last = lengths[rows] - 1  # index of each row's last completion token (the mask is right-padded)
    rewards[rows, last] += scores.float()[rows]
    return rewards, kl


class AdaptiveKLController:
    """The KL coefficient β, fixed or adapted towards a target KL (Ziegler et al. 2019,
    arXiv:1909.08593 §2.2):

        e = clip(KL / target − 1, −0.2, 0.2);   β ← β · (1 + e · n / horizon)

    after each rollout of `n` completions whose mean KL per sequence (summed over tokens) is
    `KL`. `target=None` keeps β fixed.

    Args:
        kl_coef: the starting β (≥ 0).
        target: the KL per sequence (nats) to steer towards, or None (fixed β).
        horizon: completions over which a persistent relative error of 20 % changes β by
            about a factor e^0.2.

    Raises:
        UserError: negative `kl_coef`, `target <= 0`, `horizon <= 0`.
    """

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000) -> None:
        if not kl_coef >= 0:
            raise UserError(f"kl_coef must be >= 0, got {kl_coef}")
        if target is not None and not target > 0:
            raise UserError(f"the adaptive KL target must be > 0, got {target}")
        if not horizon > 0:
            raise UserError(f"the adaptive KL horizon must be > 0, got {horizon}")
        self.value = float(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt β after a rollout of `n_steps` completions with mean KL `current_kl`; returns
        the new β (unchanged when fixed)."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """`{"kl_coef": β}`, for checkpoints (a resumed run continues from the adapted β)."""
        return {"kl_coef": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore β from what `state_dict` returned."""
        self.value = float(state["kl_coef"])


__all__ = ["AdaptiveKLController", "kl_estimate", "token_rewards"]
