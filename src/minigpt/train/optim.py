"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch


def param_groups(
    model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False, lr: float | None = None
) -> list[dict]:
    """Split trainable parameters into decayed and not decayed groups.

    Matrices of linear layers decay; biases and norm gains (1-D) never do; the token
    embedding (and a tied LM head, the same tensor) decays only if `decay_embeddings`.
    Each parameter appears once even when tied.

    A submodule with a float attribute `lr_scale` (e.g. PPO's critic inside
    `minigpt.objectives.ppo.ActorCritic`) learns at `lr_scale` times the base rate: its parameters
    (those of the innermost such submodule) go to their own pair of groups carrying the key
    `lr_scale`, and `"lr": lr * lr_scale` when `lr` is given (the base groups then get no `lr`
    key, so the optimizer's default applies; a `LambdaLR` schedule scales every group's own
    initial rate). Without any `lr_scale` the result is the two groups above, unchanged.

    Returns:
        `[{"params", "weight_decay"[, "lr_scale", "lr"]}, ...]`: the base decayed and
        not-decayed groups first (always present, possibly empty), then per distinct scale its
        decayed and not-decayed groups (only non-empty ones).

    Raises:
        ValueError: an `lr_scale` that is not a positive number.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    scale_of: dict[int, float] = {}
    for name, module in model.named_modules():  # parents come before children: the innermost wins
        scale = getattr(module, "lr_scale", None)
        if scale is None:
            continue
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"lr_scale of submodule {name or '<root>'!r} must be a positive number, got {scale!r}")
        for p in module.parameters():
            scale_of[id(p)] = float(scale)
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decays = not (p.ndim < 2 or (id(p) in embeddings and not decay_embeddings))
        groups.setdefault((scale_of.get(id(p), 1.0), decays), []).append(p)
    out = []
    for (scale, decays), params in groups.items():
        if scale != 1.0 and not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if scale != 1.0:
            group["lr_scale"] = scale
            if lr is not None:
                group["lr"] = lr * scale
        out.append(group)
    return out


def make_adamw(model: torch.nn.Module, train, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters as a `TrainConfig` describes it: learning rate
    `train.lr`, betas `(train.beta1, train.beta2)`, decoupled weight decay `train.weight_decay`
    on matrices only (`param_groups`; the embedding too with `train.decay_embeddings`), groups
    with an `lr_scale` at their scaled rate (Loshchilov & Hutter 2019). The training loop and
    the Python-API trainers build their optimizer here.

    Args:
        fused: torch's fused kernel (None: on CUDA and CPU parameters).
    """
    if fused is None:
        fused = next(model.parameters()).device.type in ("cuda", "cpu")
    groups = param_groups(model, train.weight_decay, train.decay_embeddings, lr=train.lr)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=fused)


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
