"""What the Python-API trainers (`DPOTrainer`, `GRPOTrainer`, `RLHFTrainer`) share: the
device and mixed precision of their own optimizer steps, and the stop / pad ids of sampling.
(The CLI recipes train through `minigpt.train.loop.Trainer` instead.)"""

from __future__ import annotations

import contextlib

import torch


class PolicyTrainer:
    """Base of trainers that hold `self.policy` and a config with `precision` (fp32 or bf16)."""

    policy: torch.nn.Module
    config: object

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _autocast(self):
        """bf16 autocast on the policy's device when `config.precision == "bf16"`, else nothing."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self._device().type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def sampling_ids(policy: torch.nn.Module, tokenizer=None) -> tuple[int | list[int] | None, int]:
    """`(stop ids, pad id)` for sampling from `policy`: a chat tokenizer's `<|im_end|>` and EOS
    when a tokenizer is given, else the model config's EOS; the config's pad id (0 without one)."""
    cfg = getattr(policy, "config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if tokenizer is not None:
        from minigpt.tokenizer.chat import chat_eos_ids

        eos = chat_eos_ids(tokenizer)
    pad = getattr(cfg, "pad_token_id", None)
    return eos, 0 if pad is None else int(pad)
