"""Masked language modelling (BERT, Devlin et al. 2019, arXiv:1810.04805 §3.1 and appendix A.1):
the masking rule, the masked-token cross-entropy and the next-sentence-prediction loss.

Pure functions: tensors in, tensors out. Shapes: `B` rows, `T` positions, `V` vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.losses.lm import IGNORE_INDEX, token_cross_entropy


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    attention_mask: torch.Tensor | None = None,
    special_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: select each real, non-special token with probability `mask_prob`; of the
    selected, 80 % become `mask_token_id`, 10 % a random token (uniform over the ids that are not
    special) and 10 % stay as they are.

    Args:
        input_ids: `(B, T)` token ids.
        mask_token_id: the id of `<|mask|>`.
        vocab_size: `V`; random replacements are drawn from `[0, V)` minus `special_ids`.
        mask_prob: share of the real tokens selected, in (0, 1).
        attention_mask: `(B, T)`, 0 on padding (never selected); None: every position is real.
        special_ids: ids never selected and never drawn as replacements (pad, eos, chat tags,
            the mask token itself).
        generator: the random source (None: torch's global one).

    Returns:
        `(masked_input_ids (B, T), labels (B, T))`: `labels` holds the original id at the
        selected positions and −100 everywhere else.

    Raises:
        UserError: `mask_prob` outside (0, 1), or no id left to draw replacements from.
    """
    if not 0 < mask_prob < 1:
        raise UserError(f"mask_prob must be in (0, 1), got {mask_prob}")
    device = input_ids.device
    special = torch.tensor(sorted({int(i) for i in special_ids} | {int(mask_token_id)}), device=device, dtype=torch.long)
    eligible = ~torch.isin(input_ids, special)
    if attention_mask is not None:
        eligible &= attention_mask.bool()

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=generator.device if generator is not None else device).to(device)

    selected = eligible & (uniform(input_ids.shape) < mask_prob)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    kind = uniform(input_ids.shape)  # < 0.8: mask; 0.8–0.9: random; >= 0.9: keep
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[special[special < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1)
    if pool.numel() == 0:
        raise UserError("mask_tokens: every id is special; nothing to draw random replacements from")
    draws = pool[(uniform(input_ids.shape) * pool.numel()).long().clamp_(max=pool.numel() - 1)]
    masked = torch.where(selected & (kind < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(selected & (kind >= 0.8) & (kind < 0.9), draws, masked)
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of the masked positions.

    Args:
        logits: `(B, T, V)` (or `(N, V)`) scores of the encoder's MLM head.
        labels: `(B, T)` (or `(N,)`) original ids at the masked positions, −100 elsewhere.

    Returns:
        `(loss_sum, num_masked, num_correct)`: the summed negative log-likelihood in nats (a
        scalar tensor, fp32), the number of masked positions, and how many of them the argmax
        predicts.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    keep = flat_labels != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return flat_logits.sum() * 0.0, 0, 0
    chosen, targets = flat_logits[keep], flat_labels[keep]  # only the masked rows reach the vocabulary-wide softmax
    loss = token_cross_entropy(chosen, targets, reduction="sum")  # the LM losses' chunked fp32 cross-entropy
    correct = int((chosen.argmax(-1) == targets).sum())
    return loss, n, correct


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-sentence prediction: two-way cross-entropy (label 0 = B follows A, 1 = B is random).

    Args:
        logits: `(B, 2)`.
        labels: `(B,)` in {0, 1}.

    Returns:
        `(loss_sum, num_correct)`: summed nats (fp32 scalar tensor) and correct argmaxes.
    """
    logits = logits.float()
    return F.cross_entropy(logits, labels.long(), reduction="sum"), int((logits.argmax(-1) == labels).sum())


__all__ = ["IGNORE_INDEX", "mask_tokens", "mlm_loss", "nsp_loss"]
