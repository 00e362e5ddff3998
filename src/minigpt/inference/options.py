"""The sampling options that generation and online RL share (`--sampling.temperature 0.7 ...`).

Torch-free, so that building a command line never imports torch; the sampling math itself
is `minigpt.inference.sampling`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SamplingOptions:
    """How completions are sampled: length, temperature and the filters applied to the
    next-token distribution (top-k, nucleus, Holtzman et al. 2020, arXiv:1904.09751;
    repetition penalty, Keskar et al. 2019, arXiv:1909.05858). Each command sets its own
    defaults."""

    max_new_tokens: int = 256
    """Tokens generated per completion at most."""
    temperature: float = 1.0
    """Softmax temperature (0 = greedy where a command allows it)."""
    top_k: int = 0
    """Sample among the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens with this total probability (1.0 = off)."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already present (1.0 = off)."""

    def filters(self) -> dict[str, Any]:
        """`temperature`, `top_k`, `top_p`, `repetition_penalty` as keyword arguments of the
        generation engine."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "repetition_penalty": self.repetition_penalty}


__all__ = ["SamplingOptions"]
