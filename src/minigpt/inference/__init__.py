"""Inference: the fast generation engine, the chat session and the RL rollout engine built on it."""

from minigpt.inference.chat import ChatReply, ChatSession, ReasoningSplitter, split_reasoning

from minigpt.inference.engine import (
    GenerationEngine,
    GenerationOutput,
    apply_repetition_penalty,
    filter_logits,
    sample_next_token,
)
from minigpt.inference.rollout import Rollout, RolloutEngine, completion_logprobs
from minigpt.inference.sampling import SamplingOptions

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
    "Rollout",
    "RolloutEngine",
    "completion_logprobs",
    "SamplingOptions",
]
