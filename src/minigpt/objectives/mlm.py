"""Masked-LM pretraining for the one loop: cross-entropy at the masked positions, plus the
next-sentence loss when the model has that head (BERT, Devlin et al. 2019, arXiv:1810.04805).

Masking happens before the loop sees a batch (in the collate function or in
`minigpt.pretraining.MLMPretrainer.train_step`, with `minigpt.losses.mlm.mask_tokens`), so the
number of masked tokens, the unit of this objective, is known before the forward pass.

Batch: `input_ids (B, T)` (already masked), `attention_mask (B, T)`, `labels (B, T)` (the
original ids at masked positions, −100 elsewhere), optional `next_sentence_label (B,)`.
"""

from __future__ import annotations

from typing import Any

import torch

from minigpt.losses.mlm import IGNORE_INDEX, mlm_loss, nsp_loss
from minigpt.train.objective import LossOutput


class MLMObjective:
    """One unit per masked token. The summed loss is `Σ masked NLL + (n / B)·Σ NSP NLL`, so after
    the loop divides by the n masked tokens it is the mean MLM loss plus the mean NSP loss.

    Sums reported per unit: `mlm_loss` (nats per masked token), `mlm_accuracy`. Means:
    `nsp_loss`, `nsp_accuracy` when the batch has next-sentence labels.
    """

    unit_name = "masked tokens (all labels are -100)"

    def num_units(self, batch: dict[str, Any]) -> int:
        """Masked positions of the batch."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Forward the encoder (`MiniGPTForMaskedLM`) and sum the losses."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        total, n, correct = mlm_loss(out.logits, batch["labels"])
        sums = {"mlm_loss": float(total.detach()), "mlm_accuracy": float(correct)}
        metrics: dict[str, float] = {}
        nsp_labels = batch.get("next_sentence_label")
        if nsp_labels is not None and out.nsp_logits is not None:
            rows = nsp_labels.numel()
            nsp_total, nsp_correct = nsp_loss(out.nsp_logits, nsp_labels)
            total = total + nsp_total * (n / rows)
            metrics = {"nsp_loss": float(nsp_total.detach()) / rows, "nsp_accuracy": nsp_correct / rows}
        return LossOutput(loss_sum=total, num_units=n, sums=sums, metrics=metrics)


__all__ = ["MLMObjective"]
