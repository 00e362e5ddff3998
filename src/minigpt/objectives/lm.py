"""Next-token prediction: the pretraining objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from minigpt.losses.lm import IGNORE_INDEX, token_cross_entropy
from minigpt.train.objective import LossOutput


class CausalLMObjective:
    """Cross-entropy of `targets` given `input_ids` (targets already aligned: `targets[t]` is
    the token after `input_ids[t]`, −100 where no loss is wanted).

    Batch: `input_ids (B, T)`, `targets (B, T)`, optional `attention_mask (B, T)`.

    Args:
        token_bytes: optional `(V,)` array of UTF-8 bytes per token id; when given, `sums`
            carries `nats` and `bytes` so the loop reports bits per byte.
    """

    def __init__(self, token_bytes: np.ndarray | None = None) -> None:
        self.token_bytes = None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes), dtype=torch.long)

    def num_units(self, batch: dict[str, Any]) -> int:
        """Supervised target tokens in `batch` (targets ≠ −100)."""
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed next-token cross-entropy in nats over the supervised targets, computed in
        fp32 (`token_cross_entropy`), plus `nats` / `bytes` sums for bits per byte."""
        targets = batch["targets"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False).logits
        loss_sum = token_cross_entropy(logits, targets, reduction="sum")
        sums = {"nats": float(loss_sum.detach())}
        if self.token_bytes is not None:
            valid = targets != IGNORE_INDEX
            tb = self.token_bytes.to(targets.device)
            sums["bytes"] = float(tb[targets.clamp(min=0)][valid].sum())
        return LossOutput(loss_sum=loss_sum, num_units=self.num_units(batch), sums=sums)

