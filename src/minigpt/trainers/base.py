"""What the Python-API trainers (`DPOTrainer`, `GRPOTrainer`, `RLHFTrainer`) share: the device
and mixed precision of their forwards, the optimizer step (`minigpt.train.step.OptimizerStep`,
the one the training loop runs), and the stop / pad ids of sampling. (The CLI recipes train
through `minigpt.train.loop.Trainer`, which runs the same step.)"""

from __future__ import annotations

import contextlib

import torch

from minigpt.train.step import OptimizerStep, StepOutput
from minigpt.train.statistics import ReportsStatistics

#: `OptimizerStep` metrics that are not the objective's own.
STEP_KEYS = ("loss", "lr", "grad_norm")


class PolicyTrainer(ReportsStatistics):
    """Base of trainers that hold `self.policy` and a config with `precision` (fp32 or bf16)."""

    policy: torch.nn.Module
    config: object

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, empty: str = "error") -> OptimizerStep:
        """The shared optimizer step over `model` with this trainer's precision and clipping
        (`config.max_grad_norm`, 0 = none)."""
        return OptimizerStep(model, self.objective, optimizer, precision=self.config.precision, max_grad_norm=self.config.max_grad_norm, empty=empty)

    @staticmethod
    def objective_metrics(result: StepOutput) -> dict[str, float]:
        """The objective's metrics of a step (its sums per unit and its means), without the
        step's own `loss`, `lr` and `grad_norm`."""
        return {k: v for k, v in result.metrics.items() if k not in STEP_KEYS}

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
