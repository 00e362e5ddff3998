"""Language-modelling losses: next-token cross-entropy and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of already-aligned targets, in nats, computed in fp32.

    Args:
        logits: `(B, T, V)` scores for the token at each target position.
        targets: `(B, T)` ids; −100 marks positions that carry no loss.
        reduction: `mean` over supervised tokens, `sum`, or `none` (returns `(B, T)`, 0 at
            ignored positions).

    Returns a scalar (or `(B, T)`). With no supervised token, `mean` returns 0, not NaN.
    """
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if reduction == "none":
        return flat.view(targets.shape)
    if reduction == "sum":
        return flat.sum()
    return flat.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)


def bits_per_byte(loss_nats_sum: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte: summed cross-entropy (nats) over the text's tokens / (ln 2 · bytes).

    Tokenizer-independent, so models with different vocabularies (or a character model) compare
    directly. Raises ValueError if `num_bytes` is not positive.
    """
    if num_bytes <= 0:
        raise ValueError("bits_per_byte needs a positive byte count")
    return loss_nats_sum / (math.log(2) * num_bytes)

