"""Continual learning as options of an existing objective: EWC and KL to the base model.

`ContinualObjective` wraps the objective of a fine-tuning stage (SFT, pretraining) and adds,
in training only, the elastic-weight-consolidation penalty and/or the KL divergence to the
frozen starting model (`minigpt.losses.continual`). The training loop does not change: the
penalties are added to the summed loss as `penalty × units`, so after the loop's division by
the step's units each counts once per optimizer step (EWC) or once per supervised token (KL).

The diagonal Fisher information EWC needs is estimated by `estimate_fisher` on the previous
task's data and saved beside the model it belongs to (`FISHER_FILE`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minigpt.errors import UserError
from minigpt.losses.continual import ewc_penalty, kl_to_reference
from minigpt.objectives.sft import model_forward
from minigpt.train.objective import LossOutput

#: The diagonal Fisher of a model, saved in its directory (safetensors, parameter names as keys).
FISHER_FILE = "ewc_fisher.safetensors"


def _row(batch: dict[str, Any], r: int) -> dict[str, Any]:
    """Row `r` of a batch as a batch of one (tensors sliced on their first dimension)."""
    return {k: v[r : r + 1] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in batch.items()}


def estimate_fisher(model: nn.Module, objective: Any, batches: Iterable[dict[str, Any]], max_rows: int = 64) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher information of `model` on the previous task's data.

    `F_i = mean over sequences s of (∂ L_s / ∂θ_i)²`, with `L_s` the objective's mean loss per
    unit (token) on sequence s, gradients taken one sequence at a time with dropout off
    (Kirkpatrick et al. 2017, §2.1; the empirical Fisher, whose labels are the data's).

    Args:
        model: the model after the previous task; its parameters' `requires_grad` flags and
            train/eval mode are restored afterwards.
        objective: the objective whose loss defines L (e.g. `SFTObjective`).
        batches: collated batches of the previous task's data.
        max_rows: at most this many sequences (rows) are used.

    Returns:
        `{parameter name: (same shape) float32 tensor}` for every floating-point parameter.

    Raises:
        UserError: no row with a supervised unit.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    flags = [p.requires_grad for _, p in params]
    was_training = model.training
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    rows = 0
    try:
        for _, p in params:
            p.requires_grad_(True)
        model.eval()
        for batch in batches:
            first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
            for r in range(first.shape[0]):
                if rows >= max_rows:
                    break
                out = objective.compute_loss(model, _row(batch, r))
                if not out.num_units:
                    continue
                grads = torch.autograd.grad(out.loss_sum / out.num_units, [p for _, p in params], allow_unused=True)
                for (n, _), g in zip(params, grads):
                    if g is not None:
                        fisher[n] += g.detach().float().pow(2)
                rows += 1
            if rows >= max_rows:
                break
    finally:
        for (_, p), flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if rows == 0:
        raise UserError("EWC: no sequence with a supervised token to estimate the Fisher information from")
    return {n: f / rows for n, f in fisher.items()}


def save_fisher(directory: str | os.PathLike, fisher: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `fisher` as `directory/FISHER_FILE` atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{FISHER_FILE}.", dir=directory)
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in fisher.items()}, tmp, metadata=metadata or {})
        os.replace(tmp, directory / FISHER_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return directory / FISHER_FILE


def load_fisher(directory: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The Fisher saved beside the model in `directory`, or None when there is none."""
    from safetensors.torch import load_file

    path = Path(directory) / FISHER_FILE
    return load_file(path) if path.is_file() else None


class ContinualObjective:
    """Wrap `inner` and add forgetting penalties while training.

    Args:
        inner: the stage's objective (its `LossOutput` must carry `logits` for `kl_coef`).
        model: the model about to be trained, at its starting weights (θ* of EWC).
        fisher: `{parameter name: F}` of the previous task (names as in
            `model.named_parameters()`); parameters without an entry, or frozen ones, get no
            EWC term. None or `ewc_lambda` 0: no EWC.
        ewc_lambda: λ of the EWC penalty.
        reference: the frozen base model for the KL penalty (a copy made before training, or
            a callable context manager that switches LoRA adapters off: see `kl_context`).
        kl_coef: weight of Σ_t KL(p_θ ‖ p_base) per supervised token; 0 = off.
        kl_context: optional zero-argument callable returning a context manager under which
            `reference` (then `model` itself) computes the base model's logits.

    Metrics: `ewc_penalty` (the penalty's value) and `kl_to_base` (nats per supervised token).

    Raises:
        UserError: EWC asked for but no trainable parameter has a Fisher entry.
    """

    unit_name = "supervised tokens (all targets are -100)"

    def __init__(
        self,
        inner: Any,
        model: nn.Module,
        fisher: dict[str, torch.Tensor] | None = None,
        ewc_lambda: float = 0.0,
        reference: nn.Module | None = None,
        kl_coef: float = 0.0,
        kl_context: Any = None,
    ) -> None:
        self.inner = inner
        self.ewc_lambda = float(ewc_lambda)
        self.kl_coef = float(kl_coef)
        self.reference = reference
        self.kl_context = kl_context
        self._ewc: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if fisher is not None and self.ewc_lambda > 0:
            for name, p in model.named_parameters():
                key = name if name in fisher else name.replace(".base_layer.", ".")  # LoRA-wrapped linears
                if p.requires_grad and key in fisher and fisher[key].shape == p.shape:
                    self._ewc.append((p, p.detach().clone(), fisher[key].to(p.device)))
            if not self._ewc:
                raise UserError("EWC: none of the trainable parameters has an entry in the Fisher information")
        if self.kl_coef > 0 and reference is None:
            raise UserError("KL to the base model needs the base model")

    def __getattr__(self, name: str) -> Any:
        """Anything else (`token_bytes`, `state_dict` …) is the wrapped objective's."""
        inner = self.__dict__.get("inner")
        if inner is None:  # during copy/unpickling, before __init__ ran
            raise AttributeError(name)
        return getattr(inner, name)

    def num_units(self, batch: dict[str, Any]) -> Any:
        """The wrapped objective's units."""
        return self.inner.num_units(batch)

    def compute_loss(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        """The wrapped loss plus, in training, `ewc_penalty · units` and `kl_coef · Σ KL`."""
        out = self.inner.compute_loss(model, batch)
        if not model.training:
            return out
        if self._ewc:
            params, anchors, fishers = zip(*self._ewc)
            penalty = ewc_penalty(params, anchors, fishers, self.ewc_lambda)
            out.loss_sum = out.loss_sum + penalty * out.num_units
            out.metrics["ewc_penalty"] = float(penalty.detach())
        if self.kl_coef > 0:
            if out.logits is None:
                raise UserError("KL to the base model: this objective does not expose its logits")
            import contextlib

            with torch.no_grad(), (self.kl_context() if self.kl_context else contextlib.nullcontext()):
                ref_logits = model_forward(self.reference, batch).logits[:, -out.logits.shape[1] :]
            kl = kl_to_reference(out.logits, ref_logits, batch["targets"])
            out.loss_sum = out.loss_sum + self.kl_coef * kl
            out.metrics["kl_to_base"] = float(kl.detach()) / max(float(out.num_units), 1.0)
        return out
