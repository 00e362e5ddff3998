"""Masked-LM training data: packed token blocks, each masked BERT-style (80/10/10,
`minigpt.losses.mlm.mask_tokens`) with a random source seeded by the run's seed and the block's
index, so a resumed run sees exactly the masks the uninterrupted one would have seen."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from minigpt.losses.mlm import mask_tokens


class MaskedBlocks(Dataset):
    """Items `{"input_ids": (T,) masked, "labels": (T,) originals at masked positions, −100
    elsewhere}` from a dataset of `{"input_ids": (T,)}` blocks (e.g. `PackedDataset`).

    Args:
        blocks: the unmasked blocks.
        mask_token_id: the tokenizer's `<|mask|>` id.
        vocab_size: ids random replacements are drawn from.
        mask_prob: share of the non-special tokens selected.
        special_ids: ids never selected or drawn (EOS separators, chat tags, the mask).
        seed: with the block index, seeds each block's masks (static masks, as in BERT).
    """

    def __init__(self, blocks: Dataset, mask_token_id: int, vocab_size: int, mask_prob: float, special_ids: Sequence[int], seed: int) -> None:
        self.blocks = blocks
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        self.mask_prob = mask_prob
        self.special_ids = list(special_ids)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.blocks[i]["input_ids"]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        masked, labels = mask_tokens(ids[None], self.mask_token_id, self.vocab_size, self.mask_prob, None, self.special_ids, generator=g)
        return {"input_ids": masked[0], "labels": labels[0]}


__all__ = ["MaskedBlocks"]
