"""Contrastive pretraining for the one loop: InfoNCE over pairs of views with in-batch negatives
(SimCLR, Chen et al. 2020, arXiv:2002.05709), or against MoCo's queue of keys from a momentum
encoder (He et al. 2020, arXiv:1911.05722).

Model: a `minigpt.model.encoder.MiniGPTForEmbedding` (its output's `projections (B, D)`).
Batch: `input_ids_1 (B, T1)`, `attention_mask_1`, `input_ids_2 (B, T2)`, `attention_mask_2`:
row i of each is one view of the same text (or a question and its answer, a sentence and its
translation). One unit per pair.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from minigpt.errors import UserError
from minigpt.losses.contrastive import info_nce, moco_loss
from minigpt.train.objective import LossOutput


class ContrastiveObjective:
    """`L = InfoNCE(z1, z2)` (symmetric) or, with a momentum encoder, MoCo's loss symmetrised as
    in MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): `½·[moco_loss(q = z1, k = key(x2),
    queue) + moco_loss(q = z2, k = key(x1), queue)]`. Both sides of a pair go through the trained
    encoder, so a question/answer pair trains it on questions and on answers alike; both sides'
    keys (2B per micro-batch, side 1 then side 2) then enter the queue.

    Args:
        temperature: τ.
        key_encoder: None (SimCLR), or MoCo's key encoder: a frozen copy of the model, moved
            towards it by `momentum_update` after every optimizer step.
        queue_size: K, the number of earlier keys kept as negatives (MoCo).
        momentum: m of the EMA `θ_k ← m·θ_k + (1 − m)·θ_q`.
    """

    unit_name = "pairs"

    def __init__(self, temperature: float = 0.07, key_encoder: torch.nn.Module | None = None, queue_size: int = 0, momentum: float = 0.999) -> None:
        self.temperature = temperature
        self.key_encoder = key_encoder
        self.queue_size = queue_size
        self.momentum = momentum
        self.queue: torch.Tensor | None = None  # (K_filled, D), oldest first
        self._pending: list[torch.Tensor] = []  # this update's keys (every micro-batch), queued after it

    @classmethod
    def moco(cls, model: torch.nn.Module, temperature: float, queue_size: int, momentum: float) -> "ContrastiveObjective":
        """A MoCo objective whose key encoder starts as a frozen copy of `model`."""
        key = copy.deepcopy(model)
        key.requires_grad_(False)
        return cls(temperature, key.eval(), queue_size, momentum)

    def num_units(self, batch: dict[str, Any]) -> int:
        """Pairs in the batch."""
        return int(batch["input_ids_1"].shape[0])

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Project both views and take the loss; MoCo keeps the keys for `after_step`."""
        b = batch["input_ids_1"].shape[0]
        if b < 2 and self.key_encoder is None:
            raise UserError("contrastive training needs a batch of at least 2 pairs: the other pairs are the negatives")
        z1 = model(batch["input_ids_1"], batch.get("attention_mask_1")).projections
        z2 = model(batch["input_ids_2"], batch.get("attention_mask_2")).projections
        if self.key_encoder is None:
            loss, accuracy = info_nce(z1, z2, self.temperature)
        else:
            if next(self.key_encoder.parameters()).device != z1.device:  # the loop moved the model
                self.key_encoder.to(z1.device)
            with torch.no_grad():
                k1 = self.key_encoder(batch["input_ids_1"], batch.get("attention_mask_1")).projections.float()
                k2 = self.key_encoder(batch["input_ids_2"], batch.get("attention_mask_2")).projections.float()
            queue = self.queue if self.queue is not None else k1.new_zeros(0, k1.shape[1])
            loss_12, accuracy_12 = moco_loss(z1, k2, queue, self.temperature)
            loss_21, accuracy_21 = moco_loss(z2, k1, queue, self.temperature)
            loss, accuracy = (loss_12 + loss_21) / 2, (accuracy_12 + accuracy_21) / 2
            if model.training:  # evaluation batches never enter the queue
                self._pending.append(torch.nn.functional.normalize(torch.cat([k1, k2]), dim=-1))
        return LossOutput(loss_sum=loss * b, num_units=b, sums={"accuracy": accuracy * b})

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        """MoCo, after each optimizer step (`OptimizerStep` calls it): the EMA update of the key
        encoder, then the batch's keys enter the queue (the oldest leave once it holds
        `queue_size`). Nothing for SimCLR. Under DDP every rank keeps its own queue of its own
        keys (MoCo's paper gathers them; the queue is then `world_size` times shorter in time)."""
        if self.key_encoder is None:
            return
        m = self.momentum
        for pk, pq in zip(self.key_encoder.parameters(), model.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        if self._pending:
            keys = torch.cat(self._pending)
            self.queue = keys if self.queue is None else torch.cat([self.queue.to(keys.device), keys])
            if self.queue.shape[0] > self.queue_size:
                self.queue = self.queue[-self.queue_size :]
            self._pending = []

    def state_dict(self) -> dict[str, Any]:
        """MoCo's key encoder and queue, for exact resume (the loop saves it in checkpoints)."""
        if self.key_encoder is None:
            return {}
        return {"key_encoder": self.key_encoder.state_dict(), "queue": self.queue}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if self.key_encoder is None or not state:
            return
        self.key_encoder.load_state_dict(state["key_encoder"])
        queue = state["queue"]
        self.queue = None if queue is None else queue.to(next(self.key_encoder.parameters()).device)
        self._pending = []


__all__ = ["ContrastiveObjective"]
