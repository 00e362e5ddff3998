"""Paired preference data: records -> (prompt, chosen, rejected) token ids -> DPO / reward-model
batches. The unpaired (KTO) side, built on the helpers here, is `minigpt.data.kto`.

Record formats, detected per record:

=================  ==========================================================================
paired             ``{"prompt", "chosen", "rejected"}``; ``prompt`` is a string (one user
                   message) or a message list; ``chosen``/``rejected`` are strings (the reply)
                   or message lists whose last message is the assistant reply (earlier
                   messages, which must agree between the two, extend the prompt). Message
                   lists use ``role``/``content`` or ShareGPT ``from``/``value``. Without
                   ``prompt``, two message lists give an implicit prompt (their shared
                   earlier messages).
HH-RLHF            ``{"chosen", "rejected"}`` full transcripts with ``"\\n\\nHuman: "`` /
                   ``"\\n\\nAssistant: "`` turns (Anthropic, Bai et al. 2022): each is split at
                   its last ``"\\n\\nAssistant:"``; the prefixes must agree and become
                   user/assistant messages. Turn texts are stripped of the surrounding spaces
                   the transcript format puts around them.
=================  ==========================================================================

Every prompt is rendered with the shared chat renderer
(:func:`minigpt.tokenizer.chat.render_prompt`, so it ends with ``"<|im_start|>assistant\\n"``)
and every reply is the tokens of ``reply + "<|im_end|>"``. Well-formed records that cannot be
used are skipped and counted per kind (``missing_field``, ``identical``, ``empty_response``,
``prompt_mismatch``), never silently dropped; a record of the wrong shape (a field of the
wrong type, a control token in the text) raises :class:`~minigpt.errors.UserError` naming it.

Why the reply is tokenized on its own: the prompt must be the same ids for the chosen and the
rejected reply, and they must be the ids the policy is prompted with at generation time. For a
reply that starts with a non-space character this equals slicing the whole rendered
conversation (``apply_chat_template``), because the byte-level pre-tokenizer splits at the
``"\\n"`` ending the prompt. A reply starting with whitespace could merge with that ``"\\n"`` in
a joint rendering; then the ids here are still ``prompt ids + the ids the model would generate``
(TRL's DPOTrainer also tokenizes prompt and completion apart).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from minigpt.errors import UserError
from minigpt.data.sft import pick_validation
from minigpt.tokenizer.bpe import IM_END
from minigpt.tokenizer.chat import (
    SkipRecord,
    check_content,
    parse_messages,
    parse_sharegpt,
    encode_rendered,
    render_prompt,
)

__all__ = [
    "IGNORE_INDEX",
    "SKIP_KINDS",
    "PreferencePair",
    "PreferenceDataset",
    "check_lengths",
    "collate_preference",
    "encode_replies",
    "finite_floats",
    "fit_to_length",
    "is_missing",
    "mean_or_zero",
    "normalize_preference",
    "numbered_records",
    "pad_rows",
    "prompt_messages",
    "reply_messages",
    "split_preference",
    "tokenizer_pad_id",
    "type_name",
]

#: Target value the cross-entropy ignores (PyTorch's default ``ignore_index``).
IGNORE_INDEX = -100

#: Kinds of :class:`SkipRecord` the preference datasets count (``stats["skipped_<kind>"]``).
SKIP_KINDS = ("missing_field", "identical", "empty_response", "prompt_mismatch")

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

# Replies are tokenized in batches of this many strings (the Rust tokenizer is much faster per
# string in a batch).
_ENCODE_BATCH = 1024


@dataclass(frozen=True)
class PreferencePair:
    """One tokenized preference pair.

    Attributes:
        prompt_ids: the prompt rendered with the chat template, ending with the generation
            prompt ``"<|im_start|>assistant\\n"`` (possibly cut from the left, see
            :class:`PreferenceDataset`).
        chosen_ids: the preferred reply's tokens followed by ``<|im_end|>`` (unless the reply
            was cut on the right).
        rejected_ids: the dispreferred reply, likewise.
        where: the source record (``"file.jsonl:12"`` or ``"record 3"``).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str



# ---------------------------------------------------------------------------------------------
# Records -> (prompt messages, reply strings)
# ---------------------------------------------------------------------------------------------


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for error messages (``"null"`` for None)."""
    return "null" if value is None else type(value).__name__


def is_missing(record: Mapping[str, Any], field: str) -> bool:
    """True if ``field`` is absent from ``record`` or null."""
    return field not in record or record[field] is None


def _message_list(value: list, where: str, field: str) -> list[dict]:
    """Normalize a ``role``/``content`` or ShareGPT ``from``/``value`` message list."""
    first = next((m for m in value if isinstance(m, Mapping)), None)
    here = f"{where}: field {field!r}"
    if first is not None and "from" in first and "role" not in first:
        return parse_sharegpt({"conversations": value}, here)
    return parse_messages({"messages": value}, here)


def prompt_messages(value: Any, where: str) -> list[dict]:
    """A record's ``prompt`` field (a string = one user message, or a message list) as
    ``[{"role", "content"}]``.

    Raises:
        UserError: another type, a malformed message list or a control token; names ``where``.
    """
    if isinstance(value, str):
        return [{"role": "user", "content": check_content(where, "field 'prompt'", value)}]
    if isinstance(value, list):
        return _message_list(value, where, "prompt")
    raise UserError(f"{where}: field 'prompt' must be a string or a message list, got {type_name(value)}")


def reply_messages(value: Any, where: str, field: str) -> tuple[list[dict], str]:
    """``(extra prompt messages, reply text)`` of a ``chosen``/``rejected``/``completion`` field."""
    if isinstance(value, str):
        return [], check_content(where, f"field {field!r}", value, role="assistant")
    if isinstance(value, list):
        messages = _message_list(value, where, field)
        if not messages or messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: field {field!r} must end with an assistant message (the reply)")
        return messages[:-1], messages[-1]["content"]
    raise UserError(f"{where}: field {field!r} must be a string or a message list, got {type_name(value)}")


def _hh_split(text: str, where: str, field: str) -> tuple[list[dict], str] | None:
    """Split an HH-RLHF transcript at its last ``"\\n\\nAssistant:"``; None if it has none.

    The prefix becomes messages (Human -> user, Assistant -> assistant); each turn's text and
    the reply are stripped (the format writes ``"Human: text"``, often with extra spaces).
    An empty assistant turn inside the prompt is kept as an empty message (it is in the data,
    e.g. helpful-base test line 121); an empty Human turn is an error.
    """
    for token in (IM_END, "<|im_start|>"):
        if token in text:
            raise UserError(f"{where}: field {field!r} contains the control token {token!r}")
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        return None
    prefix, reply = text[:cut], text[cut + len(HH_ASSISTANT):].strip()
    if prefix.startswith(("Human:", "Assistant:")):
        prefix = "\n\n" + prefix
    parts = _HH_TURN.split(prefix)  # [lead, role, text, role, text, ...]
    if parts[0].strip():
        raise UserError(
            f"{where}: field {field!r} is not an HH-RLHF transcript: text before the first "
            f"'\\n\\nHuman:' turn ({parts[0].strip()[:40]!r})"
        )
    messages = []
    for n, (role, content) in enumerate(zip(parts[1::2], parts[2::2]), start=1):
        content = content.strip()
        if role == "Human" and not content:
            raise UserError(f"{where}: field {field!r} turn {n} (Human) is empty")
        messages.append({"role": _HH_ROLES[role], "content": content})
    return messages, reply


def normalize_preference(record: Mapping[str, Any], where: str = "record") -> tuple[list[dict], str, str]:
    """Turn one paired preference record into ``(prompt_messages, chosen, rejected)``.

    See the module docstring for the formats. Checks, in order: the field types (UserError),
    missing fields, HH/message-list prompt agreement, empty replies, identical replies.

    Args:
        record: one JSON object.
        where: names the record in messages, e.g. ``"data.jsonl:12"``.

    Returns:
        ``prompt_messages`` (``[{"role", "content"}, ...]``, non-empty) and the two reply
        strings (verbatim, except HH-RLHF turns, which are stripped).

    Raises:
        UserError: ``record`` is not an object; a field of the wrong type; a message list that
            is malformed or (for a reply) does not end with an assistant message; a text with
            ``<|im_start|>``/``<|im_end|>``; ``chosen`` and ``rejected`` of different kinds
            (string vs list) without a prompt; a malformed HH-RLHF transcript.
        SkipRecord: kind ``"missing_field"`` (``chosen``/``rejected`` absent or null, or no
            prompt at all), ``"prompt_mismatch"`` (the HH-RLHF prefixes, or the earlier
            messages of two reply lists, differ), ``"empty_response"`` (a blank reply) or
            ``"identical"`` (``chosen == rejected``).
    """
    if not isinstance(record, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {type_name(record)}")
    for field in ("chosen", "rejected"):
        value = record.get(field)
        if value is not None and not isinstance(value, (str, list)):
            raise UserError(f"{where}: field {field!r} must be a string or a message list, got {type_name(value)}")
    prompt = None if is_missing(record, "prompt") else prompt_messages(record["prompt"], where)
    for field in ("chosen", "rejected"):
        if is_missing(record, field):
            raise SkipRecord(f"{where}: missing field {field!r}", kind="missing_field")
    chosen_raw, rejected_raw = record["chosen"], record["rejected"]

    if prompt is None and isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        # HH-RLHF transcripts.
        split_c = _hh_split(chosen_raw, where, "chosen")
        split_r = _hh_split(rejected_raw, where, "rejected")
        if split_c is None and split_r is None:
            raise SkipRecord(
                f"{where}: missing field 'prompt' (and 'chosen' is not an HH-RLHF transcript)",
                kind="missing_field",
            )
        if split_c is None or split_r is None or split_c[0] != split_r[0]:
            raise SkipRecord(f"{where}: chosen and rejected transcripts have different prompts", kind="prompt_mismatch")
        prompt, chosen = split_c
        rejected = split_r[1]
    else:
        if prompt is None and isinstance(chosen_raw, str) != isinstance(rejected_raw, str):
            raise UserError(
                f"{where}: without a 'prompt', 'chosen' and 'rejected' must both be HH-RLHF "
                "transcripts (strings) or both message lists"
            )
        extra_c, chosen = reply_messages(chosen_raw, where, "chosen")
        extra_r, rejected = reply_messages(rejected_raw, where, "rejected")
        if extra_c != extra_r:
            raise SkipRecord(
                f"{where}: the messages before the reply differ between 'chosen' and 'rejected'",
                kind="prompt_mismatch",
            )
        prompt = (prompt or []) + extra_c
    if not prompt:
        raise SkipRecord(f"{where}: missing field 'prompt' (no prompt message at all)", kind="missing_field")
    for field, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise SkipRecord(f"{where}: field {field!r} has an empty response", kind="empty_response")
    if chosen == rejected:
        raise SkipRecord(f"{where}: 'chosen' and 'rejected' are identical", kind="identical")
    return prompt, chosen, rejected


# ---------------------------------------------------------------------------------------------
# Shared dataset machinery
# ---------------------------------------------------------------------------------------------


def tokenizer_pad_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS token.

    Raises:
        UserError: the tokenizer has neither.
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise UserError("tokenizer has neither a pad token nor an eos token to pad with")
    return int(pad)


def numbered_records(path_or_records: Any, owner: str) -> tuple[str, Iterable[tuple[str, Any]]]:
    """``(source name, iterator of (where, record))`` for a data file (``where`` =
    ``"file.jsonl:12"``, via :func:`minigpt.data.loaders.iter_records`) or an in-memory list
    (``where`` = ``"record 3"``).

    Raises:
        UserError: neither a path nor a sequence (``owner`` names the caller).
    """
    if isinstance(path_or_records, (str, Path)):
        from minigpt.data.loaders import iter_records

        return str(path_or_records), iter_records(path_or_records)
    if isinstance(path_or_records, Sequence):
        return "records", ((f"record {i}", r) for i, r in enumerate(path_or_records))
    raise UserError(f"{owner}: expected a path or a list of records, got {type(path_or_records).__name__}")


def check_lengths(max_length: Any, max_prompt_length: Any) -> int:
    """Validate the token budgets of a preference dataset; returns ``max_prompt_length``
    (``max_length // 2`` when None).

    Raises:
        UserError: ``max_length`` not an integer >= 2, or ``max_prompt_length`` outside
            ``[1, max_length)``.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise UserError(f"max_length: must be an integer >= 2, got {max_length!r}")
    if max_prompt_length is None:
        return max_length // 2
    if (
        not isinstance(max_prompt_length, int)
        or isinstance(max_prompt_length, bool)
        or not 1 <= max_prompt_length < max_length
    ):
        raise UserError(
            f"max_prompt_length: must be an integer in [1, max_length) = [1, {max_length}), got {max_prompt_length!r}"
        )
    return max_prompt_length


def fit_to_length(
    prompt: list[int], replies: Sequence[list[int]], max_length: int, max_prompt_length: int
) -> tuple[list[int], list[list[int]], bool, bool]:
    """Fit ``prompt + reply`` into ``max_length`` for every reply.

    First the prompt loses tokens on the LEFT, as few as needed but never below
    ``max_prompt_length`` (a shorter prompt is never cut); then each reply is cut on the right
    to ``max_length - len(prompt)``. Returns ``(prompt, replies, prompt_cut, reply_cut)``.
    """
    longest = max(len(r) for r in replies)
    prompt_cut = reply_cut = False
    if len(prompt) + longest > max_length:
        keep = min(len(prompt), max(max_prompt_length, max_length - longest))
        if keep < len(prompt):
            prompt, prompt_cut = prompt[len(prompt) - keep:], True
        room = max_length - len(prompt)
        if longest > room:
            replies, reply_cut = [r[:room] for r in replies], True
    return prompt, list(replies), prompt_cut, reply_cut


def encode_replies(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of ``text + "<|im_end|>"`` for every text (no special tokens added)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), _ENCODE_BATCH):
        chunk = [t + IM_END for t in texts[start : start + _ENCODE_BATCH]]
        out.extend(ids for ids, _ in encode_rendered(tokenizer, chunk, [()] * len(chunk)))
    return out


def finite_floats(values: Any, n: int, name: str) -> list[float]:
    """``values`` (a sequence or tensor) as ``n`` Python floats.

    Raises:
        UserError: another count than ``n`` or a non-finite value; ``name`` names the field.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().reshape(-1).tolist()
    values = [float(v) for v in values]
    if len(values) != n:
        raise UserError(f"{name}: expected {n} values (one per example), got {len(values)}")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise UserError(f"{name}: value {bad} is not finite ({values[bad]})")
    return values


def mean_or_zero(total: int, n: int) -> float:
    """``total / n``, 0.0 when ``n`` is 0 (for summaries of possibly empty datasets)."""
    return total / n if n else 0.0


# ---------------------------------------------------------------------------------------------
# Paired preferences
# ---------------------------------------------------------------------------------------------


class PreferenceDataset(Dataset):
    """Preference pairs tokenized for DPO-family and reward-model training.

    Every record is normalized (:func:`normalize_preference`), its prompt rendered with
    :func:`~minigpt.tokenizer.chat.render_prompt` and its replies tokenized with a closing
    ``<|im_end|>`` (module docstring), all at construction.

    Truncation (so that ``prompt + reply <= max_length`` for both replies): first the prompt is
    cut from the LEFT (its most recent turns and the generation prompt are kept), as little as
    needed but to no fewer than ``max_prompt_length`` tokens (a prompt already shorter is never
    cut); then both replies are cut on the right to fit (a cut reply loses its ``<|im_end|>``).
    If the cut replies become identical, the pair is skipped as ``identical``.

    Args:
        path_or_records: a ``.jsonl``/``.json``/``.parquet`` file or directory (errors name
            ``path:line``), or a list whose items are record dicts (errors name ``record i``)
            or already tokenized :class:`PreferencePair` objects (truncated like the others).
        tokenizer: a fast tokenizer with the ChatML template (``load_tokenizer``).
        max_length: tokens of ``prompt + reply``, >= 2.
        max_prompt_length: the fewest prompt tokens left-truncation keeps; default
            ``max_length // 2``; must be in ``[1, max_length)``.

    Attributes:
        examples: the :class:`PreferencePair` list, in source order.
        pad_id: the tokenizer's pad id (else its eos).
        stats: a :class:`collections.Counter`: ``records`` read, ``pairs`` used,
            ``skipped_<kind>`` for each kind in :data:`SKIP_KINDS`, ``prompt_truncated`` and
            ``response_truncated`` (pairs whose prompt / at least one reply was cut), and
            ``prompt_tokens``, ``chosen_tokens``, ``rejected_tokens`` summed over used pairs.
        ref_chosen_logprobs, ref_rejected_logprobs: None, or one float per pair after
            :meth:`set_reference_logprobs`.

    Raises:
        UserError: bad lengths, unreadable source, a malformed record, no records, or no usable
            pair (the message names the source and the skip counts).

    ``ds[i]`` is ``{"chosen_input_ids": (Lc,) long = prompt + chosen, "rejected_input_ids":
    (Lr,) long = prompt + rejected, "prompt_length": int, "index": i}``, plus the floats
    ``"ref_chosen_logprobs"``/``"ref_rejected_logprobs"`` once reference log-probs are set.
    """

    def __init__(self, path_or_records: Any, tokenizer, max_length: int = 512, max_prompt_length: int | None = None) -> None:
        self.max_prompt_length = check_lengths(max_length, max_prompt_length)
        self.max_length = max_length
        self.pad_id = tokenizer_pad_id(tokenizer)
        self.examples: list[PreferencePair] = []
        self.stats: Counter = Counter()
        self.ref_chosen_logprobs: list[float] | None = None
        self.ref_rejected_logprobs: list[float] | None = None
        self._source, records = numbered_records(path_or_records, "PreferenceDataset")
        # Source order: a given PreferencePair, or the index of a record's entry in `pending`
        # (its replies are tokenized in one batch at the end).
        order: list[PreferencePair | int] = []
        pending: list[tuple[str, list[int], str, str]] = []  # (where, prompt ids, chosen, rejected)
        for where, record in records:
            self.stats["records"] += 1
            if isinstance(record, PreferencePair):
                order.append(record)
                continue
            try:
                prompt, chosen, rejected = normalize_preference(record, where)
            except SkipRecord as skip:
                self.stats[f"skipped_{skip.kind}"] += 1
                continue
            order.append(len(pending))
            pending.append((where, render_prompt(tokenizer, prompt, where), chosen, rejected))
        replies = encode_replies(tokenizer, [t for _, _, c, r in pending for t in (c, r)])
        for entry in order:
            if isinstance(entry, int):
                where, prompt_ids, _, _ = pending[entry]
                entry = PreferencePair(prompt_ids, replies[2 * entry], replies[2 * entry + 1], where)
            self._add(entry)
        if self.stats["records"] == 0:
            raise UserError(f"{self._source}: no records")
        if not self.examples:
            raise UserError(f"{self._source}: no usable preference pair ({self.summary()})")

    def _add(self, pair: PreferencePair) -> None:
        if not pair.chosen_ids or not pair.rejected_ids or not pair.prompt_ids:
            raise UserError(f"{pair.where}: a PreferencePair needs non-empty prompt, chosen and rejected ids")
        prompt, (chosen, rejected), prompt_cut, reply_cut = fit_to_length(
            list(pair.prompt_ids), [list(pair.chosen_ids), list(pair.rejected_ids)], self.max_length, self.max_prompt_length
        )
        if chosen == rejected:
            self.stats["skipped_identical"] += 1
            return
        self.stats["prompt_truncated"] += int(prompt_cut)
        self.stats["response_truncated"] += int(reply_cut)
        self.stats["pairs"] += 1
        self.stats["prompt_tokens"] += len(prompt)
        self.stats["chosen_tokens"] += len(chosen)
        self.stats["rejected_tokens"] += len(rejected)
        self.examples.append(PreferencePair(prompt, chosen, rejected, pair.where))

    def summary(self) -> str:
        """One line: records read, pairs used, skips by kind, truncations, mean lengths."""
        s, n = self.stats, self.stats["pairs"]
        skips = ", ".join(f"{s[f'skipped_{k}']:,} {k}" for k in SKIP_KINDS)
        return (
            f"{s['records']:,} records -> {n:,} pairs | skipped: {skips} | "
            f"truncated to {self.max_length} tokens: {s['prompt_truncated']:,} prompts (left, "
            f">= {self.max_prompt_length} kept), {s['response_truncated']:,} pairs' replies (right) | "
            f"mean tokens: prompt {mean_or_zero(s['prompt_tokens'], n):.1f}, chosen "
            f"{mean_or_zero(s['chosen_tokens'], n):.1f}, rejected {mean_or_zero(s['rejected_tokens'], n):.1f}"
        )

    def set_reference_logprobs(self, chosen: Sequence[float], rejected: Sequence[float]) -> None:
        """Store precomputed reference log-probs ``log π_ref(y|x)`` (summed over reply tokens),
        one per pair in ``self.examples`` order (lists, arrays or 1-D tensors).

        Raises:
            UserError: a length other than ``len(self)`` or a non-finite value.
        """
        self.ref_chosen_logprobs = finite_floats(chosen, len(self), "ref chosen logprobs")
        self.ref_rejected_logprobs = finite_floats(rejected, len(self), "ref rejected logprobs")

    def subset(self, indices: Sequence[int]) -> PreferenceDataset:
        """A dataset of ``self.examples[i]`` for ``i`` in ``indices`` (reference log-probs too);
        ``stats`` are those of the whole source."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.examples = [self.examples[i] for i in indices]
        if self.ref_chosen_logprobs is not None:
            new.ref_chosen_logprobs = [self.ref_chosen_logprobs[i] for i in indices]
            new.ref_rejected_logprobs = [self.ref_rejected_logprobs[i] for i in indices]
        return new

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        item: dict[str, Any] = {
            "chosen_input_ids": torch.tensor(ex.prompt_ids + ex.chosen_ids, dtype=torch.long),
            "rejected_input_ids": torch.tensor(ex.prompt_ids + ex.rejected_ids, dtype=torch.long),
            "prompt_length": len(ex.prompt_ids),
            "index": i,
        }
        if self.ref_chosen_logprobs is not None:
            item["ref_chosen_logprobs"] = self.ref_chosen_logprobs[i]
            item["ref_rejected_logprobs"] = self.ref_rejected_logprobs[i]
        return item


# ---------------------------------------------------------------------------------------------
# Unpaired (KTO)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def pad_rows(rows: Sequence[torch.Tensor], prompt_lengths: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``N`` id rows (prompt + reply) to the longest, ``T``; targets on the replies only.

    Returns ``input_ids``, ``attention_mask`` (1 = real token) and ``targets``, each ``(N, T)``
    long, with ``targets[r, t] = ids[r, t + 1]`` when ``prompt_lengths[r] <= t + 1 < len(row r)``, else
    ``-100`` (aligned: position ``t`` predicts ``targets[r, t]``).
    """
    n, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, t), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((n, t), dtype=torch.long)
    targets = torch.full((n, t), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, p) in enumerate(zip(rows, prompt_lengths)):
        length = len(ids)
        input_ids[r, :length] = ids
        attention_mask[r, :length] = 1
        # Position t predicts token t + 1; reply tokens are p .. length - 1.
        start = max(p - 1, 0)
        targets[r, start : length - 1] = ids[start + 1 : length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets}


def collate_preference(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack :class:`PreferenceDataset` items into one batch of ``2B`` rows.

    Returns:
        ``input_ids`` ``(2B, T)`` long: rows ``0..B-1`` are prompt + chosen of items
        ``0..B-1``, rows ``B..2B-1`` prompt + rejected; right-padded with ``pad_id`` to the
        longest row ``T``. ``attention_mask`` ``(2B, T)`` long, 1 on real tokens.
        ``targets`` ``(2B, T)`` long: ``input_ids[r, t+1]`` where token ``t+1`` belongs to the
        reply (its ``<|im_end|>`` included), else ``-100``. ``index`` ``(B,)`` long, the items'
        dataset indices. ``ref_logprobs`` ``(2B,)`` float32 ``[ref chosen..., ref rejected...]``,
        only when every item carries ``ref_chosen_logprobs`` and ``ref_rejected_logprobs``.

    Raises:
        UserError: an empty list of items.
    """
    if not items:
        raise UserError("collate_preference: no items")
    rows = [it["chosen_input_ids"] for it in items] + [it["rejected_input_ids"] for it in items]
    prompts = [int(it["prompt_length"]) for it in items] * 2
    batch = pad_rows(rows, prompts, pad_id)
    batch["index"] = torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long)
    if all("ref_chosen_logprobs" in it and "ref_rejected_logprobs" in it for it in items):
        refs = [float(it["ref_chosen_logprobs"]) for it in items] + [float(it["ref_rejected_logprobs"]) for it in items]
        batch["ref_logprobs"] = torch.tensor(refs, dtype=torch.float32)
    return batch


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------


def split_preference(examples: Any, val_fraction: float, seed: int = 0, max_val: int | None = None) -> tuple[Any, Any]:
    """Split preference data into train and validation, deterministically, by source record.

    Examples sharing a ``where`` (the two halves of a pair in an
    :class:`UnpairedPreferenceDataset`) land on the same side. With ``n`` distinct records,
    ``n_val = round(n * val_fraction)``, at least 1 when ``val_fraction > 0``, at most
    ``max_val``; the validation records are drawn by a ``random.Random(seed)`` permutation,
    and both parts keep the original order.

    Args:
        examples: a list of :class:`PreferencePair`/:class:`~minigpt.data.kto.UnpairedExample` (anything with a
            ``where``), or a :class:`PreferenceDataset`/:class:`~minigpt.data.kto.UnpairedPreferenceDataset`.

    Returns:
        ``(train, val)``: two lists, or two datasets of the same class (:meth:`subset`, with
        reference log-probs carried over) when given a dataset.

    Raises:
        UserError: ``val_fraction`` outside ``[0, 1)``, ``max_val < 0``, or too few records to
            leave at least one for training.
    """
    is_dataset = hasattr(examples, "examples") and hasattr(examples, "subset")  # a preference or KTO dataset
    items = examples.examples if is_dataset else list(examples)
    groups: dict[str, int] = {}
    for ex in items:
        groups.setdefault(ex.where, len(groups))
    val_groups = pick_validation(len(groups), val_fraction, seed, max_val, "preference record(s)")
    train_idx = [i for i, ex in enumerate(items) if groups[ex.where] not in val_groups]
    val_idx = [i for i, ex in enumerate(items) if groups[ex.where] in val_groups]
    if is_dataset:
        return examples.subset(train_idx), examples.subset(val_idx)
    return [items[i] for i in train_idx], [items[i] for i in val_idx]
