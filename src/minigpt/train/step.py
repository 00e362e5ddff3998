"""One optimizer update of an objective over a list of micro-batches: the step that the training
loop (`minigpt.train.loop.Trainer`) and the Python-API trainers (`DPOTrainer`, `GRPOTrainer`,
`RLHFTrainer`, `RewardModelTrainer`) share, so that accumulation, mixed precision, the NaN
check and gradient clipping behave the same wherever a model is trained.

An update over micro-batches `b_1 … b_k` (on every data-parallel rank) minimises

    L = Σ_ranks Σ_i loss_sum(b_i) / Σ_ranks Σ_i num_units(b_i)

the mean loss over every unit (token, pair, completion) of the update, so `k` micro-batches of
one give the same gradient as one batch of `k` (exact gradient accumulation).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from minigpt.errors import UserError
from minigpt.train.distributed import all_reduce_sum
from minigpt.train.errors import TrainingDivergedError
from minigpt.train.objective import Objective





PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(precision: str, device: torch.device | str):
    """The autocast context of `precision` on `device`: none for fp32, bf16 or fp16 autocast
    otherwise.

    Raises:
        UserError: `precision` is not fp32, bf16 or fp16.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor moved to `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def real_tokens(batch: dict[str, Any]) -> int:
    """Tokens a micro-batch's forwards read: for every `input_ids*` tensor, the 1s of its
    `attention_mask*` (same suffix) when the batch has one, else all its elements (packed
    pretraining and SFT blocks have no padding)."""
    total = 0
    for key, ids in batch.items():
        if not (key.startswith("input_ids") and isinstance(ids, torch.Tensor)):
            continue
        mask = batch.get("attention_mask" + key[len("input_ids"):])
        total += int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.shape == ids.shape else int(ids.numel())
    return total


@dataclass
class StepOutput:
    """What one `OptimizerStep` call did.

    Attributes:
        loss: the update's mean loss over all its units (all ranks), a float.
        lr: the first parameter group's learning rate used by the update.
        grad_norm: global L2 norm of the gradients before clipping (0 when skipped).
        num_tokens: real tokens of this rank's micro-batches (`real_tokens`: the tokens the
            objective's forwards read, padding left out).
        num_units: units of this rank's micro-batches.
        metrics: `loss`, `lr`, `grad_norm`, then `bpb` when the objective reports `nats` and
            `bytes`, every other objective sum divided by this rank's units, and the mean of
            every already-averaged objective metric over the micro-batches that report it.
        skipped: True when the micro-batches held no unit and `empty="skip"` left the model as
            it was.
    """

    loss: float
    lr: float
    grad_norm: float
    num_tokens: int = 0
    num_units: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


class OptimizerStep:
    """Forward, backward and one optimizer update of `objective` over a list of micro-batches.

    Each call: counts the units of the update (all-reduced across ranks), runs every
    micro-batch under autocast with gradient synchronisation only on the last one (DDP's
    `no_sync`), backpropagates `loss_sum · world_size / units` (DDP averages over ranks),
    refuses a NaN/inf loss before touching the weights, then unscales (fp16), clips the global
    gradient norm, steps the optimizer, the scaler and the schedule, zeroes the gradients, and
    calls the objective's `after_step(model)` if it has one (MoCo's momentum encoder).

    Args:
        model: the module the objective forwards (a DDP wrapper when data-parallel).
        objective: `minigpt.train.objective.Objective` (`num_units`, `compute_loss`).
        optimizer: any torch optimizer over the trainable parameters.
        scheduler: stepped after every update (None: constant learning rate).
        precision: fp32, bf16 or fp16 (autocast; fp16 also needs `scaler`).
        device: where micro-batches are moved (None: the device of the model's first parameter
            at each call, so a model moved after this step was built is followed).
        max_grad_norm: clip the global gradient norm to this; 0 or None only measures it.
        scaler: a `torch.amp.GradScaler` (None: no loss scaling).
        world_size: data-parallel ranks (the gradient scale and the all-reduces).
        empty: what an update whose micro-batches hold no unit does: "error" (a UserError, the
            loop's choice: a training batch without supervised tokens is a data bug) or "skip"
            (no update, `StepOutput.skipped`; online RL, where every completion of a batch can
            be masked out).
        on_batch: called after each micro-batch's backward with `{"loss": its mean loss}`.

    Raises (from `__call__`):
        UserError: no unit and `empty="error"`.
        TrainingDivergedError: the update's loss is NaN or infinite (weights untouched).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        precision: str = "fp32",
        device: torch.device | str | None = None,
        max_grad_norm: float | None = 1.0,
        scaler: torch.amp.GradScaler | None = None,
        world_size: int = 1,
        empty: str = "error",
        on_batch: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        if empty not in ("error", "skip"):
            raise UserError(f"OptimizerStep: empty must be 'error' or 'skip', not {empty!r}")
        autocast(precision, "cpu")  # validates the name
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self._device = torch.device(device) if device is not None else None
        self.max_grad_norm = max_grad_norm
        self.scaler = scaler
        self.world_size = world_size
        self.empty = empty
        self.on_batch = on_batch

    @property
    def device(self) -> torch.device:
        """Where micro-batches go."""
        return self._device if self._device is not None else next(self.model.parameters()).device

    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (what the gradient norm is taken over), in the
        model's own order, then any the model does not hold. The order matters to the last bit:
        the global norm sums per-tensor norms in this order."""
        held = {id(p): p for group in self.optimizer.param_groups for p in group["params"]}
        ordered = [p for p in self.model.parameters() if id(p) in held]
        seen = {id(p) for p in ordered}
        return ordered + [p for k, p in held.items() if k not in seen]

    def __call__(self, micro_batches: Sequence[dict[str, Any]]) -> StepOutput:
        """One update over `micro_batches` (see the class docstring)."""
        if not micro_batches:
            raise UserError("OptimizerStep needs at least one micro-batch")
        device = self.device
        units = all_reduce_sum([float(sum(self.objective.num_units(b) for b in micro_batches))], device)[0]
        lr = float(self.optimizer.param_groups[0]["lr"])
        if units <= 0:
            if self.empty == "error":
                raise UserError(f"a training batch has no {getattr(self.objective, 'unit_name', 'units')}: nothing in it carries loss")
            return StepOutput(loss=0.0, lr=lr, grad_norm=0.0, skipped=True)
        model = self.model
        loss_sum, n_tokens, local_units = 0.0, 0, 0
        sums: dict[str, float] = {}
        means: dict[str, list[float]] = {}
        for i, batch in enumerate(micro_batches):
            batch = to_device(batch, device)
            sync = self.world_size == 1 or i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else _no_sync(model):
                with autocast(self.precision, device):
                    out = self.objective.compute_loss(model, batch)
                # DDP averages gradients over ranks, so scale by world_size / global units to
                # get the gradient of the mean over every unit of the global update.
                loss = out.loss_sum * (self.world_size / units)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            batch_loss = float(out.loss_sum.detach())
            loss_sum += batch_loss
            local_units += out.num_units
            n_tokens += real_tokens(batch)
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            for k, v in out.metrics.items():
                means.setdefault(k, []).append(float(v))
            if self.on_batch is not None:
                self.on_batch({"loss": batch_loss / max(out.num_units, 1)})
        step_loss = all_reduce_sum([loss_sum], device)[0] / units
        if not math.isfinite(step_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(f"loss is {step_loss}; stopped before the update", loss=step_loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.max_grad_norm if self.max_grad_norm and self.max_grad_norm > 0 else float("inf")  # inf: measure only
        params = [p for p in self.parameters() if p.grad is not None]
        grad_norm = 0.0
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a sharded DTensor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        after_step = getattr(self.objective, "after_step", None)
        if after_step is not None:  # e.g. MoCo's momentum update of its key encoder
            after_step(getattr(model, "module", model))
        metrics = {"loss": step_loss, "lr": lr, "grad_norm": grad_norm}
        if sums.get("bytes"):  # this rank's share is a fair sample of the update
            metrics["bpb"] = sums["nats"] / (math.log(2) * sums["bytes"])
        for k, v in sums.items():  # the objective's other sums (DPO accuracy, margins …), per unit
            if k not in ("nats", "bytes"):
                metrics[k] = v / max(local_units, 1)
        for k, vs in means.items():  # already means (an RL rollout's reward …)
            metrics[k] = sum(vs) / len(vs)
        return StepOutput(step_loss, lr, grad_norm, n_tokens, local_units, metrics)


def _no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce for this micro-batch: DDP's `no_sync`, or FSDP2's switch."""
    if hasattr(model, "no_sync"):
        return model.no_sync()
    from minigpt.train.fsdp import no_gradient_sync

    return no_gradient_sync(model)


__all__ = ["OptimizerStep", "PRECISIONS", "StepOutput", "TrainingDivergedError", "autocast", "real_tokens", "to_device"]
