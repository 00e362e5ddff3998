"""Inference: the fast generation engine (chat and serving build on it)."""

from minigpt.inference.engine import (
    GenerationEngine,
    GenerationOutput,
    apply_repetition_penalty,
    filter_logits,
    sample_next_token,
)

__all__ = [
    "GenerationEngine",
    "GenerationOutput",
    "apply_repetition_penalty",
    "filter_logits",
    "sample_next_token",
]
