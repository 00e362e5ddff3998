"""Unpaired preference data for KTO (Ethayarajh et al. 2024, arXiv:2402.01306): records ->
(prompt, completion, desirable?) token ids -> KTO batches.

Record format: ``{"prompt", "completion", "label": true/false}``; ``prompt`` a string (one user
message) or a message list, ``completion`` a string or a message list ending with the
assistant reply. Paired records (every format of :mod:`minigpt.data.preference`, HH-RLHF
included) are accepted too: a pair gives a desirable (chosen) and an undesirable (rejected)
example. Rendering, skipped-record counting and truncation are those of the paired datasets.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from minigpt.data.preference import (
    SKIP_KINDS,
    check_lengths,
    encode_replies,
    finite_floats,
    fit_to_length,
    is_missing,
    mean_or_zero,
    normalize_preference,
    numbered_records,
    pad_rows,
    prompt_messages,
    reply_messages,
    tokenizer_pad_id,
    type_name,
)
from minigpt.errors import UserError
from minigpt.tokenizer.chat import SkipRecord, render_prompt

__all__ = ["UnpairedExample", "UnpairedPreferenceDataset", "collate_unpaired", "normalize_unpaired"]


@dataclass(frozen=True)
class UnpairedExample:
    """One tokenized unpaired (KTO) example: a prompt, one completion and whether it is
    desirable (``label=True``) or undesirable. Ids as in :class:`PreferencePair`."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    where: str


def normalize_unpaired(record: Mapping[str, Any], where: str = "record") -> tuple[list[dict], str, bool]:
    """Turn one KTO record ``{"prompt", "completion", "label"}`` into
    ``(prompt_messages, completion, label)``.

    ``prompt`` is a string (one user message) or a message list; ``completion`` a string or a
    message list ending with the assistant reply (earlier messages extend the prompt);
    ``label`` a JSON boolean (True = desirable).

    Raises:
        UserError: not an object; a field of the wrong type (``label`` must be true/false, not
            0/1 or a string); a malformed message list; a control token in the text.
        SkipRecord: kind ``"missing_field"`` (``prompt``, ``completion`` or ``label`` absent or
            null) or ``"empty_response"`` (a blank completion).
    """
    if not isinstance(record, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {type_name(record)}")
    label = record.get("label")
    if label is not None and not isinstance(label, bool):
        # numpy.bool_ from Parquet is not a bool; accept it, but never 0/1 or "true".
        if type(label).__name__ == "bool_":
            label = bool(label)
        else:
            raise UserError(f"{where}: field 'label' must be true or false, got {type_name(label)} {label!r}")
    completion = record.get("completion")
    if completion is not None and not isinstance(completion, (str, list)):
        raise UserError(f"{where}: field 'completion' must be a string or a message list, got {type_name(completion)}")
    prompt = None if is_missing(record, "prompt") else prompt_messages(record["prompt"], where)
    for field in ("prompt", "completion", "label"):
        if is_missing(record, field):
            raise SkipRecord(f"{where}: missing field {field!r}", kind="missing_field")
    extra, text = reply_messages(completion, where, "completion")
    prompt = prompt + extra
    if not prompt:
        raise SkipRecord(f"{where}: missing field 'prompt' (no prompt message at all)", kind="missing_field")
    if not text.strip():
        raise SkipRecord(f"{where}: field 'completion' has an empty response", kind="empty_response")
    return prompt, text, label


class UnpairedPreferenceDataset(Dataset):
    """Unpaired examples for KTO: a prompt, one completion, and a desirable/undesirable label.

    Accepts unpaired records (:func:`normalize_unpaired`) and paired ones
    (:func:`normalize_preference`, all paired formats incl. HH-RLHF): a pair gives one desirable
    example (chosen) and one undesirable example (rejected), in that order. Rendering, skips and
    truncation as in :class:`PreferenceDataset` with a single reply (so no ``identical`` after
    truncation); a record with neither ``completion``/``label`` nor ``chosen``/``rejected``
    counts as ``missing_field``.

    Attributes:
        examples: the :class:`UnpairedExample` list, in source order.
        pad_id, max_length, max_prompt_length: as in :class:`PreferenceDataset`.
        stats: a Counter: ``records``, ``examples``, ``desirable``, ``undesirable``,
            ``pairs_split`` (paired records used), ``skipped_<kind>``, ``prompt_truncated``,
            ``response_truncated`` (per example), ``prompt_tokens``, ``completion_tokens``.
        ref_logprobs, ref_kl_logprobs: None or one float per example after
            :meth:`set_reference_logprobs`.

    ``ds[i]`` is ``{"input_ids": (L,) long = prompt + completion, "prompt_length": int,
    "label": bool, "index": i, "kl_completion_ids": (M,) long}`` (the completion of
    :meth:`kl_partner` ``(i)``, cut so prompt + it fits ``max_length``) (+ ``"ref_logprobs"``,
    ``"ref_kl_logprobs"`` floats when set).

    Raises:
        UserError: as :class:`PreferenceDataset`.
    """

    def __init__(self, path_or_records: Any, tokenizer, max_length: int = 512, max_prompt_length: int | None = None) -> None:
        self.max_prompt_length = check_lengths(max_length, max_prompt_length)
        self.max_length = max_length
        self.pad_id = tokenizer_pad_id(tokenizer)
        self.examples: list[UnpairedExample] = []
        self.stats: Counter = Counter()
        self.ref_logprobs: list[float] | None = None
        self.ref_kl_logprobs: list[float] | None = None
        self._source, records = numbered_records(path_or_records, "UnpairedPreferenceDataset")
        order: list[UnpairedExample | int] = []  # as in PreferenceDataset
        pending: list[tuple[str, list[int], str, bool]] = []  # (where, prompt ids, completion, label)
        for where, record in records:
            self.stats["records"] += 1
            if isinstance(record, UnpairedExample):
                order.append(record)
                continue
            try:
                if isinstance(record, Mapping) and ("completion" in record or "label" in record or "chosen" not in record):
                    prompt, completion, label = normalize_unpaired(record, where)
                    items = [(completion, label)]
                else:
                    prompt, chosen, rejected = normalize_preference(record, where)
                    items = [(chosen, True), (rejected, False)]
                    self.stats["pairs_split"] += 1
            except SkipRecord as skip:
                self.stats[f"skipped_{skip.kind}"] += 1
                continue
            prompt_ids = render_prompt(tokenizer, prompt, where)
            for text, label in items:
                order.append(len(pending))
                pending.append((where, prompt_ids, text, label))
        replies = encode_replies(tokenizer, [text for _, _, text, _ in pending])
        for entry in order:
            if isinstance(entry, int):
                where, prompt_ids, _, label = pending[entry]
                entry = UnpairedExample(prompt_ids, replies[entry], label, where)
            self._add(entry)
        if self.stats["records"] == 0:
            raise UserError(f"{self._source}: no records")
        if not self.examples:
            raise UserError(f"{self._source}: no usable example ({self.summary()})")

    def _add(self, ex: UnpairedExample) -> None:
        if not ex.prompt_ids or not ex.completion_ids:
            raise UserError(f"{ex.where}: an UnpairedExample needs non-empty prompt and completion ids")
        prompt, (completion,), prompt_cut, reply_cut = fit_to_length(
            list(ex.prompt_ids), [list(ex.completion_ids)], self.max_length, self.max_prompt_length
        )
        label = bool(ex.label)
        self.stats["prompt_truncated"] += int(prompt_cut)
        self.stats["response_truncated"] += int(reply_cut)
        self.stats["examples"] += 1
        self.stats["desirable" if label else "undesirable"] += 1
        self.stats["prompt_tokens"] += len(prompt)
        self.stats["completion_tokens"] += len(completion)
        self.examples.append(UnpairedExample(prompt, completion, label, ex.where))

    def summary(self) -> str:
        """One line: records read, examples used by label, skips by kind, truncations."""
        s, n = self.stats, self.stats["examples"]
        skips = ", ".join(f"{s[f'skipped_{k}']:,} {k}" for k in SKIP_KINDS)
        return (
            f"{s['records']:,} records -> {n:,} examples ({s['desirable']:,} desirable, "
            f"{s['undesirable']:,} undesirable; {s['pairs_split']:,} from pairs) | skipped: {skips} | "
            f"truncated to {self.max_length} tokens: {s['prompt_truncated']:,} prompts (left, "
            f">= {self.max_prompt_length} kept), {s['response_truncated']:,} completions (right) | "
            f"mean tokens: prompt {mean_or_zero(s['prompt_tokens'], n):.1f}, completion "
            f"{mean_or_zero(s['completion_tokens'], n):.1f}"
        )

    def set_reference_logprobs(self, logprobs: Sequence[float], kl_logprobs: Sequence[float] | None = None) -> None:
        """Store precomputed reference log-probs: ``logprobs[i] = log π_ref(completion_i | prompt_i)``
        and, optionally, ``kl_logprobs[i]`` for item ``i``'s mismatched pair (prompt ``i`` + the
        completion of :meth:`kl_partner` ``(i)``, fixed per dataset, so valid in any batch order).

        Raises:
            UserError: a length other than ``len(self)`` or a non-finite value.
        """
        self.ref_logprobs = finite_floats(logprobs, len(self), "ref logprobs")
        self.ref_kl_logprobs = None if kl_logprobs is None else finite_floats(kl_logprobs, len(self), "ref KL logprobs")

    def subset(self, indices: Sequence[int]) -> UnpairedPreferenceDataset:
        """A dataset of ``self.examples[i]`` for ``i`` in ``indices`` (reference log-probs too)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.examples = [self.examples[i] for i in indices]
        new.__dict__.pop("_partners", None)
        for name in ("ref_logprobs", "ref_kl_logprobs"):
            values = getattr(self, name)
            setattr(new, name, None if values is None else [values[i] for i in indices])
        return new

    def __len__(self) -> int:
        return len(self.examples)

    def kl_partner(self, i: int) -> int:
        """The example whose completion is paired with prompt ``i`` for KTO's KL reference point.

        Fixed per dataset (a seeded cyclic shift that never lands on the other half of the same
        pair when there are enough records), so reference log-probs of the mismatched pairs can be computed
        once and stay valid whatever the batch order.
        """
        partners = self.__dict__.get("_partners")
        if partners is None or len(partners) != len(self.examples):
            # Lay the examples out record by record (records in a seeded random order) and pair
            # each with the one `shift` places on: with shift = the largest record's size, that
            # is always another record once there are at least 2·shift examples. A cyclic shift
            # is a permutation, so every completion is used exactly once.
            groups: dict[str, list[int]] = {}
            for k, ex in enumerate(self.examples):
                groups.setdefault(ex.where, []).append(k)
            keys = list(groups)
            random.Random(0).shuffle(keys)
            layout = [k for key in keys for k in groups[key]]
            n, widest = len(layout), max(len(g) for g in groups.values())
            shift = widest if n >= 2 * widest else 1
            partners = [0] * n
            for pos, a in enumerate(layout):
                partners[a] = layout[(pos + shift) % n]
            self._partners = partners
        return partners[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        other = self.examples[self.kl_partner(i)].completion_ids
        kl_completion = other[: max(1, self.max_length - len(ex.prompt_ids))]
        item: dict[str, Any] = {
            "input_ids": torch.tensor(ex.prompt_ids + ex.completion_ids, dtype=torch.long),
            "prompt_length": len(ex.prompt_ids),
            "label": ex.label,
            "index": i,
            "kl_completion_ids": torch.tensor(kl_completion, dtype=torch.long),
        }
        if self.ref_logprobs is not None:
            item["ref_logprobs"] = self.ref_logprobs[i]
        if self.ref_kl_logprobs is not None:
            item["ref_kl_logprobs"] = self.ref_kl_logprobs[i]
        return item


def collate_unpaired(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack :class:`UnpairedPreferenceDataset` items into a KTO batch.

    Returns:
        ``input_ids``/``attention_mask``/``targets`` ``(B, T)`` as in
        :func:`collate_preference` (one row per item, targets on the completion);
        ``label`` ``(B,)`` bool; ``index`` ``(B,)`` long;
        ``kl_input_ids``/``kl_attention_mask``/``kl_targets`` ``(B, T')``: row ``i`` is the
        prompt of item ``i`` + a completion of another example (mismatched pairs for KTO's KL
        reference point, Ethayarajh et al. 2024 section 4.1): the item's own
        ``kl_completion_ids`` when it has them (dataset items do: a fixed partner, see
        :meth:`UnpairedPreferenceDataset.kl_partner`), else the completion of item
        ``(i + 1) % B`` cut on the right to ``T`` (``B == 1`` pairs the item with itself);
        ``ref_logprobs`` / ``ref_kl_logprobs`` ``(B,)`` float32 when every item carries them.

    Raises:
        UserError: an empty list of items.
    """
    if not items:
        raise UserError("collate_unpaired: no items")
    rows = [it["input_ids"] for it in items]
    prompts = [int(it["prompt_length"]) for it in items]
    batch = pad_rows(rows, prompts, pad_id)
    t = batch["input_ids"].shape[1]
    b = len(items)
    kl_rows = []
    for i in range(b):
        if "kl_completion_ids" in items[i]:  # the dataset's fixed partner (see kl_partner)
            kl_rows.append(torch.cat([rows[i][: prompts[i]], items[i]["kl_completion_ids"]]))
            continue
        nxt = (i + 1) % b
        row = torch.cat([rows[i][: prompts[i]], rows[nxt][prompts[nxt]:]])
        kl_rows.append(row[:t])  # prompt_i < len(row_i) <= t: at least one completion token stays
    kl = pad_rows(kl_rows, prompts, pad_id)
    batch["kl_input_ids"] = kl["input_ids"]
    batch["kl_attention_mask"] = kl["attention_mask"]
    batch["kl_targets"] = kl["targets"]
    batch["label"] = torch.tensor([bool(it["label"]) for it in items], dtype=torch.bool)
    batch["index"] = torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long)
    for key in ("ref_logprobs", "ref_kl_logprobs"):
        if all(key in it for it in items):
            batch[key] = torch.tensor([float(it[key]) for it in items], dtype=torch.float32)
    return batch
