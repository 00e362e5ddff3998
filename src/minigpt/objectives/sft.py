"""Supervised fine-tuning: next-token loss on the assistant tokens only, with optional extra
weight on the reasoning tags."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from minigpt.losses.lm import IGNORE_INDEX, tag_loss_weights, token_cross_entropy
from minigpt.objectives.lm import router_terms
from minigpt.train.objective import LossOutput


def model_forward(model: torch.nn.Module, batch: dict[str, Any]):
    """The model output of an SFT batch (padded: 2-D mask; packed: 4-D mask + position ids);
    `.logits (B, T, V)`, and the router losses of a mixture-of-experts model."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
        output_router_logits=True,
    )


class SFTObjective:
    """Masked cross-entropy: `L = Σ_t w_t·CE_t / Σ_t w_t` over the assistant tokens (plus the
    router losses of a mixture-of-experts model in training, `router_terms`).

    Batch (see `minigpt.data.sft`): `input_ids (B, T)`, `targets (B, T)` (−100 outside the
    assistant replies), `attention_mask` `(B, T)` or packed `(B, 1, T, T)`, optional
    `position_ids (B, T)`.

    Args:
        tag_ids: token ids whose targets get `tag_weight` (the four reasoning tags).
        tag_weight: loss weight of a tag target while training (×10 teaches the model
            to open and close its `<think>`/`<answer>` blocks); 1.0 = plain SFT. As in minimind,
            the loss is normalised by the sum of the weights. Evaluation (model in eval mode)
            always reports the plain per-token loss, so validation figures compare across
            settings.
    """

    unit_name = "supervised tokens (all targets are -100)"
    token_nll = True  # exp(val_loss) is a perplexity

    def __init__(self, tag_ids: Sequence[int] = (), tag_weight: float = 1.0) -> None:
        self.tag_ids = list(tag_ids)
        self.tag_weight = float(tag_weight)

    def _weights(self, targets: torch.Tensor, training: bool) -> torch.Tensor | None:
        if not training or not self.tag_ids or self.tag_weight == 1.0:
            return None
        return tag_loss_weights(targets, self.tag_ids, self.tag_weight)

    def num_units(self, batch: dict[str, Any]) -> float:
        """Σ weights of the supervised targets (their count when no tag weighting applies)."""
        w = self._weights(batch["targets"], True)
        if w is None:
            return int((batch["targets"] != IGNORE_INDEX).sum())
        return float(w.sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Weighted summed cross-entropy (nats) of the assistant tokens."""
        targets = batch["targets"]
        out = model_forward(model, batch)
        w = self._weights(targets, model.training)
        loss_sum = token_cross_entropy(out.logits[:, -targets.shape[1] :], targets, reduction="sum", weights=w)
        units = int((targets != IGNORE_INDEX).sum()) if w is None else float(w.sum())
        extra, metrics = router_terms(out, units, model.training)
        if extra is not None:
            loss_sum = loss_sum + extra
        return LossOutput(loss_sum=loss_sum, num_units=units, metrics=metrics, logits=out.logits[:, -targets.shape[1] :])
