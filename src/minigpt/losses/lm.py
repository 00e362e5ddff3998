"""Language-modelling losses: next-token cross-entropy and bits per byte."""

from __future__ import annotations

import math

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
    def forward(ctx, logits, targets, chunk):  # noqa: D102
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            lse[s : s + chunk] = torch.logsumexp(logits[s : s + chunk].float(), dim=-1)
        valid = targets != IGNORE_INDEX
        picked = logits.gather(1, targets.clamp(min=0)[:, None])[:, 0].float()
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        weight = (targets != IGNORE_INDEX).float() * grad_out.float()  # (N,)
        safe = targets.clamp(min=0)[:, None]
        for s in range(0, logits.shape[0], ctx.chunk):
            p = torch.exp(logits[s : s + ctx.chunk].float() - lse[s : s + ctx.chunk, None])  # softmax rows
            p.scatter_add_(1, safe[s : s + ctx.chunk], p.new_full((p.shape[0], 1), -1.0))  # − onehot
            grad[s : s + ctx.chunk] = p.mul_(weight[s : s + ctx.chunk, None])
        return grad, None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of already-aligned targets, in nats, computed in fp32.

    Args:
        logits: `(B, T, V)` scores for the token at each target position (any float dtype).
        targets: `(B, T)` ids; −100 marks positions that carry no loss.
        reduction: `mean` over supervised tokens, `sum`, or `none` (returns `(B, T)`, 0 at
            ignored positions).

    Returns a scalar (or `(B, T)`). With no supervised token, `mean` returns 0, not NaN.
    `sum` and `mean` run chunk by chunk in fp32 (see `_ChunkedCrossEntropy`).
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if reduction == "none":
        flat = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="none")
        return flat.view(targets.shape)
    total = _ChunkedCrossEntropy.apply(flat_logits, flat_targets, 128)
    if reduction == "sum":
        return total
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def bits_per_byte(loss_nats_sum: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte: summed cross-entropy (nats) over the text's tokens / (ln 2 · bytes).

    Tokenizer-independent, so models with different vocabularies (or a character model) compare
    directly. Raises ValueError if `num_bytes` is not positive.
    """
    if num_bytes <= 0:
        raise ValueError("bits_per_byte needs a positive byte count")
    return loss_nats_sum / (math.log(2) * num_bytes)

