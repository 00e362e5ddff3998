"""Tokenizer: byte-level BPE training, loading, ChatML chat template, byte accounting, and the
one chat renderer (messages -> ids + loss mask) shared by SFT, DPO and RL."""

from minigpt.tokenizer.bpe import (
    ANSWER_END,
    ANSWER_START,
    CHATML_TEMPLATE,
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    REASONING_TAGS,
    MASK_TOKEN,
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    load_tokenizer,
    token_byte_lengths,
    train_tokenizer,
)
from minigpt.tokenizer.chat import SkipRecord, normalize_messages, render_conversation, render_prompt

__all__ = [
    "ANSWER_END",
    "ANSWER_START",
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "IM_END",
    "IM_START",
    "PAD_TOKEN",
    "REASONING_TAGS",
    "MASK_TOKEN",
    "SPECIAL_TOKENS",
    "THINK_END",
    "THINK_START",
    "SkipRecord",
    "normalize_messages",
    "render_conversation",
    "render_prompt",
    "load_tokenizer",
    "token_byte_lengths",
    "train_tokenizer",
]
