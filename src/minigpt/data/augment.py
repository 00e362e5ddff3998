"""Token-level text augmentations that make two views of one text for contrastive learning
(in the spirit of EDA, Wei & Zou 2019, arXiv:1901.11196, applied to token ids).

Each function takes `(B, T)` ids (or one `(T,)` row) and a probability, and draws from
`generator` (None: torch's global random state). Padding is never touched when
`attention_mask` is given.
"""

from __future__ import annotations

import torch

from minigpt.errors import UserError


def _check(ids: torch.Tensor, prob: float, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2):
        raise UserError(f"{name}: ids must be a (T,) or (B, T) tensor of token ids")
    if not 0 <= prob <= 1:
        raise UserError(f"{name}: the probability must be in [0, 1], got {prob}")
    return (ids[None], True) if ids.ndim == 1 else (ids, False)


class TextAugmentation:
    """`random_mask`, `random_delete`, `random_swap` (static methods)."""

    @staticmethod
    def random_mask(
        ids: torch.Tensor, mask_token_id: int, mask_prob: float, attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Each real token becomes `mask_token_id` with probability `mask_prob`. Same shape."""
        x, single = _check(ids, mask_prob, "random_mask")
        hit = torch.rand(x.shape, generator=generator) < mask_prob
        if attention_mask is not None:
            hit &= (attention_mask[None] if single else attention_mask).bool()
        out = torch.where(hit, torch.full_like(x, mask_token_id), x)
        return out[0] if single else out

    @staticmethod
    def random_delete(
        ids: torch.Tensor, delete_prob: float, attention_mask: torch.Tensor | None = None, pad_token_id: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop each real token with probability `delete_prob` (never all of a row: its first
        real token is kept then), move the survivors left in order and pad the rest.

        Returns:
            `(ids, mask)`: the new ids `(B, T)` (or `(T,)`) padded with `pad_token_id` on the
            right, and their attention mask (1 on kept tokens).
        """
        x, single = _check(ids, delete_prob, "random_delete")
        real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else (attention_mask[None] if single else attention_mask).bool()
        keep = real & (torch.rand(x.shape, generator=generator) >= delete_prob)
        empty = ~keep.any(dim=1)
        if empty.any():  # keep the first real token of rows that lost everything
            first = real.float().argmax(dim=1)
            keep[empty, first[empty]] = True
        out = torch.full_like(x, pad_token_id)
        mask = torch.zeros_like(x)
        for i in range(x.shape[0]):
            row = x[i][keep[i]]
            out[i, : row.numel()] = row
            mask[i, : row.numel()] = 1
        return (out[0], mask[0]) if single else (out, mask)

    @staticmethod
    def random_swap(
        ids: torch.Tensor, swap_prob: float, attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Each real token, with probability `swap_prob`, swaps places with a random real token
        of its row (swaps are applied one after another, left to right). The multiset of
        tokens of each row is unchanged."""
        x, single = _check(ids, swap_prob, "random_swap")
        out = x.clone()
        real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else (attention_mask[None] if single else attention_mask).bool()
        draws = torch.rand(x.shape, generator=generator)
        partners = torch.rand(x.shape, generator=generator)
        for i in range(x.shape[0]):
            positions = real[i].nonzero().squeeze(1)
            n = positions.numel()
            if n < 2:
                continue
            for j in range(n):
                if draws[i, positions[j]] < swap_prob:
                    a, b = positions[j], positions[int(partners[i, positions[j]] * n) % n]
                    out[i, a], out[i, b] = out[i, b].clone(), out[i, a].clone()
        return out[0] if single else out


__all__ = ["TextAugmentation"]
