"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch


def param_groups(model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Split trainable parameters into decayed and not decayed groups.

    Matrices of linear layers decay; biases and norm gains (1-D) never do; the token
    embedding (and a tied LM head, the same tensor) decays only if `decay_embeddings`.
    Each parameter appears once even when tied.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or (id(p) in embeddings and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: Callable[[], int], min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: linear warmup from 0 over `warmup_steps`, then cosine decay
    to `min_lr_ratio` at `total_steps()` (a callable, so a time-budgeted run can fix it late).

    The warmup is capped at 10 % of the run so short runs still decay (Loshchilov & Hutter
    2017, SGDR: cosine annealing).
    """

    def factor(step: int) -> float:
        total = max(1, total_steps())
        warm = min(warmup_steps, max(1, total // 10))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
