"""Knowledge distillation for language models (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531), applied token by token."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigpt.losses.lm import IGNORE_INDEX


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed token-level distillation loss `Σ_t [τ²·KL(p_T^τ ‖ p_S^τ) + α·CE(y_t, p_S)]`.

    `p^τ = softmax(logits / τ)`; the τ² factor keeps the soft-target gradients on the same
    scale as the hard-label ones when τ changes (Hinton et al. 2015, §2). The sum runs over the
    supervised positions only (`targets != −100`), so padding and prompt tokens carry no loss.
    Everything is computed in fp32.

    Args:
        student_logits: `(B, T, V)`, differentiable.
        teacher_logits: `(B, T, V)`, same vocabulary (computed under `no_grad`).
        targets: `(B, T)` aligned next-token ids, −100 where no loss is wanted.
        temperature: τ > 0, softens both distributions.
        alpha: weight of the hard-label cross-entropy (0 = pure distillation).

    Returns `(loss_sum, parts)`: a scalar summed over supervised tokens, and the detached sums
    `kl` (Σ KL, nats, before the τ² factor) and `ce` (Σ CE, nats).

    Raises:
        ValueError: if the logits' shapes differ (teacher and student must share the
            vocabulary) or `temperature <= 0`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "teacher and student must share the tokenizer and vocabulary size"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = targets != IGNORE_INDEX  # (B, T)
    s = student_logits[valid].float()  # (N, V)
    t = teacher_logits[valid].float().detach()  # (N, V)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()  # Σ_t Σ_v p_T (log p_T − log p_S)
    ce = F.cross_entropy(s, targets[valid], reduction="sum")
    loss = temperature**2 * kl + alpha * ce
    return loss, {"kl": kl.detach(), "ce": ce.detach()}
