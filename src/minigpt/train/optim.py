"""The optimizers (AdamW, or Muon with AdamW) with their parameter groups, and the warmup +
cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch


def param_groups(
    model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False, lr: float | None = None
) -> list[dict]:
    """Split trainable parameters into decayed and not decayed groups.

    Matrices of linear layers decay; biases and norm gains (1-D) never do; the token
    embedding (and a tied LM head, the same tensor) decays only if `decay_embeddings`.
    Each parameter appears once even when tied.

    A submodule with a float attribute `lr_scale` (e.g. PPO's critic inside
    `minigpt.objectives.ppo.ActorCritic`) learns at `lr_scale` times the base rate: its parameters
    (those of the innermost such submodule) go to their own pair of groups carrying the key
    `lr_scale`, and `"lr": lr * lr_scale` when `lr` is given (the base groups then get no `lr`
    key, so the optimizer's default applies; a `LambdaLR` schedule scales every group's own
    initial rate). Without any `lr_scale` the result is the two groups above, unchanged.

    Returns:
        `[{"params", "weight_decay"[, "lr_scale", "lr"]}, ...]`: the base decayed and
        not-decayed groups first (always present, possibly empty), then per distinct scale its
        decayed and not-decayed groups (only non-empty ones).

    Raises:
        ValueError: an `lr_scale` that is not a positive number.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    scale_of: dict[int, float] = {}
    for name, module in model.named_modules():  # parents come before children: the innermost wins
        scale = getattr(module, "lr_scale", None)
        if scale is None:
            continue
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"lr_scale of submodule {name or '<root>'!r} must be a positive number, got {scale!r}")
        for p in module.parameters():
            scale_of[id(p)] = float(scale)
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decays = not (p.ndim < 2 or (id(p) in embeddings and not decay_embeddings))
        groups.setdefault((scale_of.get(id(p), 1.0), decays), []).append(p)
    out = []
    for (scale, decays), params in groups.items():
        if scale != 1.0 and not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if scale != 1.0:
            group["lr_scale"] = scale
            if lr is not None:
                group["lr"] = lr * scale
        out.append(group)
    return out


def muon_parameters(model: torch.nn.Module) -> set[int]:
    """Ids of the parameters Muon trains: trainable 2-D weights with both sides > 1 that are
    neither an input nor an output embedding (so the decoder blocks' attention and MLP
    matrices; not the token embedding, LM head, a reward model's 1-row score head, norms or
    biases, which AdamW keeps)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None and getattr(head, "weight", None) is not None:
        embeddings.add(id(head.weight))
    return {id(p) for p in model.parameters() if p.requires_grad and p.ndim == 2 and min(p.shape) > 1 and id(p) not in embeddings}


def newton_schulz(grad: torch.Tensor, coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthogonalise a `(A, B)` matrix: the quintic Newton-Schulz iteration of Muon (Jordan et
    al. 2024), `X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X` from `X = G / ‖G‖_F`, computed in `dtype` on the
    wide orientation. Returns approximately `U·S'·Vᵀ` with `G = U·S·Vᵀ` and `S'` near 1, in
    `dtype`, same shape as `grad`."""
    a, b, c = coefficients
    x = grad.to(dtype)
    wide = x.size(0) > x.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm ≤ Frobenius norm = 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` (same arguments, state and update) with the Newton-Schulz iteration in
    `ns_dtype`: torch's always runs it in bf16, which CPUs without native bf16 (AVX2) emulate
    about 100× slower, so that a Muon step there costs more than the whole forward and backward.

    Args:
        ns_dtype: None picks bf16 where bf16 is the fast path for the parameters' device
            (`minigpt.train.distributed.pick_precision`), fp32 elsewhere.
        Others: as `torch.optim.Muon` (Jordan et al. 2024; `adjust_lr_fn="match_rms_adamw"`:
            Liu et al. 2025, arXiv:2502.16982).
    """

    def __init__(self, params, ns_dtype: torch.dtype | None = None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    def _dtype_for(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is None:  # decided once: the parameters of one optimizer share a device
            from minigpt.train.distributed import pick_precision

            self.ns_dtype = torch.bfloat16 if pick_precision("auto", device) == "bf16" else torch.float32
        return self.ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon update of every parameter with a gradient: momentum `B ← μB + (1−μ)G`
        (torch's `lerp` form), Nesterov `U = G + μ(B − G)`, `O = newton_schulz(U)`, decoupled
        weight decay `θ ← θ(1 − lr·λ)`, then `θ ← θ − lr·s·O` with `s = 0.2·√max(A, B)`
        (`match_rms_adamw`) or `√max(1, A/B)`. Returns the closure's loss (None without one)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self._dtype_for(p.device))
                a, b = p.shape[:2]
                scale = 0.2 * math.sqrt(max(a, b)) if group["adjust_lr_fn"] == "match_rms_adamw" else math.sqrt(max(1, a / b))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * scale)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """`Muon` on the hidden matrices and `torch.optim.AdamW` on the rest, stepped
    together as one optimizer (Muon: Jordan et al. 2024, "Muon: an optimizer for hidden layers
    in neural networks"; orthogonalised by 5 Newton-Schulz iterations; its update rescaled to
    match AdamW's RMS, Liu et al. 2025, arXiv:2502.16982, so both take the same learning rate).

    `param_groups` are the two inner optimizers' own group dicts (Muon's first), so a
    `LambdaLR` schedule, gradient clipping and loss scaling act on both. `state_dict()` is
    `{"muon": ..., "adamw": ...}`.

    Args:
        muon_groups / adamw_groups: parameter groups (`{"params", "weight_decay"[, "lr"]}`).
        lr: the learning rate of both.
        betas: AdamW's betas.
        momentum: Muon's Nesterov momentum.
        fused: AdamW's fused kernel.
        ns_dtype: dtype of Muon's Newton-Schulz iteration (None: see `Muon`).
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], lr: float, betas: tuple[float, float],
                 momentum: float = 0.95, fused: bool = False, ns_dtype: torch.dtype | None = None) -> None:
        self.muon = Muon(muon_groups, lr=lr, momentum=momentum, nesterov=True, adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype)
        # Every parameter may be a hidden matrix (LoRA factors): then there is no AdamW part.
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, fused=fused) if adamw_groups else None
        super().__init__([g for opt in self._inner() for g in opt.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        """Step Muon, then AdamW, on the gradients already in place; returns the closure's loss
        (None without one)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of both parts."""
        self.muon.zero_grad(set_to_none)
        if self.adamw is not None:
            self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        """`{"muon": Muon's state, "adamw": AdamW's state or None}` (momentum buffers, moments)."""
        return {"muon": self.muon.state_dict(), "adamw": None if self.adamw is None else self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore both parts from `state_dict()`'s form.

        Raises KeyError / ValueError for a state that is not this optimizer's (e.g. a plain
        AdamW checkpoint): the loop turns those into "unusable trainer state"."""
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        # Loading gives the inner optimizers new group dicts: share them again, or a schedule
        # would set learning rates that no inner optimizer reads.
        self.param_groups = [g for opt in self._inner() for g in opt.param_groups]

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [self.muon] + ([self.adamw] if self.adamw is not None else [])


def make_optimizer(model: torch.nn.Module, train, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimizer a `TrainConfig` describes, over `model`'s trainable parameters: AdamW with
    learning rate `train.lr`, betas `(train.beta1, train.beta2)`, decoupled weight decay
    `train.weight_decay` on matrices only (`param_groups`; the embedding too with
    `train.decay_embeddings`), groups with an `lr_scale` at their scaled rate (Loshchilov &
    Hutter 2019); or, with `train.optimizer == "muon"`, `MuonWithAdamW`: the matrices of
    `muon_parameters` under Muon (same weight decay), the rest under that AdamW. The training
    loop and the Python-API trainers build their optimizer here.

    Args:
        fused: torch's fused AdamW kernel (None: on CUDA and CPU parameters).
    """
    if fused is None:
        fused = next(model.parameters()).device.type in ("cuda", "cpu")
    groups = param_groups(model, train.weight_decay, train.decay_embeddings, lr=train.lr)
    betas = (train.beta1, train.beta2)
    if train.optimizer != "muon":
        return torch.optim.AdamW(groups, lr=train.lr, betas=betas, fused=fused)
    hidden = muon_parameters(model)
    muon_groups = [{**g, "params": [p for p in g["params"] if id(p) in hidden]} for g in groups]
    adamw_groups = [{**g, "params": [p for p in g["params"] if id(p) not in hidden]} for g in groups]
    muon_groups = [g for g in muon_groups if g["params"]]
    adamw_groups = [g for g in adamw_groups if g["params"]]
    if not muon_groups:  # nothing Muon would train: AdamW alone, as asked for the rest
        return torch.optim.AdamW(groups, lr=train.lr, betas=betas, fused=fused)
    return MuonWithAdamW(muon_groups, adamw_groups, train.lr, betas, train.muon_momentum, fused)


def warmup_cosine(warmup_steps: int, total_steps: Callable[[], int], min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: linear warmup from 0 over `warmup_steps`, then cosine decay
    to `min_lr_ratio` at `total_steps()` (a callable, so a time-budgeted run can fix it late).

    The warmup is capped at 10 % of the run so short runs still decay (Loshchilov & Hutter
    2017, SGDR: cosine annealing).
    """

    def factor(step: int) -> float:
        total = max(1, total_steps())
        warm = min(warmup_steps, max(1, total // 10))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_stable_decay(warmup_steps: int, total_steps: Callable[[], int], min_lr_ratio: float,
                        decay_fraction: float = 0.2) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: linear warmup over `warmup_steps` (capped at 10 % of the
    run, as `warmup_cosine`), then the peak rate held, then a linear decay to `min_lr_ratio`
    over the last `decay_fraction` of `total_steps()` (warmup-stable-decay, WSD: Hu et al.
    2024, MiniCPM, arXiv:2404.06395; Hägele et al. 2024, arXiv:2405.18392)."""

    def factor(step: int) -> float:
        total = max(1, total_steps())
        warm = min(warmup_steps, max(1, total // 10))
        if step < warm:
            return (step + 1) / warm
        decay = max(1, round(total * decay_fraction))
        start = max(warm, total - decay)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return factor


def lr_schedule(train, total_steps: Callable[[], int]) -> Callable[[int], float]:
    """The multiplier `train.schedule` names (`cosine`: `warmup_cosine`; `wsd`:
    `warmup_stable_decay` with `train.decay_fraction`)."""
    if train.schedule == "wsd":
        return warmup_stable_decay(train.warmup_steps, total_steps, train.min_lr_ratio, train.decay_fraction)
    return warmup_cosine(train.warmup_steps, total_steps, train.min_lr_ratio)

