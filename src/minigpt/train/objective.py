"""The contract between the one training loop and an algorithm.

An objective turns `(model, batch)` into a summed loss and the number of units (tokens,
sequences, pairs) it is summed over. The loop divides by the total units of the whole optimizer
step (all micro-batches, all devices) before `backward`, which makes gradient accumulation
exact: 8 micro-batches of 1 give the same update as 1 batch of 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class LossOutput:
    """What `Objective.compute_loss` returns.

    Attributes:
        loss_sum: scalar tensor, the loss summed over `num_units` (differentiable).
        num_units: how many units `loss_sum` sums over (tokens for LM, pairs for DPO …).
        sums: extra metrics as sums over units, e.g. `{"nats": …, "bytes": …}`; the loop
            aggregates them across micro-batches and evaluation batches.
        metrics: values that are already means (e.g. an RL rollout's mean reward); the loop
            logs each as its mean over the micro-batches of a step that report it.
        logits: the model's `(B, T, V)` logits when the objective computed them (LM and SFT),
            for wrappers that add penalties on them (KL to the base model); the loop ignores it.
    """

    loss_sum: torch.Tensor
    num_units: int
    sums: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Objective(Protocol):
    """Two methods wide; the loop never branches on which algorithm this is.

    Two optional class attributes describe the units to the loop's messages and metrics:
    `unit_name` (what `num_units` counts, e.g. "supervised tokens", "pairs"; an update with
    none is an error that names them) and `token_nll` (True when the loss is a mean next-token
    negative log-likelihood, so `exp(val_loss)` is a perplexity and the loop reports `val_ppl`).
    """

    unit_name: str = "units"
    token_nll: bool = False

    def num_units(self, batch: dict[str, Any]) -> int:
        """Units in `batch` that carry loss (known before the forward pass)."""

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Forward `batch` through `model` and return the summed loss."""


class BatchProducer(Protocol):
    """Optional third method of an objective that makes its own training data (online RL).

    When an objective has `make_batches`, the loop hands it each collated batch drawn from the
    training set (for RL: a batch of prompts) together with the model being trained, and trains
    on the micro-batches it returns, `train.grad_accum` of them per optimizer step. The loop
    still does not know which algorithm runs: sampling, scoring and advantages all happen
    here, under the loop's autocast and without gradients.
    """

    def make_batches(self, model: torch.nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn one batch of the training set into training micro-batches."""
