"""Inference: the fast generation engine and the chat session built on it."""

from minigpt.inference.chat import ChatReply, ChatSession, ReasoningSplitter, split_reasoning

from minigpt.inference.engine import (
    GenerationEngine,
    GenerationOutput,
    apply_repetition_penalty,
    filter_logits,
    sample_next_token,
)

__all__ = [
    "ChatReply",
    "ChatSession",
    "ReasoningSplitter",
    "split_reasoning",
    "GenerationEngine",
    "GenerationOutput",
    "apply_repetition_penalty",
    "filter_logits",
    "sample_next_token",
]
