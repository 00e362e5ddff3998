"""Language-modelling losses: next-token cross-entropy and bits per byte."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `(N, V)` logits, computed in fp32 a few rows at a time.

    Forward keeps one fp32 log-sum-exp per row; backward writes `softmax − onehot` straight into
    a gradient of the logits' dtype. Unlike `F.cross_entropy(logits.float())`, no `(N, V)` fp32
    copy, log-prob tensor or zero-filled gradient is ever allocated, which saves time and
    memory in the training step (its effect is inside `benchmarks/bench_train.py`'s figures).
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, chunk):  # noqa: D102
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            lse[s : s + chunk] = torch.logsumexp(logits[s : s + chunk].float(), dim=-1)
        valid = (targets != IGNORE_INDEX).float()
        if weights is not None:
            valid = valid * weights.float()
        picked = logits.gather(1, targets.clamp(min=0)[:, None])[:, 0].float()
        ctx.save_for_backward(logits, targets, lse, valid)
        ctx.chunk = chunk
        return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        logits, targets, lse, valid = ctx.saved_tensors
        grad = torch.empty_like(logits)
        weight = valid * grad_out.float()  # (N,): per-row weight, 0 on ignored rows
        safe = targets.clamp(min=0)[:, None]
        for s in range(0, logits.shape[0], ctx.chunk):
            p = torch.exp(logits[s : s + ctx.chunk].float() - lse[s : s + ctx.chunk, None])  # softmax rows
            p.scatter_add_(1, safe[s : s + ctx.chunk], p.new_full((p.shape[0], 1), -1.0))  # − onehot
            grad[s : s + ctx.chunk] = p.mul_(weight[s : s + ctx.chunk, None])
        return grad, None, None, None


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of already-aligned targets, in nats, computed in fp32.

    Args:
        logits: `(B, T, V)` scores for the token at each target position (any float dtype).
        targets: `(B, T)` ids; −100 marks positions that carry no loss.
        reduction: `mean` over supervised tokens, `sum`, or `none` (returns `(B, T)`, 0 at
            ignored positions).
        weights: optional `(B, T)` per-token loss weights (e.g. `tag_loss_weights`); `sum`
            becomes `Σ w·CE` and `mean` becomes `Σ w·CE / Σ w` over supervised tokens.

    Returns a scalar (or `(B, T)`). With no supervised token, `mean` returns 0, not NaN.
    `sum` and `mean` run chunk by chunk in fp32 (see `_ChunkedCrossEntropy`).
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    flat_weights = None if weights is None else weights.reshape(-1)
    if reduction == "none":
        flat = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="none")
        if flat_weights is not None:
            flat = flat * flat_weights.float()
        return flat.view(targets.shape)
    total = _ChunkedCrossEntropy.apply(flat_logits, flat_targets, flat_weights, 128)
    if reduction == "sum":
        return total
    valid = (targets != IGNORE_INDEX).float()
    denom = valid.sum() if weights is None else (valid * weights.float()).sum()
    return total / denom.clamp(min=1e-12) if bool(denom > 0) else total * 0.0


def tag_loss_weights(targets: torch.Tensor, tag_ids: Sequence[int], tag_weight: float) -> torch.Tensor:
    """Per-token loss weights that raise the reasoning tags' share of the loss.

    Args:
        targets: `(B, T)` aligned target ids (−100 = no loss).
        tag_ids: ids of `<think>`, `</think>`, `<answer>`, `</answer>`.
        tag_weight: weight of a target that is one of `tag_ids` (default ×10 in the SFT recipe);
            every other supervised target weighs 1, ignored targets 0.

    Returns a float32 `(B, T)` tensor, for `token_cross_entropy(..., weights=)`.
    """
    weights = (targets != IGNORE_INDEX).float()
    if tag_ids and tag_weight != 1.0:
        is_tag = torch.isin(targets, torch.as_tensor(list(tag_ids), device=targets.device))
        weights = torch.where(is_tag, weights * tag_weight, weights)
    return weights


def bits_per_byte(loss_nats_sum: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte: summed cross-entropy (nats) over the text's tokens / (ln 2 · bytes).

    Tokenizer-independent, so models with different vocabularies (or a character model) compare
    directly. Raises ValueError if `num_bytes` is not positive.
    """
    if num_bytes <= 0:
        raise ValueError("bits_per_byte needs a positive byte count")
    return loss_nats_sum / (math.log(2) * num_bytes)

