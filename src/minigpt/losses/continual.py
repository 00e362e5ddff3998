"""Regularisers against forgetting when a model is fine-tuned on a new task.

- Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
  neural networks", PNAS, arXiv:1612.00796, eq. 3): a quadratic pull towards the previous
  task's weights θ*, each weight weighted by its diagonal Fisher information F_i:

      L_EWC = (λ / 2) · Σ_i F_i · (θ_i − θ*_i)²

- KL to the base model: the per-token divergence KL(p_θ ‖ p_base) over the whole vocabulary at
  every supervised position, the regulariser of RLHF (Ouyang et al. 2022) used here as a plain
  fine-tuning penalty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from minigpt.losses.lm import IGNORE_INDEX


def ewc_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], ewc_lambda: float) -> torch.Tensor:
    """`(λ/2) · Σ_i F_i (θ_i − θ*_i)²` summed over every given tensor (fp32).

    Args:
        params: the live parameters θ (differentiable).
        anchors: θ*, the weights after the previous task, same shapes.
        fishers: F, the diagonal Fisher information of the previous task, same shapes (≥ 0).
        ewc_lambda: λ ≥ 0.

    Returns:
        A scalar tensor (0 when `params` is empty).

    Raises:
        ValueError: the three sequences differ in length or a shape differs.
    """
    if not len(params) == len(anchors) == len(fishers):
        raise ValueError(f"ewc_penalty: {len(params)} parameters, {len(anchors)} anchors, {len(fishers)} Fisher tensors")
    total = torch.zeros((), dtype=torch.float32, device=params[0].device if params else None)
    for p, a, f in zip(params, anchors, fishers):
        if p.shape != a.shape or p.shape != f.shape:
            raise ValueError(f"ewc_penalty: shape mismatch {tuple(p.shape)} / {tuple(a.shape)} / {tuple(f.shape)}")
        total = total + (f.float() * (p.float() - a.float()).pow(2)).sum()
    return 0.5 * ewc_lambda * total


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`Σ_t KL(p_θ(·|x_<t) ‖ p_ref(·|x_<t))` in nats over the supervised positions, exact over
    the vocabulary, computed in fp32.

    Args:
        logits: `(B, T, V)` of the model being trained (differentiable).
        ref_logits: `(B, T, V)` of the reference (base) model, treated as constants.
        targets: `(B, T)`; positions with −100 carry no penalty.

    Raises:
        ValueError: the logits' shapes differ.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"kl_to_reference: logits {tuple(logits.shape)} and reference logits {tuple(ref_logits.shape)} differ")
    valid = targets != IGNORE_INDEX
    log_p = F.log_softmax(logits[valid].float(), dim=-1)  # (N, V)
    log_q = F.log_softmax(ref_logits[valid].float().detach(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()
