"""The options of the fine-tuning commands that choose what trains: LoRA, other adapters and
mixture-of-experts freezing (`--lora.*`, `--adapter.*`, `--moe.*`).

Plain dataclasses with no torch import, so the command line is parsed without loading torch;
`minigpt.model.lora`, `minigpt.model.adapters` and `minigpt.model.moe` apply them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoraOptions:
    """LoRA settings of a fine-tuning command (`--lora.rank 8 --lora.alpha 16 ...`; LoRA: Hu et
    al. 2021, arXiv:2106.09685; DoRA: Liu et al. 2024, arXiv:2402.09353; QLoRA: Dettmers et al.
    2023, arXiv:2305.14314). Passed to `apply_lora` when `rank > 0`."""

    rank: int = 0
    """0 = train every weight; > 0 = train LoRA adapters of this rank only."""
    alpha: float = 16.0
    """Scaling numerator: the adapter's update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    targets: list[str] | None = None
    """Module names to adapt (default: every linear layer of the blocks)."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA) instead of plain LoRA."""
    qlora: str | None = None
    """4bit or 8bit base weights (QLoRA; needs bitsandbytes and CUDA)."""

    @property
    def enabled(self) -> bool:
        """Whether adapters are trained (rank > 0)."""
        return self.rank > 0


@dataclass
class AdapterOptions:
    """Adapter method of a fine-tuning command other than LoRA (`--adapter.method houlsby`)."""

    method: str | None = None
    """houlsby or pfeiffer (bottleneck adapters), ia3; None = off."""
    reduction_factor: int = 16
    """Bottleneck adapters: hidden_size / bottleneck width."""
    non_linearity: str = "relu"
    """Bottleneck adapters: relu, gelu, silu or tanh."""

    @property
    def enabled(self) -> bool:
        """Whether an adapter method is chosen."""
        return self.method is not None


@dataclass
class MoeOptions:
    """Mixture-of-experts fine-tuning options (`--moe.freeze_router true --moe.train_experts
    [0,3]`); only valid for a model with `num_local_experts > 0`."""

    freeze_router: bool = False
    """Keep every layer's router (`mlp.gate`) as it is."""
    train_experts: list[int] | None = None
    """Train only these expert indices (in every layer): every other parameter, the routers and
    attention included, is frozen. With LoRA, only the adapters inside these experts train."""

    @property
    def enabled(self) -> bool:
        """Whether any option is set."""
        return self.freeze_router or self.train_experts is not None


__all__ = ["AdapterOptions", "LoraOptions", "MoeOptions"]
