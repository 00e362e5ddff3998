"""The special tokens of every minigpt tokenizer (plain strings, no tokenizer library needed)."""

from __future__ import annotations

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

#: The masked-LM mask token. Tokenizers trained for an encoder (`train_tokenizer(mask_token=True)`,
#: `minigpt mlm`) hold it at id 8, right after :data:`SPECIAL_TOKENS`, whose ids 0..7 never move.
MASK_TOKEN = "<|mask|>"

#: All special tokens; a token's position in this list is its id.
SPECIAL_TOKENS = [
    EOS_TOKEN,
    PAD_TOKEN,
    IM_START,
    IM_END,
    THINK_START,
    THINK_END,
    ANSWER_START,
    ANSWER_END,
]

#: The tags a reasoning model writes around its thinking and its final answer.
REASONING_TAGS = [THINK_START, THINK_END, ANSWER_START, ANSWER_END]
