"""Distillation: a student learns a frozen teacher's next-token distributions."""

from __future__ import annotations

from typing import Any

import torch

from minigpt.losses.distill import distillation_loss
from minigpt.losses.lm import IGNORE_INDEX
from minigpt.objectives.config import DistillConfig
from minigpt.train.objective import LossOutput
from minigpt.objectives.sft import model_forward


class DistillationObjective:
    """`Σ_t τ²·KL(p_T^τ ‖ p_S^τ) + α·CE` per supervised token (`minigpt.losses.distill`).

    The teacher runs under `torch.no_grad` in eval mode and never receives gradients; it must
    already sit on the training device. Works on any batch with `input_ids` and aligned
    `targets` (pretraining blocks or SFT batches, padded or packed).

    Args:
        teacher: a causal LM with the student's vocabulary.
        config: a `DistillConfig` (τ and α; default `DistillConfig()`, as `minigpt distill`).
    """

    unit_name = "supervised tokens (all targets are -100)"

    def __init__(self, teacher: torch.nn.Module, config: DistillConfig | None = None) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.config = config if config is not None else DistillConfig()
        self.temperature = float(self.config.temperature)
        self.alpha = float(self.config.alpha)

    def num_units(self, batch: dict[str, Any]) -> int:
        """Supervised target tokens in `batch`."""
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed distillation loss; `sums` carries `kl` and `ce` (nats) for logging."""
        with torch.no_grad():
            teacher_logits = model_forward(self.teacher, batch).logits
        student_logits = model_forward(model, batch).logits
        loss, parts = distillation_loss(student_logits, teacher_logits, batch["targets"], self.temperature, self.alpha)
        return LossOutput(
            loss_sum=loss,
            num_units=self.num_units(batch),
            sums={"kl": float(parts["kl"]), "ce": float(parts["ce"])},
        )
