"""Supervised fine-tuning data: records -> rendered conversations -> training items and batches.

:class:`SFTDataset` reads a file (or a list of records) of any chat format that
:func:`minigpt.tokenizer.chat.normalize_messages` understands, renders every conversation once
with :func:`minigpt.tokenizer.chat.render_conversation` and keeps the unpadded
``(ids, loss_mask)`` pairs in ``ds.examples``. Indexing it gives minimind's fixed-length
``(x, y, loss_mask)`` triple (as minimind's SFT data gives). For training, the examples are split by
conversation (:func:`split_examples`) and wrapped in one of two item datasets, both producing
the SFT batch dict ``{"input_ids", "targets", "attention_mask", "position_ids"}`` where
``targets[b, t]`` is the token after ``input_ids[b, t]`` when that token is supervised and
``-100`` otherwise:

* :class:`PaddedSFTDataset` + :func:`collate_padded`: one conversation per row, right-padded to
  the longest row of the batch, ``attention_mask`` ``(B, T)`` of 1/0. Simple and works with any
  attention kernel, but every padding position costs the same compute as a real token; with
  conversations of very different lengths (Alpaca: tens to hundreds of tokens) a large share
  of each batch can be padding.
* :class:`PackedSFTDataset` + :func:`collate_packed`: whole conversations packed into blocks of
  exactly ``block_size`` tokens (best-fit decreasing, which keeps every conversation whole;
  see Ding et al. 2024, "Fewer Truncations Improve Language Modeling"), ``position_ids``
  restarting at 0 for each conversation and a boolean ``(B, 1, T, T)`` attention mask that is
  causal and block-diagonal, so no token attends across conversations and each conversation
  computes exactly what it would alone. Almost no padding compute, but the explicit mask costs
  ``B·T²`` bytes and rules out SDPA's fused causal fast path (a varlen kernel such as
  FlashAttention's would avoid both; plain PyTorch has none on CPU).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from minigpt.errors import UserError
from minigpt.tokenizer.chat import (
    FORMATS,
    SkipRecord,
    encode_rendered,
    normalize_messages,
    render_text,
    truncate_example,
)

__all__ = [
    "IGNORE_INDEX",
    "PackedSFTDataset",
    "PaddedSFTDataset",
    "SFTDataset",
    "collate_packed",
    "collate_padded",
    "load_sft_data",
    "packed_attention_mask",
    "reply_budget",
    "split_examples",
]

#: Target value the cross-entropy ignores (PyTorch's default ``ignore_index``).
IGNORE_INDEX = -100

#: An example: ``(token ids, loss mask)``, two lists of the same length.
Example = tuple[list[int], list[int]]

# Conversations are tokenized in batches of this many strings (the Rust tokenizer is much
# faster per string in a batch than one call at a time).
_ENCODE_BATCH = 1024


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise UserError("tokenizer has neither a pad token nor an eos token to pad with")
    return int(pad)


def _records(path_or_records: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if isinstance(path_or_records, (str, Path)):
        from minigpt.data.loaders import iter_records

        return iter_records(path_or_records)
    if isinstance(path_or_records, Sequence):
        return ((f"record {i}", r) for i, r in enumerate(path_or_records))
    raise UserError(
        f"SFTDataset: expected a path or a list of records, got {type(path_or_records).__name__}"
    )


class SFTDataset(Dataset):
    """Chat conversations rendered to ``(x, y, loss_mask)`` (as in minimind).

    Every record is normalized, rendered through the tokenizer's chat template and truncated
    to ``max_length`` tokens at construction (Alpaca-52k: a few seconds). Records with no
    assistant turn or a blank assistant reply, and records left with no supervised token after
    truncation, are skipped and counted in :attr:`stats`, never used. A malformed record stops construction with a
    :class:`UserError` naming it.

    Args:
        path_or_records: a ``.jsonl``/``.json``/``.parquet`` file or directory (see
            ``minigpt.data.loaders.iter_records``; errors name ``path:line``), or a list of
            record dicts (errors name ``record i``, 0-based).
        tokenizer: fast tokenizer with the ChatML template (``minigpt.tokenizer.load_tokenizer``).
        max_length: tokens per rendered conversation, padding included; >= 2.
        format: one of ``"messages"``, ``"alpaca"``, ``"sharegpt"``, or None to detect per record.

    Attributes:
        examples: unpadded ``(ids, loss_mask)`` lists per used record, each of length
            ``<= max_length``, for packing / dynamic padding.
        where: the source location of each example (``"file.jsonl:12"``).
        pad_id: the padding token id (the tokenizer's pad, else its eos).
        stats: ``records`` read, ``used``, ``skipped_no_assistant``, ``skipped_empty_reply``
            (a blank assistant reply), ``truncated`` (used examples
            that were cut to ``max_length``), ``dropped_after_truncation`` (no supervised token
            left), ``tokens`` and ``supervised_tokens`` (summed over used examples).

    Raises:
        UserError: bad ``max_length``/``format``, unreadable source, a malformed record, no
            records at all, or no usable record.

    ``ds[i]`` returns ``(x, y, loss_mask)``, LongTensors of shape ``(max_length - 1,)``: the ids
    right-padded with ``pad_id`` to ``max_length``, ``x = ids[:-1]``, ``y = ids[1:]``,
    ``loss_mask = mask[1:]`` (so ``loss_mask[t]`` says whether ``y[t]`` is trained on; 0 on
    padding).
    """

    def __init__(self, path_or_records: Any, tokenizer, max_length: int = 512, format: str | None = None) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise UserError(f"max_length: must be an integer >= 2, got {max_length!r}")
        if format is not None and format not in FORMATS:
            raise UserError(f"format: unknown format {format!r} (expected one of {', '.join(FORMATS)} or None to detect)")
        self.max_length = max_length
        self.pad_id = _pad_id(tokenizer)
        self.examples: list[Example] = []
        self.where: list[str] = []
        self.stats = {
            "records": 0,
            "used": 0,
            "skipped_no_assistant": 0,
            "skipped_empty_reply": 0,
            "truncated": 0,
            "dropped_after_truncation": 0,
            "tokens": 0,
            "supervised_tokens": 0,
        }
        self._source = str(path_or_records) if isinstance(path_or_records, (str, Path)) else "records"

        pending: list[tuple[str, str, list[tuple[int, int]]]] = []  # (where, text, spans)
        for where, record in _records(path_or_records):
            self.stats["records"] += 1
            try:
                messages = normalize_messages(record, format, where)
            except SkipRecord as skip:
                self.stats[f"skipped_{skip.kind}"] += 1
                continue
            text, spans = render_text(tokenizer, messages, where)
            pending.append((where, text, spans))
            if len(pending) >= _ENCODE_BATCH:
                self._encode(tokenizer, pending)
                pending = []
        if pending:
            self._encode(tokenizer, pending)

        if self.stats["records"] == 0:
            raise UserError(f"{self._source}: no records")
        if not self.examples:
            raise UserError(f"{self._source}: no usable conversation ({self.summary()})")

    def _encode(self, tokenizer, pending: list[tuple[str, str, list[tuple[int, int]]]]) -> None:
        rendered = encode_rendered(tokenizer, [text for _, text, _ in pending], [sp for _, _, sp in pending])
        for (where, _, _), (ids, mask) in zip(pending, rendered):
            cut = len(ids) > self.max_length
            try:
                ids, mask = truncate_example(ids, mask, self.max_length, where)
            except SkipRecord:
                self.stats["dropped_after_truncation"] += 1
                continue
            self.stats["truncated"] += int(cut)
            self.stats["used"] += 1
            self.stats["tokens"] += len(ids)
            self.stats["supervised_tokens"] += sum(mask)
            self.examples.append((ids, mask))
            self.where.append(where)

    def summary(self) -> str:
        """One line: records read, used, skipped / truncated / dropped, token counts."""
        s = self.stats
        return (
            f"{s['records']:,} records -> {s['used']:,} conversations used | "
            f"skipped {s['skipped_no_assistant']:,} without an assistant turn, "
            f"{s['skipped_empty_reply']:,} with an empty reply | "
            f"{s['truncated']:,} truncated to {self.max_length} tokens, "
            f"{s['dropped_after_truncation']:,} dropped (no supervised token left) | "
            f"{s['tokens']:,} tokens, {s['supervised_tokens']:,} supervised"
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self.examples[i]
        pad = self.max_length - len(ids)
        ids = torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long)  # (max_length,)
        mask = torch.tensor(mask + [0] * pad, dtype=torch.long)
        return ids[:-1], ids[1:], mask[1:]


def pick_validation(n: int, val_fraction: float, seed: int, max_val: int | None, what: str = "item(s)") -> set[int]:
    """Which of `n` units (conversations, preference records …) go to validation.

    `n_val = round(n · val_fraction)`, at least 1 when `val_fraction > 0`, at most `max_val`;
    drawn by a `random.Random(seed)` permutation, so the same arguments always pick the same set.

    Raises:
        UserError: `val_fraction` outside [0, 1), `max_val < 0`, or no unit left for training
            (`what` names the units in the message).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction: must be in [0, 1), got {val_fraction!r}")
    if max_val is not None and max_val < 0:
        raise UserError(f"max_val: must be >= 0 or None, got {max_val!r}")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if max_val is not None:
        n_val = min(n_val, max_val)
    if n - n_val < 1:
        raise UserError(
            f"split: {n} {what} cannot give {n_val} for validation and at least one for "
            "training; add data or lower val_fraction"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:n_val])


def split_examples(
    examples: Sequence[Example], val_fraction: float, seed: int = 0, max_val: int | None = None
) -> tuple[list[Example], list[Example]]:
    """Split whole conversations into train and validation, deterministically.

    ``n_val = round(len(examples) * val_fraction)``, at least 1 when ``val_fraction > 0``, at
    most ``max_val``; the validation conversations are drawn by a ``random.Random(seed)``
    permutation, and both parts keep the original order.

    Returns:
        ``(train, val)`` lists; ``val`` is empty when ``val_fraction == 0`` or ``max_val == 0``.

    Raises:
        UserError: ``val_fraction`` outside ``[0, 1)``, ``max_val < 0``, or too few
            conversations to leave at least one for training.
    """
    val_idx = pick_validation(len(examples), val_fraction, seed, max_val, "conversation(s)")
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


def _shifted(ids: Sequence[int], mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(inputs, targets)`` of one conversation: ``inputs = ids[:-1]`` and
    ``targets[t] = ids[t+1]`` if ``mask[t+1] == 1`` else ``IGNORE_INDEX``."""
    inputs = list(ids[:-1])
    targets = [tok if m else IGNORE_INDEX for tok, m in zip(ids[1:], mask[1:])]
    return inputs, targets


def _check_example(i: int, ex: Any) -> Example:
    if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and len(ex[0]) == len(ex[1])):
        raise UserError(f"example {i}: expected (ids, loss_mask) of equal length")
    ids, mask = ex
    if len(ids) < 2 or not any(mask[1:]):
        raise UserError(f"example {i}: no supervised target (needs a mask-1 token after the first)")
    return list(ids), list(mask)


class PaddedSFTDataset(Dataset):
    """One conversation per item, for :func:`collate_padded`.

    Item ``i`` is ``{"input_ids": ids[:-1], "targets": targets}``, LongTensors of shape
    ``(L - 1,)`` for a conversation of ``L`` tokens, with ``targets[t] = ids[t+1]`` where
    ``mask[t+1] == 1`` and ``-100`` elsewhere.

    Raises:
        UserError: an example is malformed or has no supervised target.
    """

    def __init__(self, examples: Sequence[Example]) -> None:
        self.items = [_shifted(*_check_example(i, ex)) for i, ex in enumerate(examples)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        inputs, targets = self.items[i]
        return {
            "input_ids": torch.tensor(inputs, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.long),
        }


def collate_padded(items: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad :class:`PaddedSFTDataset` items to the longest one.

    Returns:
        ``input_ids`` ``(B, T)`` (``pad_id`` on padding), ``targets`` ``(B, T)`` (``-100`` on
        padding), ``attention_mask`` ``(B, T)`` long, 1 on real tokens, and ``position_ids``
        ``(B, T)`` = ``0..T-1`` per row; ``T`` is the longest item.
    """
    lengths = [len(it["input_ids"]) for it in items]
    b, t = len(items), max(lengths)
    input_ids = torch.full((b, t), int(pad_id), dtype=torch.long)
    targets = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, t), dtype=torch.long)
    for row, (it, n) in enumerate(zip(items, lengths)):
        input_ids[row, :n] = it["input_ids"]
        targets[row, :n] = it["targets"]
        attention_mask[row, :n] = 1
    position_ids = torch.arange(t, dtype=torch.long).expand(b, t).clone()
    return {
        "input_ids": input_ids,
        "targets": targets,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


def _best_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Pack item indices into bins of ``capacity`` by best-fit decreasing.

    Items go longest first (ties in a seeded random order); each goes into the open bin with the
    least room that still fits it, else into a new bin. ``O(n log n)`` with a sorted list of
    ``(room, bin)`` pairs.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the shuffled order
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # sorted (room left, bin index)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, (n, -1))
        if k < len(rooms):
            room, b = rooms.pop(k)
            bins[b].append(i)
            bisect.insort(rooms, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(rooms, (capacity - n, len(bins) - 1))
    return bins


class PackedSFTDataset(Dataset):
    """Whole conversations packed into blocks of exactly ``block_size`` tokens, for
    :func:`collate_packed`.

    Each conversation contributes ``inputs = ids[:-1]`` and its targets (``-100`` where the next
    token is not supervised), so a target never crosses into the next conversation. Packing is
    best-fit decreasing (conversations are never split); the block order is shuffled with
    ``seed``. A conversation with more than ``block_size + 1`` tokens is cut to that length
    first (and dropped if no supervised target remains); with ``max_length <= block_size + 1``
    in :class:`SFTDataset` this never happens.

    Item ``i`` is a dict of LongTensors of shape ``(block_size,)``: ``input_ids`` (``pad_id``
    in the unused tail), ``targets`` (``-100`` in the tail), ``position_ids`` (restarting at 0
    for each conversation; 0 in the tail) and ``segment_ids`` (the conversation's index within
    the block, ``-1`` in the tail).

    Attributes:
        stats: ``conversations`` packed, ``blocks``, ``truncated``, ``dropped``, ``tokens``
            (real input tokens) and ``fill`` (tokens / (blocks · block_size)).

    Raises:
        UserError: ``block_size < 1``, a malformed example, or nothing left to pack.
    """

    def __init__(self, examples: Sequence[Example], block_size: int, seed: int = 0, pad_id: int = 1) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise UserError(f"block_size: must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self.pad_id = int(pad_id)
        self.segments: list[tuple[list[int], list[int]]] = []  # (inputs, targets), len <= block_size
        truncated = dropped = 0
        for i, ex in enumerate(examples):
            ids, mask = _check_example(i, ex)
            if len(ids) > block_size + 1:
                truncated += 1
                ids, mask = ids[: block_size + 1], mask[: block_size + 1]
                if not any(mask[1:]):
                    dropped += 1
                    continue
            self.segments.append(_shifted(ids, mask))
        if not self.segments:
            raise UserError("PackedSFTDataset: no conversation to pack")
        lengths = [len(inp) for inp, _ in self.segments]
        self.blocks = _best_fit_decreasing(lengths, block_size, seed)
        random.Random(seed + 1).shuffle(self.blocks)
        tokens = sum(lengths)
        self.stats = {
            "conversations": len(self.segments),
            "blocks": len(self.blocks),
            "truncated": truncated - dropped,
            "dropped": dropped,
            "tokens": tokens,
            "fill": tokens / (len(self.blocks) * block_size),
        }

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = self.block_size
        input_ids = torch.full((t,), self.pad_id, dtype=torch.long)
        targets = torch.full((t,), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(t, dtype=torch.long)
        segment_ids = torch.full((t,), -1, dtype=torch.long)
        pos = 0
        for seg, j in enumerate(self.blocks[i]):
            inputs, tgt = self.segments[j]
            n = len(inputs)
            input_ids[pos : pos + n] = torch.tensor(inputs, dtype=torch.long)
            targets[pos : pos + n] = torch.tensor(tgt, dtype=torch.long)
            position_ids[pos : pos + n] = torch.arange(n)
            segment_ids[pos : pos + n] = seg
            pos += n
        return {
            "input_ids": input_ids,
            "targets": targets,
            "position_ids": position_ids,
            "segment_ids": segment_ids,
        }


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Causal block-diagonal mask from segment ids.

    Args:
        segment_ids: ``(B, T)`` long, the conversation index of each token, ``-1`` on padding.

    Returns:
        ``(B, 1, T, T)`` bool, True where query ``i`` may attend key ``j``: ``j <= i`` and both
        in the same conversation. A padding query attends only to itself, so no row is all
        False (softmax stays finite; those outputs carry no loss).
    """
    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    real = (segment_ids >= 0)[:, None, :]  # (B, 1, T): key is a real token
    eye = torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal & real) | eye)[:, None]


def collate_packed(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack :class:`PackedSFTDataset` blocks into an SFT batch.

    Returns:
        ``input_ids``, ``targets``, ``position_ids``, ``segment_ids`` ``(B, T)`` long and
        ``attention_mask`` ``(B, 1, T, T)`` bool (see :func:`packed_attention_mask`).
    """
    batch = {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "targets", "position_ids", "segment_ids")}
    batch["attention_mask"] = packed_attention_mask(batch["segment_ids"])
    return batch


def replay_examples(replay: Sequence[Example], n_train: int, ratio: float, seed: int = 0) -> list[Example]:
    """The replay conversations to mix into a training set of `n_train` new ones so that they
    make up `ratio` of the mixture: `n = round(n_train · ratio / (1 − ratio))` drawn from
    `replay` by a `random.Random(seed)` permutation (cycled when `replay` is shorter).

    Experience replay (rehearsal; Robins 1995, "Catastrophic forgetting, rehearsal and
    pseudorehearsal"): each epoch of the mixed set then holds exactly that share of old-task
    conversations.

    Raises:
        UserError: `ratio` outside [0, 1) or an empty `replay` with `ratio > 0`.
    """
    if not 0 <= ratio < 1:
        raise UserError(f"--replay_ratio: must be in [0, 1), got {ratio!r}")
    n = round(n_train * ratio / (1 - ratio))
    if n == 0:
        return []
    if not replay:
        raise UserError("--replay_data holds no usable conversation")
    order = list(range(len(replay)))
    random.Random(seed).shuffle(order)
    return [replay[order[i % len(order)]] for i in range(n)]


def reply_budget(reply_tokens: list[int], context: int, quantile: float = 0.99) -> int:
    """The model's default reply length, saved as `generation_config.max_new_tokens` (what `chat`
    and `generate` use when not told otherwise): the `quantile` of `reply_tokens` (the trained
    tokens of each training conversation: its assistant replies and their end-of-turn tokens),
    times 1.25, rounded up to a multiple of 16, between 16 and `context`. A model trained on
    short answers thereby stops waiting for long ones: a reply that never emits `<|im_end|>`
    costs this many tokens, not 256."""
    import math

    counts = sorted(reply_tokens) or [256]
    k = counts[min(len(counts) - 1, math.ceil(quantile * len(counts)) - 1)]
    return int(min(max(16, math.ceil(1.25 * k / 16) * 16), context))


def load_sft_data(
    data: list[str],
    tok,
    max_length: int,
    format: str | None,
    val_fraction: float,
    max_val: int | None,
    packing: bool,
    seed: int,
    say=print,
    replay_data: list[str] | None = None,
    replay_ratio: float = 0.2,
):
    """Render every record of `data` and split whole conversations into train / validation.

    Returns `(train_dataset, val_dataset | None, collate_fn)`; with `packing`, conversations are
    packed into blocks of `max_length` tokens (position ids restart per conversation and attention
    never crosses one), else each item is one conversation and batches are padded to their
    longest item. Skipped records are counted and reported through `say`. With `replay_data`,
    conversations of that earlier task are added to the training part so that they make up
    exactly `replay_ratio` of it (`minigpt.data.sft.replay_examples`); validation stays the new
    task's alone.

    Raises:
        UserError: no data, a malformed record (naming file:line and field), or no usable
            conversation at all.
    """
    from functools import partial

    if not data:
        raise UserError("--data is required: JSONL files of conversations (messages / Alpaca / ShareGPT records)")
    examples = []
    for source in data:
        ds = SFTDataset(source, tok, max_length=max_length, format=format)
        say(f"{source}: {ds.summary()}")
        examples.extend(ds.examples)
    train_ex, val_ex = split_examples(examples, val_fraction, seed=seed, max_val=max_val)
    if replay_data:
        old = []
        for source in replay_data:
            ds = SFTDataset(source, tok, max_length=max_length, format=format)
            say(f"replay {source}: {ds.summary()}")
            old.extend(ds.examples)
        replayed = replay_examples(old, len(train_ex), replay_ratio, seed=seed)
        say(f"replay: {len(replayed)} earlier conversations mixed into {len(train_ex)} new ones "
            f"({len(replayed) / max(len(replayed) + len(train_ex), 1):.3f} of the training set)")
        train_ex = train_ex + replayed
    reply_tokens = [int(sum(mask)) for _, mask in train_ex]
    if packing:
        train_ds = PackedSFTDataset(train_ex, max_length, seed=seed)
        val_ds = PackedSFTDataset(val_ex, max_length, seed=seed) if val_ex else None
        collate = collate_packed
    else:
        train_ds = PaddedSFTDataset(train_ex)
        val_ds = PaddedSFTDataset(val_ex) if val_ex else None
        collate = partial(collate_padded, pad_id=tok.pad_token_id)
    say(
        f"SFT data: {len(train_ex)} train / {len(val_ex)} held-out conversations"
        + (f" packed into {len(train_ds)} blocks of {max_length} tokens" if packing else "")
    )
    train_ds.reply_tokens = reply_tokens  # trained tokens per conversation, for `reply_budget`
    return train_ds, val_ds, collate
