"""Tokenizer: byte-level BPE training, loading, ChatML chat template, byte accounting, and the
one chat renderer (messages -> ids + loss mask) shared by SFT, DPO and RL.

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "ANSWER_END": "minigpt.tokenizer.special",
    "ANSWER_START": "minigpt.tokenizer.special",
    "CHATML_TEMPLATE": "minigpt.tokenizer.bpe",
    "EOS_TOKEN": "minigpt.tokenizer.bpe",
    "IM_END": "minigpt.tokenizer.bpe",
    "IM_START": "minigpt.tokenizer.bpe",
    "PAD_TOKEN": "minigpt.tokenizer.bpe",
    "REASONING_TAGS": "minigpt.tokenizer.bpe",
    "MASK_TOKEN": "minigpt.tokenizer.bpe",
    "SPECIAL_TOKENS": "minigpt.tokenizer.bpe",
    "THINK_END": "minigpt.tokenizer.special",
    "THINK_START": "minigpt.tokenizer.special",
    "load_tokenizer": "minigpt.tokenizer.bpe",
    "token_byte_lengths": "minigpt.tokenizer.bpe",
    "train_tokenizer": "minigpt.tokenizer.bpe",
    "SkipRecord": "minigpt.tokenizer.chat",
    "normalize_messages": "minigpt.tokenizer.chat",
    "render_conversation": "minigpt.tokenizer.chat",
    "render_prompt": "minigpt.tokenizer.chat",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
