"""Contrastive training data: pairs of texts that belong together (a question and its answer, a
sentence and its translation), or two augmented views of one text (SimCLR's recipe, Chen et al.
2020, arXiv:2002.05709, with the token-level augmentations of `minigpt.data.augment`).

Items are `{"input_ids_1": (T1,), "input_ids_2": (T2,)}`; `pad_pairs` makes a batch of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from minigpt.data.augment import TextAugmentation
from minigpt.errors import UserError


@dataclass
class PairReport:
    """What reading pairs kept and skipped: `kept`, `missing` (a record without one of the
    fields, or with an empty or non-string one), `identical` (both sides the same: no signal),
    and `examples` (where the first few skipped records are, `path:LINE`)."""

    kept: int = 0
    missing: int = 0
    identical: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the console."""
        line = f"{self.kept} pairs kept"
        if self.missing or self.identical:
            line += f"; skipped {self.missing} with a missing or empty field and {self.identical} with identical sides"
            line += f" (first: {', '.join(self.examples)})"
        return line


def read_text_pairs(source: str, fields: Sequence[str]) -> tuple[list[tuple[str, str]], PairReport]:
    """`[(a, b), ...]` from the records of `source` (JSONL, JSON, Parquet, a folder of them):
    `a = record[fields[0]]`, `b = record[fields[1]]`. Records with a missing, empty or
    non-string field, or with `a == b` (after stripping), are counted in the report and skipped.

    Raises:
        UserError: not two distinct field names; unreadable records (`path:LINE`); no pair left.
    """
    from minigpt.data.loaders import iter_records

    if len(fields) != 2 or fields[0] == fields[1]:
        raise UserError(f"pairs need two different field names, got {list(fields)}")
    pairs: list[tuple[str, str]] = []
    report = PairReport()
    for where, record in iter_records(source):
        a, b = record.get(fields[0]), record.get(fields[1])
        if not (isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip()):
            report.missing += 1
        elif a.strip() == b.strip():
            report.identical += 1
        else:
            pairs.append((a, b))
            continue
        if len(report.examples) < 3:
            report.examples.append(where)
    report.kept = len(pairs)
    if not pairs:
        raise UserError(f"{source}: no usable pair of fields {fields[0]!r} and {fields[1]!r} ({report.describe()})")
    return pairs, report


def augmented_views(
    rows: Sequence[Sequence[int]],
    seed: int,
    mask_token_id: int | None = None,
    mask_prob: float = 0.1,
    delete_prob: float = 0.1,
    swap_prob: float = 0.05,
    pad_token_id: int = 1,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Two views of each token row: random deletion, then random swaps, then random masking (when
    the tokenizer has a mask token), drawn from a generator seeded by `seed` and the row's
    index, so the views are the same on every run and after a resume (static views, as BERT's
    static masks).

    Returns:
        `(views, identical)`: the `(view_1, view_2)` pairs that differ, and how many rows gave
        two identical views (skipped: the loss would see no augmentation).
    """
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    identical = 0
    for i, row in enumerate(rows):
        ids = torch.as_tensor(list(row), dtype=torch.long)
        if ids.numel() == 0:
            identical += 1
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        pair = []
        for _ in range(2):
            v, keep = TextAugmentation.random_delete(ids, delete_prob, pad_token_id=pad_token_id, generator=g)
            v = v[keep.bool()]
            v = TextAugmentation.random_swap(v, swap_prob, generator=g)
            if mask_token_id is not None and mask_prob > 0:
                v = TextAugmentation.random_mask(v, mask_token_id, mask_prob, generator=g)
            pair.append(v)
        if torch.equal(pair[0], pair[1]):
            identical += 1
        else:
            views.append((pair[0], pair[1]))
    return views, identical


class PairDataset(Dataset):
    """Token pairs as items `{"input_ids_1": (T1,), "input_ids_2": (T2,)}`."""

    def __init__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        self.pairs = [(torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)) for a, b in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = self.pairs[i]
        return {"input_ids_1": a, "input_ids_2": b}


def pad_pairs(items: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch of pairs, each side right-padded to its longest row: `input_ids_1 (B, T1)`,
    `attention_mask_1 (B, T1)` (1 on real tokens), `input_ids_2 (B, T2)`, `attention_mask_2`."""
    batch: dict[str, torch.Tensor] = {}
    for side in ("1", "2"):
        rows = [item[f"input_ids_{side}"] for item in items]
        width = max(1, max(int(r.numel()) for r in rows))
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : r.numel()] = r
            mask[i, : r.numel()] = 1
        batch[f"input_ids_{side}"], batch[f"attention_mask_{side}"] = ids, mask
    return batch


__all__ = ["PairDataset", "PairReport", "augmented_views", "pad_pairs", "read_text_pairs"]
