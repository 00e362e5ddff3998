"""Typed settings of the training loop. Field docstrings become `minigpt <stage> --help`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from minigpt.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    """How to optimise: the same fields for every stage (pretrain, SFT, DPO, RL …)."""

    max_steps: int = 1000
    """Optimizer steps to run. 0 with `max_time` set: pick the count that fits the time budget
    from the measured step speed, refitted as the run goes (the schedule decays over that
    count)."""
    max_time: float | None = None
    """Wall-clock budget in seconds for the optimisation steps (evaluation included); training
    stops at the first step that ends past it. None: no limit."""
    epochs: float | None = None
    """Passes over the training data; when set, overrides `max_steps`."""
    batch_size: int = 16
    """Sequences per micro-batch on each device."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size × grad_accum × devices)."""
    optimizer: str = "adamw"
    """adamw, or muon: Muon (orthogonalised momentum, Jordan et al. 2024) on the hidden weight
    matrices of the decoder blocks, its update scaled to AdamW's RMS (Liu et al. 2025,
    arXiv:2502.16982) so one `lr` serves both, and AdamW on embeddings, head, norms and biases."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum (with `optimizer: muon`)."""
    lr: float = 3e-4
    """Peak learning rate after warmup."""
    min_lr_ratio: float = 0.1
    """The schedule's decay ends at lr × min_lr_ratio."""
    schedule: str = "cosine"
    """cosine (warmup, then cosine decay over the run) or wsd (warmup, the peak rate held, then
    a linear decay over the last `decay_fraction` of the run)."""
    decay_fraction: float = 0.2
    """With `schedule: wsd`: the share of the run spent decaying."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to `lr` (capped at 10 % of the run when the run is shorter)."""
    seq_len_warmup_steps: int = 0
    """Pretraining only: over the first N steps the sequence length grows from block/8 to the
    block in powers of two (a quarter of N at each of block/8, /4, /2, then the block on), each
    block cut into shorter rows so the tokens per step stay the same (sequence-length warmup,
    Li et al., 2022, arXiv:2108.06084). Blocks not divisible by 8 skip the lengths that do not
    divide them. 0 = off."""
    batch_size_warmup_steps: int = 0
    """Pretraining only: over the first N steps the batch grows linearly from a quarter of
    `batch_size` rows to all of them; the rows left out of a drawn batch are skipped, not
    deferred (batch-size warmup, as GPT-3 ramped its batch, Brown et al., 2020). 0 = off."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices; norms and biases never decay."""
    decay_embeddings: bool = False
    """Also apply weight decay to the token embedding (and a tied LM head)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    precision: str = "auto"
    """auto (bf16 where it is the fast path: GPUs, MPS, x86 CPUs with AVX-512; fp32 elsewhere,
    e.g. AVX2-only CPUs, where bf16 matmuls are emulated: 13× slower per training step,
    benchmarks/bench_precision.py), bf16 (autocast, fp32 master weights), fp16 (CUDA only, with
    loss scaling) or fp32."""
    compile: bool = False
    """Wrap the model in torch.compile (first steps are slower while it compiles)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: keep only each decoder block's input during the forward and
    recompute the block in backward (less memory, about a third more compute)."""
    fsdp: bool = False
    """Under torchrun: shard parameters, gradients and optimizer state over the ranks (FSDP2,
    fully_shard per decoder layer) instead of replicating them (DDP); checkpoints are then
    sharded (torch.distributed.checkpoint). Ignored in a single process."""
    device: str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps."""
    seed: int = 1337
    """Seed for initialisation, data order and dropout."""
    eval_interval: int = 200
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batches: int = 20
    """Validation micro-batches per evaluation (0 = the whole split)."""
    save_interval: int = 500
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep_last: int = 2
    """Checkpoints to keep; older ones are deleted after a newer one is safely written."""
    log_interval: int = 10
    """Write training metrics every this many steps."""
    progress: bool = True
    """Show a progress bar (loss, lr, tokens/s, ETA)."""
    tensorboard: bool = True
    """Also write metrics for TensorBoard under OUT/tensorboard."""

    def __post_init__(self) -> None:
        """Refuse settings that would crash later or silently train something else.

        Raises:
            UserError: naming the first bad field (`train.<field>`) and its allowed range.
        """

        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise UserError(f"train.{field}: must be {rule}, got {getattr(self, field)!r}")

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(integer(self.max_steps) and self.max_steps >= 0, "max_steps", "an integer ≥ 0")
        need(self.max_time is None or (number(self.max_time) and self.max_time > 0), "max_time", "None or > 0 seconds")
        need(self.epochs is None or (number(self.epochs) and self.epochs > 0), "epochs", "None or > 0")
        need(integer(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer ≥ 1")
        need(integer(self.grad_accum) and self.grad_accum >= 1, "grad_accum", "an integer ≥ 1")
        need(number(self.lr) and self.lr > 0, "lr", "a number > 0 (with 0 the weights would never change)")
        need(number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(integer(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "an integer ≥ 0")
        for field in ("seq_len_warmup_steps", "batch_size_warmup_steps"):
            need(integer(getattr(self, field)) and getattr(self, field) >= 0, field, "an integer ≥ 0 (0 = off)")
        need(number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number ≥ 0")
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS))
        need(self.schedule in SCHEDULES, "schedule", " or ".join(SCHEDULES))
        need(number(self.decay_fraction) and 0 < self.decay_fraction <= 1, "decay_fraction", "in (0, 1]")
        need(number(self.muon_momentum) and 0 <= self.muon_momentum < 1, "muon_momentum", "in [0, 1)")
        need(number(self.beta1) and 0 <= self.beta1 < 1, "beta1", "in [0, 1)")
        need(number(self.beta2) and 0 <= self.beta2 < 1, "beta2", "in [0, 1)")
        need(number(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a number ≥ 0 (0 disables clipping)")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        for field in ("eval_interval", "eval_batches", "save_interval", "keep_last"):
            need(integer(getattr(self, field)) and getattr(self, field) >= 0, field, "an integer ≥ 0")
        need(integer(self.log_interval) and self.log_interval >= 1, "log_interval", "an integer ≥ 1")
        need(integer(self.seed) and -(2**63) <= self.seed < 2**63, "seed", "an integer in [-2**63, 2**63)")
