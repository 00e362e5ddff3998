"""Prompt datasets for online RL (GRPO, PPO): a prompt to sample from plus the columns the
reward functions need (such as a reference `answer`).

Accepted records (`.jsonl`/`.json`/`.parquet`, optionally gzipped), one JSON object each, or a
bare JSON string (the prompt); a `.txt` file holds one prompt per non-blank line:

* `{"prompt": "text" | [messages…], …}`: any other fields become reward columns;
* GSM8K `{"question", "answer"}`: the question is the prompt, the full solution stays in
  `answer` (the answer reward takes the number after `####`);
* Alpaca `{"instruction", "input"?, …}`: instruction (and input) as the user turn;
* preference records (`{"prompt","chosen","rejected"}` or HH-RLHF `{"chosen","rejected"}`
  transcripts): the shared prompt, so PPO can sample on the prompts a reward model was
  trained on.

Every prompt is rendered through the chat template with the generation prompt appended
(`render_prompt`), so the policy sees exactly what SFT taught it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from minigpt.errors import UserError
from minigpt.tokenizer import render_prompt
from minigpt.tokenizer.chat import SkipRecord

#: Fields that describe the prompt itself and are not passed to reward functions.
_PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "system", "chosen", "rejected", "output")


def prompt_messages(record: Mapping[str, Any], where: str = "record") -> list[dict]:
    """The prompt of one record as a message list ending with a user turn.

    Raises:
        UserError: not an object, a field of the wrong type, or no prompt field at all
            (the message lists the accepted ones).
        SkipRecord: a preference record whose prompt cannot be recovered (counted by the
            dataset).
    """
    if not isinstance(record, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{where}: field 'system' must be a string")
    head = [{"role": "system", "content": system}] if system else []
    if "prompt" in record and record["prompt"] is not None:
        value = record["prompt"]
        if isinstance(value, str):
            return head + [{"role": "user", "content": value}]
        if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
            return head + [{"role": str(m.get("role")), "content": m.get("content")} for m in value]
        raise UserError(f"{where}: field 'prompt' must be a string or a non-empty message list")
    if "question" in record:
        if not isinstance(record["question"], str):
            raise UserError(f"{where}: field 'question' must be a string")
        return head + [{"role": "user", "content": record["question"]}]
    if "instruction" in record:
        inst, inp = record["instruction"], record.get("input") or ""
        if not isinstance(inst, str) or not isinstance(inp, str):
            raise UserError(f"{where}: fields 'instruction' and 'input' must be strings")
        return head + [{"role": "user", "content": f"{inst}\n\n{inp}" if inp.strip() else inst}]
    if "chosen" in record and "rejected" in record:
        from minigpt.data.preference import normalize_preference

        messages, _, _ = normalize_preference(record, where)
        return messages
    raise UserError(
        f"{where}: no prompt found; expected a 'prompt', 'question' (GSM8K), 'instruction' (Alpaca) "
        "or 'chosen'/'rejected' (preference) field"
    )


class PromptDataset(Dataset):
    """Prompts rendered to token ids, with their reward columns.

    Args:
        path_or_records: a file/directory readable by `minigpt.data.loaders.iter_records`,
            or a list of record dicts.
        tokenizer: the policy's tokenizer (with the chat template).
        max_prompt_length: prompts with more tokens are skipped and counted (`too_long`),
            never cut: a cut prompt would ask a different question.
        system: a system message put before every prompt that has none.

    Items: `{"prompt_ids": list[int], "prompt": str (the rendered text), "columns": dict}`.
    `stats` counts `records`, `prompts`, `skipped_too_long` and `skipped_<kind>`.

    Raises:
        UserError: a malformed record (names `file:line` and the field); no usable prompt (the
            message gives the counts); a prompt rendered to zero tokens.
    """

    def __init__(self, path_or_records: Any, tokenizer, max_prompt_length: int | None = None, system: str | None = None) -> None:
        if max_prompt_length is not None and (not isinstance(max_prompt_length, int) or max_prompt_length < 1):
            raise UserError(f"max_prompt_length must be a positive integer, got {max_prompt_length!r}")
        source, records = _records(path_or_records)
        self.items: list[dict] = []
        self.stats: dict[str, int] = {"records": 0, "prompts": 0, "skipped_too_long": 0}
        for where, record in records:
            self.stats["records"] += 1
            try:
                messages = prompt_messages(record, where)
            except SkipRecord as skip:
                key = f"skipped_{skip.kind}"
                self.stats[key] = self.stats.get(key, 0) + 1
                continue
            if system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}] + messages
            ids = render_prompt(tokenizer, messages, where=where)
            if max_prompt_length is not None and len(ids) > max_prompt_length:
                self.stats["skipped_too_long"] += 1
                continue
            columns = {k: v for k, v in record.items() if k not in _PROMPT_FIELDS}
            if "question" in record and "answer" in record:
                columns["answer"] = record["answer"]
            self.items.append({"prompt_ids": ids, "prompt": tokenizer.decode(ids, skip_special_tokens=False), "columns": columns})
        self.stats["prompts"] = len(self.items)
        if not self.items:
            counts = ", ".join(f"{k} {v}" for k, v in self.stats.items())
            limit = f" (max_prompt_length {max_prompt_length})" if max_prompt_length else ""
            raise UserError(f"{source}: no usable prompt{limit}: {counts}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _records(path_or_records: Any) -> tuple[str, Iterable[tuple[str, Any]]]:
    if isinstance(path_or_records, (list, tuple)):  # bare strings are prompts, as in the files
        return "prompts", ((f"record {i}", {"prompt": r} if isinstance(r, str) else r) for i, r in enumerate(path_or_records))
    from minigpt.data.loaders import iter_records

    return str(path_or_records), iter_records(path_or_records, strings_as="prompt")


def collate_prompts(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch of prompt items: `prompt_ids` (list of id lists), `prompt` (list of texts) and
    `columns` (dict of lists, one entry per prompt; a column missing from an item is None)."""
    names = sorted({k for it in items for k in it["columns"]})
    return {
        "prompt_ids": [list(it["prompt_ids"]) for it in items],
        "prompt": [it["prompt"] for it in items],
        "columns": {k: [it["columns"].get(k) for it in items] for k in names},
    }
