"""The options that choose the model and what of it trains: the model to build (`--model.*`,
`ModelConfig`), LoRA, other adapters and mixture-of-experts freezing (`--lora.*`,
`--adapter.*`, `--moe.*`).

Plain dataclasses with no torch import, so the command line is parsed without loading torch;
`minigpt.model.lora`, `minigpt.model.adapters` and `minigpt.model.moe` apply them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minigpt.errors import UserError


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


#: The gate activations of the feed-forward (`MiniGPTConfig.hidden_act`), by their
#: `transformers.activations.ACT2FN` names (here, not in the config module, so that building
#: the command-line parser imports no torch).
HIDDEN_ACTS = ("silu", "relu2")


@dataclass
class ModelConfig:
    """Which model to build: a named preset, with any field overridden."""

    preset: str = "tiny"
    """tiny (≈1.6 M parameters), small (≈26 M) or base (≈106 M)."""
    vocab_size: int | None = None
    """Vocabulary size; also the size of a tokenizer trained for this run (default 6400)."""
    hidden_size: int | None = None
    """Width of the residual stream."""
    intermediate_size: int | None = None
    """Width of the SwiGLU hidden layer."""
    num_hidden_layers: int | None = None
    """Decoder blocks."""
    num_attention_heads: int | None = None
    """Query heads."""
    num_key_value_heads: int | None = None
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int | None = None
    """Context length in tokens."""
    rope_theta: float | None = None
    """RoPE base frequency."""
    rope_scaling: dict | None = None
    """RoPE scaling for a longer context, as transformers defines it, e.g.
    '{"rope_type": "yarn", "factor": 4}' (also linear, dynamic, llama3, longrope). With
    init_from it extends the saved model's context (original_max_position_embeddings defaults
    to its trained context, factor to the new context over it)."""
    sliding_window: int | None = None
    """Attend to the last W positions only (Mistral-style sliding-window attention)."""
    dropout: float | None = None
    """Dropout probability."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding with the LM head."""
    num_local_experts: int | None = None
    """Mixture of experts: E SwiGLU experts of intermediate_size each per block (0 = dense)."""
    num_experts_per_tok: int | None = None
    """Mixture of experts: experts per token, K (default 2)."""
    router_aux_loss_coef: float | None = None
    """Mixture of experts: weight of the load-balancing loss (default 0.01)."""
    router_z_loss_coef: float | None = None
    """Mixture of experts: weight of the router z-loss (default 0)."""
    qk_norm: bool | None = None
    """RMS-normalise each head's queries and keys before RoPE (QK-norm; not exportable to Llama)."""
    zero_init_residual: bool | None = None
    """Start o_proj and down_proj at zero, so every block begins as the identity."""
    hidden_act: str | None = None
    """The feed-forward gate's activation: silu (SwiGLU, the default) or relu2 (squared ReLU)."""
    final_logit_softcapping: float | None = None
    """Squash the logits into (-c, c) with c·tanh(logits/c) (Gemma 2; not exportable to Llama)."""
    init_from: str | None = None
    """Start from this saved model directory instead of a fresh initialisation."""

    def __post_init__(self) -> None:
        """Refuse sizes and rates that cannot build a model, naming the field.

        Raises:
            UserError: a non-positive size, a vocabulary smaller than the byte alphabet plus
                the special tokens, or a dropout outside [0, 1).
        """
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "max_position_embeddings", "num_experts_per_tok"):
            value = getattr(self, field, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"model.{field}: must be an integer ≥ 1, got {value!r}")
        from minigpt.tokenizer.special import SPECIAL_TOKENS

        minimum = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size is not None and self.vocab_size < minimum:
            raise UserError(
                f"model.vocab_size: must be ≥ {minimum} (256 byte tokens + {len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}"
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout: must be in [0, 1), got {self.dropout!r}")
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise UserError(f"model.rope_theta: must be > 0, got {self.rope_theta!r}")
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool) or self.sliding_window < 1):
            raise UserError(f"model.sliding_window: must be an integer ≥ 1, got {self.sliding_window!r}")
        if self.rope_scaling is not None:
            from minigpt.model.modeling import ROPE_SCALING_TYPES

            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ROPE_SCALING_TYPES:
                raise UserError(f"model.rope_scaling: rope_type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {kind!r}")
        if self.num_local_experts is not None and (isinstance(self.num_local_experts, bool) or self.num_local_experts < 0):
            raise UserError(f"model.num_local_experts: must be an integer ≥ 0 (0 = dense), got {self.num_local_experts!r}")
        if self.num_local_experts and (self.num_experts_per_tok or 2) > self.num_local_experts:
            raise UserError(
                f"model.num_experts_per_tok: must be ≤ model.num_local_experts ({self.num_local_experts}), got {self.num_experts_per_tok or 2}"
            )
        if self.hidden_act is not None and self.hidden_act not in HIDDEN_ACTS:
            raise UserError(f"model.hidden_act: must be one of {', '.join(HIDDEN_ACTS)}, got {self.hidden_act!r}")
        if self.final_logit_softcapping is not None and not self.final_logit_softcapping > 0:
            raise UserError(f"model.final_logit_softcapping: must be > 0, got {self.final_logit_softcapping!r}")
        for field in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                raise UserError(f"model.{field}: must be ≥ 0, got {value!r}")

    def build_config(self, vocab_size: int, special_ids: dict[str, int | None]):
        """The `MiniGPTConfig` this describes, for a tokenizer of `vocab_size` ids."""
        from minigpt.model import MiniGPTConfig

        overrides = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("preset", "init_from")}
        overrides["vocab_size"] = vocab_size
        overrides.update({k: v for k, v in special_ids.items()})
        return MiniGPTConfig.from_preset(self.preset, **overrides)


#: How an embedder turns `(B, T, C)` hidden states into one vector per row.
EMBEDDING_POOLINGS = ("mean", "last", "first")

__all__ = ["EMBEDDING_POOLINGS", "HIDDEN_ACTS", "AdapterOptions", "LoraOptions", "ModelConfig", "MoeOptions"]
