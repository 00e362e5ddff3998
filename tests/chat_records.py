"""Helpers of the preference-data tests (`tests/data/test_preference.py`, `test_kto.py`): a tiny
chat tokenizer, the independent reference rendering, and JSONL files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from minigpt.tokenizer import train_tokenizer

TEXTS = [
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "The user asks a question and the assistant answers it politely, or rudely.",
    "Numbers 12 and 345 and a list: one, two, three. Thanks, goodbye!",
]


def tiny_chat_tokenizer():
    """A 300-token byte-level BPE with the chat specials, trained on `TEXTS`."""
    return train_tokenizer([f"{t} {i}" for i in range(10) for t in TEXTS], vocab_size=300)


def render(tok, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    """Independent reference: the tokenizer's own chat template, tokenized by transformers."""
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False)
    return list(ids)


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    """`records` as JSON lines at `path` (gzip-compressed with `gz`); returns `path`."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
