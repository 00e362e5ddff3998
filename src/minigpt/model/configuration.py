"""`MiniGPTConfig`: the hyper-parameters of the decoder, as a `transformers` config.

A Llama-shaped decoder (Touvron et al. 2023, arXiv:2302.13971): RMSNorm, rotary position
embedding, grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) and a SwiGLU
feed-forward (Shazeer 2020, arXiv:2002.05202). The field names are the ones `LlamaConfig`
uses, so a saved config maps one to one onto Llama's (see `minigpt.model.export`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from minigpt.errors import UserError
from minigpt.model.options import HIDDEN_ACTS

#: Named sizes. `tiny` is for tests and the CPU demo, `small` is minimind's 26 M model,
#: `base` is about 100 M parameters. Counts are with the default vocabulary of 6400 and tied
#: embeddings; `minigpt.model.count_parameters` prints the exact figure.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
    "base": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
}


class MiniGPTConfig(PretrainedConfig):
    """Configuration of `MiniGPTForCausalLM`.

    Args:
        vocab_size: number of token ids; the embedding and LM head are `[vocab_size, hidden_size]`.
        hidden_size: width of the residual stream.
        intermediate_size: width of the SwiGLU hidden layer (Llama uses about 8/3 · hidden).
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: query heads; `hidden_size` must be divisible by it unless
            `head_dim` is given.
        num_key_value_heads: key/value heads for grouped-query attention; must divide
            `num_attention_heads` (1 = multi-query, equal = multi-head). Defaults to
            `num_attention_heads`.
        head_dim: per-head width; defaults to `hidden_size // num_attention_heads`.
        max_position_embeddings: the context length the model is trained for, in tokens.
        rope_theta: RoPE base frequency θ (Su et al. 2021, arXiv:2104.09864).
        rope_scaling: optional RoPE scaling for longer context, in `transformers`' form, e.g.
            `{"rope_type": "linear", "factor": 2.0}` or `{"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 512}`; computed by `transformers`' RoPE
            functions, so every type Llama supports works here too.
        rms_norm_eps: ε inside RMSNorm (Zhang & Sennrich 2019).
        tie_word_embeddings: share the input embedding with the LM head.
        dropout: dropout on attention probabilities and on each residual branch (0 for
            pretraining small models on enough data).
        initializer_range: standard deviation of the normal weight initialisation.
        attention_bias / mlp_bias: add biases to the attention / feed-forward projections.
        pad_token_id / bos_token_id / eos_token_id: special ids of the tokenizer the model is
            trained with (`minigpt.tokenizer`: eos 0, pad 1, no bos).
        use_bidirectional_attention: encoder mode: every token attends to every real token of
            its row, before and after it (BERT, Devlin et al. 2019), for masked-LM and
            embedding models; the same blocks and parameter names as the causal decoder
            (transformers' Gemma uses the same field name). False: causal.
        num_local_experts: E > 0 replaces every block's SwiGLU by a sparse mixture of E SwiGLU
            experts of `intermediate_size` each (Shazeer et al. 2017, arXiv:1701.06538;
            Mixtral, Jiang et al. 2024, arXiv:2401.04088); 0 or None: dense.
        num_experts_per_tok: K, the experts each token is sent to (top-K of the router).
        router_aux_loss_coef: weight of the load-balancing loss (Fedus et al. 2021) that the LM
            objectives add to the cross-entropy (per token).
        router_z_loss_coef: weight of the router z-loss (Zoph et al. 2022); 0 = off.
        sliding_window: W > 0 limits every layer's attention to the last W positions, the query's
            own included (Mistral, Jiang et al. 2023, arXiv:2310.06825; Longformer's local
            attention, Beltagy et al. 2020); None: the whole context.
        output_router_logits: return the router logits and the router losses from every forward
            (training objectives ask for them themselves).
        qk_norm: RMS-normalise each head's queries and keys before RoPE (a learned gain per
            head dimension, as Qwen3 does; Dehghani et al. 2023, arXiv:2302.05442). Such a model
            does not export to Llama, Mistral, Mixtral or GGUF.
        zero_init_residual: start the two projections that write into the residual stream
            (`o_proj`, `down_proj`) at zero, so every block begins as the identity (the
            modded-nanogpt speedruns' initialisation); an initialisation only, so exports work.
        hidden_act: the gate's activation in the gated feed-forward `down(act(gate(x)) · up(x))`:
            `silu` (SwiGLU, Shazeer 2020, arXiv:2002.05202) or `relu2`, squared ReLU
            (`max(x, 0)²`, Primer: So et al. 2021, arXiv:2109.08668; the modded-nanogpt
            speedruns). `transformers`' Llama and Mistral take either; GGUF only `silu`.
        final_logit_softcapping: c > 0 squashes the logits smoothly into (−c, c),
            `c · tanh(logits / c)` (Gemma 2's name and formula, arXiv:2408.00118; modded-nanogpt
            uses it too); None: off. Such a model does not export to Llama, Mistral, Mixtral or
            GGUF.

    Raises:
        UserError: on shapes that cannot form a model (heads that do not divide, etc.).
    """

    model_type = "minigpt"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 6400,
        hidden_size: int = 256,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 512,
        rope_theta: float = 1e6,
        rope_scaling: dict | None = None,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = True,
        dropout: float = 0.0,
        initializer_range: float = 0.02,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        pad_token_id: int | None = 1,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = 0,
        use_cache: bool = True,
        use_bidirectional_attention: bool = False,
        num_local_experts: int | None = None,
        num_experts_per_tok: int = 2,
        router_aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 0.0,
        output_router_logits: bool = False,
        sliding_window: int | None = None,
        qk_norm: bool = False,
        zero_init_residual: bool = False,
        hidden_act: str = "silu",
        final_logit_softcapping: float | None = None,
        **kwargs: Any,
    ) -> None:
        if intermediate_size is None:
            # SwiGLU keeps the parameter count of a 4x GELU MLP at 8/3 width; round to 64.
            intermediate_size = 64 * ((int(8 * hidden_size / 3) + 63) // 64)
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if head_dim is None:
            if hidden_size % num_attention_heads:
                raise UserError(
                    f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                    f"({num_attention_heads}), or set head_dim"
                )
            head_dim = hidden_size // num_attention_heads
        if num_attention_heads % num_key_value_heads:
            raise UserError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({num_key_value_heads})"
            )
        if head_dim % 2:
            raise UserError(f"head_dim ({head_dim}) must be even for rotary embeddings")
        num_local_experts = int(num_local_experts or 0)
        if num_local_experts < 0:
            raise UserError(f"num_local_experts must be ≥ 0 (0 = dense), got {num_local_experts}")
        if num_local_experts and not 1 <= num_experts_per_tok <= num_local_experts:
            raise UserError(
                f"num_experts_per_tok must be in 1..num_local_experts ({num_local_experts}), got {num_experts_per_tok}"
            )
        if sliding_window is not None and (isinstance(sliding_window, bool) or int(sliding_window) < 1):
            raise UserError(f"sliding_window must be a positive number of tokens (or None for full attention), got {sliding_window!r}")
        if hidden_act not in HIDDEN_ACTS:
            raise UserError(f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}, got {hidden_act!r}")
        if final_logit_softcapping is not None and (isinstance(final_logit_softcapping, bool) or not final_logit_softcapping > 0):
            raise UserError(f"final_logit_softcapping must be > 0 (or None for off), got {final_logit_softcapping!r}")
        if router_aux_loss_coef < 0 or router_z_loss_coef < 0:
            raise UserError("router_aux_loss_coef and router_z_loss_coef must be ≥ 0")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.hidden_act = hidden_act
        self.final_logit_softcapping = float(final_logit_softcapping) if final_logit_softcapping is not None else None
        self.use_cache = use_cache
        self.use_bidirectional_attention = bool(use_bidirectional_attention)
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = int(num_experts_per_tok)
        self.router_aux_loss_coef = float(router_aux_loss_coef)
        self.router_z_loss_coef = float(router_z_loss_coef)
        self.output_router_logits = bool(output_router_logits)
        self.sliding_window = int(sliding_window) if sliding_window else None
        self.qk_norm = bool(qk_norm)
        self.zero_init_residual = bool(zero_init_residual)
        # transformers >= 5 keeps every RoPE setting in one dict, `rope_parameters`; accept the
        # classic `rope_theta` / `rope_scaling` arguments and fold them in.
        rope = dict(kwargs.pop("rope_parameters", None) or rope_scaling or {})
        rope.setdefault("rope_type", rope.pop("type", "default"))
        rope.setdefault("rope_theta", rope_theta)
        if rope["rope_type"] in ("linear", "dynamic", "yarn", "longrope", "llama3"):
            # The context the unscaled model was trained for (YaRN's and dynamic NTK's anchor).
            rope.setdefault("original_max_position_embeddings", max_position_embeddings)
        self.rope_parameters = rope
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def rope_theta(self) -> float:
        """RoPE base frequency θ (stored in `rope_parameters`)."""
        return float(self.rope_parameters["rope_theta"])

    @property
    def is_moe(self) -> bool:
        """True when the feed-forward of every block is a mixture of experts."""
        return bool(getattr(self, "num_local_experts", 0))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MiniGPTConfig":
        """Build a named preset (`tiny`, `small`, `base`), with fields overridden by keyword.

        Raises:
            UserError: if `name` is not a preset.
        """
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# `AutoConfig.from_pretrained(run_dir)` reads a MiniGPT config once this module is imported
# (`import minigpt` imports it as soon as transformers is).
from transformers import AutoConfig as _AutoConfig  # noqa: E402

_AutoConfig.register(MiniGPTConfig.model_type, MiniGPTConfig, exist_ok=True)


import minigpt as _minigpt  # noqa: E402

_minigpt._register_if_pending(__name__)  # a registration postponed while this module loaded (see minigpt/__init__)
