"""Contrastive losses on embeddings: InfoNCE with in-batch negatives (van den Oord et al. 2018,
arXiv:1807.03748; SimCLR, Chen et al. 2020, arXiv:2002.05709) and MoCo's queue of negatives
(He et al. 2020, arXiv:1911.05722, Algorithm 1).

Pure functions. Shapes: `B` pairs, `D` embedding width, `K` queued negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minigpt.errors import UserError


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07, symmetric: bool = True) -> tuple[torch.Tensor, float]:
    """InfoNCE with in-batch negatives: row `i` of `z1` should pick row `i` of `z2` among all
    `B` rows, by cosine similarity over `temperature`.

        L_{1→2} = mean_i −log softmax_j(cos(z1_i, z2_j) / τ)_i

    and `symmetric` averages it with `L_{2→1}` (CLIP, Radford et al. 2021).

    Args:
        z1, z2: `(B, D)` embeddings of the two views (normalised here).
        temperature: τ > 0.
        symmetric: average both directions.

    Returns:
        `(loss, accuracy)`: the mean loss (a scalar fp32 tensor) and the share of rows of `z1`
        whose most similar row of `z2` is their own pair (a float).

    Raises:
        UserError: `B < 2` (no negative), different shapes, `temperature <= 0`.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise UserError(f"info_nce needs two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise UserError("contrastive training needs a batch of at least 2 pairs: the other pairs are the negatives")
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    a, b = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = a @ b.T / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    accuracy = float((logits.argmax(-1) == target).float().mean())
    return loss, accuracy


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, float]:
    """MoCo's InfoNCE: each query `q_i` should pick its key `k_i` (from the momentum encoder)
    against the `K` queued keys of earlier batches.

        logits_i = [q_i·k_i, q_i·queue_1, …, q_i·queue_K] / τ,   L = mean_i CE(logits_i, 0)

    Before the first keys are queued (`K = 0`) the other keys of the batch are the negatives,
    `logits_i = [q_i·k_1, …, q_i·k_B] / τ` with target `i` (in-batch, as SimCLR): a positive
    alone would give loss 0, accuracy 1 and no gradient.

    Args:
        q: `(B, D)` queries (gradients flow through them).
        k: `(B, D)` keys (detached here: the key encoder is not trained by gradients).
        queue: `(K, D)` earlier keys (K = 0 before the first step has queued any).
        temperature: τ > 0.

    Returns:
        `(loss, accuracy)`: the mean loss and the share of queries whose key scores highest.

    Raises:
        UserError: `temperature <= 0`; an empty queue with `B < 2` (no negative at all).
    """
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.detach().float(), dim=-1)
    if queue.shape[0] == 0:
        if q.shape[0] < 2:
            raise UserError("MoCo's first step needs a batch of at least 2 pairs: its queue is still empty, so the batch's other keys are the only negatives")
        logits = q @ k.T / temperature  # (B, B): the diagonal holds the positives
        target = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, target), float((logits.argmax(-1) == target).float().mean())
    positive = (q * k).sum(-1, keepdim=True)  # (B, 1)
    negative = q @ F.normalize(queue.detach().float(), dim=-1).T  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), float((logits.argmax(-1) == 0).float().mean())


__all__ = ["info_nce", "moco_loss"]
