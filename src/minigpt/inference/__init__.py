"""Inference: the fast generation engine, the chat session and the RL rollout engine built on it.

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "ChatReply": "minigpt.inference.chat",
    "ChatSession": "minigpt.inference.chat",
    "ReasoningSplitter": "minigpt.inference.chat",
    "split_reasoning": "minigpt.inference.chat",
    "GenerationEngine": "minigpt.inference.engine",
    "GenerationOutput": "minigpt.inference.engine",
    "apply_repetition_penalty": "minigpt.inference.sampling",
    "filter_logits": "minigpt.inference.sampling",
    "sample_next_token": "minigpt.inference.sampling",
    "Rollout": "minigpt.inference.rollout",
    "RolloutEngine": "minigpt.inference.rollout",
    "completion_logprobs": "minigpt.inference.rollout",
    "SamplingOptions": "minigpt.inference.options",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
