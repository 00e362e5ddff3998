"""What the Python-API trainers (`DPOTrainer`, `GRPOTrainer`, `RLHFTrainer`) share: the device
and mixed precision of their forwards, the optimizer step (`minigpt.train.step.OptimizerStep`,
the one the training loop runs), and the stop / pad ids of sampling. (The CLI recipes train
through `minigpt.train.loop.Trainer`, which runs the same step.)"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Mapping

import torch

from minigpt.errors import UserError
from minigpt.train.step import OptimizerStep, StepOutput
from minigpt.train.statistics import ReportsStatistics

#: `OptimizerStep` metrics that are not the objective's own.
STEP_KEYS = ("loss", "lr", "grad_norm")


class PolicyTrainer(ReportsStatistics):
    """Base of the trainers that hold `self.policy`, `self.objective` and `precision` (fp32 or
    bf16: the autocast of their forwards and of sampling), set by the subclass from its
    `TrainConfig`."""

    policy: torch.nn.Module
    objective: object
    precision: str = "fp32"

    def device(self) -> torch.device:
        """Where the policy's parameters are."""
        return next(self.policy.parameters()).device

    @staticmethod
    def objective_metrics(result: StepOutput) -> dict[str, float]:
        """The objective's metrics of a step (its sums per unit and its means), without the
        step's own `loss`, `lr` and `grad_norm`."""
        return {k: v for k, v in result.metrics.items() if k not in STEP_KEYS}

    def autocast(self):
        """bf16 autocast on the policy's device when `precision == "bf16"`, else nothing."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device().type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def optimizer_step_for(
    model: torch.nn.Module,
    objective: object,
    train: Any,
    precision: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    empty: str = "error",
) -> OptimizerStep:
    """The training loop's optimizer step over `model` as a `TrainConfig` describes it: the
    optimizer `make_optimizer(model, train)` builds (AdamW, or Muon with AdamW) unless an
    `optimizer` is given, `train.grad_clip`, and
    `train.precision` resolved for the model's device (or `precision` when the caller resolved
    it already). The Python-API trainers all build their update here; its `.optimizer` and
    `.precision` are the ones used.

    Raises:
        UserError: an unusable precision for the device (`pick_precision`), or `empty` not
            "error" / "skip".
    """
    from minigpt.train.distributed import pick_precision
    from minigpt.train.optim import make_optimizer

    if precision is None:
        precision = pick_precision(train.precision, next(model.parameters()).device)
    optimizer = optimizer if optimizer is not None else make_optimizer(model, train)
    return OptimizerStep(model, objective, optimizer, precision=precision, max_grad_norm=train.grad_clip, empty=empty)


def as_options(value: Any, cls: type, default: Any, name: str) -> Any:
    """An options dataclass from what a Python-API trainer was given: `default` for None, the
    object itself, or a dict of fields applied over `default`.

    Raises:
        UserError: a dict with a field `cls` does not have (naming `name.field`), or another type.
    """
    if value is None:
        return default
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"unknown {name} field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(default, **value)
    raise UserError(f"{name} must be a {cls.__name__} or a dict of its fields, not {type(value).__name__}")


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
