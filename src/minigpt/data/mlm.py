"""Masked-LM training data: packed token blocks (and, for next-sentence prediction, sentence
pairs), each masked BERT-style (80/10/10,
`minigpt.losses.mlm.mask_tokens`) with a random source seeded by the run's seed and the block's
index, so a resumed run sees exactly the masks the uninterrupted one would have seen."""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from minigpt.errors import UserError
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

    def mask(self, ids: torch.Tensor, i: int, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(masked ids, labels)` of item `i`'s row `ids (T,)`, from its own seeded draws."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        attention = None if attention_mask is None else attention_mask[None]
        masked, labels = mask_tokens(ids[None], self.mask_token_id, self.vocab_size, self.mask_prob, attention, self.special_ids, generator=g)
        return masked[0], labels[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        masked, labels = self.mask(self.blocks[i]["input_ids"], i)
        return {"input_ids": masked, "labels": labels}


__all__ = ["MaskedBlocks"]


# ---------------------------------------------------------------------------- next-sentence pairs
#: A sentence ends after . ! ? (then white space) or after a CJK full stop, ! or ?; a line break
#: always ends one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")


def split_sentences(text: str) -> list[str]:
    """The non-blank sentences of `text`, in order (a rule of punctuation and line breaks, no
    language model: "Mr. Smith" splits after "Mr.")."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def build_sentence_pairs(
    documents: Sequence[Sequence[Sequence[int]]], max_tokens: int, seed: int
) -> list[tuple[list[int], list[int], int]]:
    """BERT's next-sentence pairs (Devlin et al. 2019, §3.1 and appendix A.2): segment A is one
    or more consecutive sentences of a document (up to half of `max_tokens`); segment B is, with
    probability 1/2, the sentences that follow A (label 0, IsNext), else sentences from a random
    other document starting at a random sentence (label 1, NotNext; the sentences after A are
    then used for the next pair). The pair is cut to `max_tokens` by trimming the longer
    segment's end.

    Args:
        documents: each document as its sentences, each a list of token ids.
        max_tokens: A + B tokens at most (the caller's separators come on top).
        seed: the draws (a fixed seed gives the same pairs).

    Returns:
        `[(a_ids, b_ids, label), ...]` in document order.

    Raises:
        UserError: fewer than two documents with text (no random segment can be drawn), or no
            document with two sentences.
    """
    docs = [[list(s) for s in d if len(s)] for d in documents]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise UserError("next-sentence pairs need at least two documents (random segments come from another one)")
    rng = random.Random(seed)
    half = max(1, max_tokens // 2)
    pairs: list[tuple[list[int], list[int], int]] = []

    def collect(sents: list[list[int]], start: int, budget: int) -> tuple[list[int], int]:
        out: list[int] = []
        j = start
        while j < len(sents) and (not out or len(out) + len(sents[j]) <= budget):
            out += sents[j]
            j += 1
        return out, j

    for d, sents in enumerate(docs):
        i = 0
        while i < len(sents) - 1:
            a, j = collect(sents, i, half)
            if j >= len(sents):  # A took the rest of the document: no following sentence
                break
            if rng.random() < 0.5:
                b, i = collect(sents, j, max_tokens - len(a))
                label = 0
            else:
                other = rng.randrange(len(docs) - 1)
                other += other >= d
                b, _ = collect(docs[other], rng.randrange(len(docs[other])), max_tokens - len(a))
                label, i = 1, j
            while len(a) + len(b) > max_tokens:  # trim the longer segment's end
                (a if len(a) >= len(b) else b).pop()
            pairs.append((a, b, label))
    if not pairs:
        raise UserError("no document has two sentences: next-sentence pairs cannot be built")
    return pairs


class SentencePairBlocks(MaskedBlocks):
    """Items `{"input_ids": (T,) masked, "attention_mask": (T,), "labels": (T,),
    "next_sentence_label": ()}` for masked-LM with next-sentence prediction: each pair is laid
    out as `SEP A SEP B SEP` (the next-sentence head reads the first position, BERT's [CLS]),
    padded to `block_size`, and masked as `MaskedBlocks` masks (separators and padding never).

    Args:
        pairs: `build_sentence_pairs` output (A + B at most `block_size − 3` tokens).
        block_size: T.
        sep_token_id: the separator (minigpt uses `<|endoftext|>`).
        pad_token_id: the padding id.
        mask_token_id, vocab_size, mask_prob, special_ids, seed: as for `MaskedBlocks`.
    """

    def __init__(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int], int]], block_size: int, sep_token_id: int, pad_token_id: int,
        mask_token_id: int, vocab_size: int, mask_prob: float, special_ids: Sequence[int], seed: int,
    ) -> None:
        super().__init__(pairs, mask_token_id, vocab_size, mask_prob, special_ids, seed)
        self.block_size = block_size
        self.sep, self.pad = sep_token_id, pad_token_id

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b, label = self.blocks[i]
        ids = [self.sep, *a, self.sep, *b, self.sep][: self.block_size]
        row = torch.full((self.block_size,), self.pad, dtype=torch.long)
        row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention = (torch.arange(self.block_size) < len(ids)).long()
        masked, labels = self.mask(row, i, attention)
        return {"input_ids": masked, "attention_mask": attention, "labels": labels, "next_sentence_label": torch.tensor(label)}


__all__ += ["SentencePairBlocks", "build_sentence_pairs", "split_sentences"]
