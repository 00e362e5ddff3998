"""Per-token Monte-Carlo estimators of KL(π ‖ π_ref) from sampled tokens (Schulman 2020,
"Approximating KL divergence", http://joschu.net/blog/kl-approx.html).

For a token `x` sampled from π, let `log r = log π_ref(x) − log π(x)` (nats). Then

    k1 = −log r                    unbiased, high variance, can be negative per token
    k2 = (log r)² / 2              biased (low bias when π ≈ π_ref), always ≥ 0
    k3 = (r − 1) − log r           unbiased (E_π[r] = 1), always ≥ 0 (since e^y ≥ 1 + y)

Summing a per-token estimate over a completion estimates the sequence-level KL. RLHF with PPO
puts `−β·k1` into the per-token reward; GRPO adds `β·k3` to the loss (Shao et al. 2024,
arXiv:2402.03300 eq. 4), so the estimates stay differentiable w.r.t. `logprobs`.
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
