"""The MiniGPT decoder: a Llama-shaped causal language model in one readable file.

Blocks (pre-norm, Llama parameter names so PEFT targets, `transformers` tooling and the export
to `LlamaForCausalLM` work unchanged):

    h = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
    y = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))

Papers: RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467); RoPE (Su et al. 2021,
arXiv:2104.09864); grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245); SwiGLU
(Shazeer 2020, arXiv:2002.05202); Llama (Touvron et al. 2023, arXiv:2302.13971).

Shapes use B = batch, T = new tokens in this call, S = keys seen (past + T), H = query heads,
K = key/value heads, D = head_dim, C = hidden_size, V = vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

from minigpt.losses.lm import IGNORE_INDEX, token_cross_entropy
from minigpt.losses.moe import expert_load, load_balancing_loss, router_z_loss
from minigpt.model.configuration import MiniGPTConfig


class MiniGPTRMSNorm(nn.Module):
    """Root-mean-square layer norm: `x / sqrt(mean(x²) + eps) * weight`, computed in fp32.

    Shapes: `(..., C) -> (..., C)`, output in the input's dtype.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., C) -> (..., C)`; under autocast the output is in the autocast dtype."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        if torch.is_autocast_enabled(x.device.type):
            # Under autocast every consumer of this output is a linear layer that would cast it
            # to the autocast dtype anyway (q, k and v each separately): cast once here.
            low = torch.get_autocast_dtype(x.device.type)
            return self.weight.to(low) * x.to(low)
        return self.weight * x.to(dtype)


class MiniGPTRotaryEmbedding(nn.Module):
    """Rotary position embedding tables (cos, sin) for given positions.

    The inverse frequencies are `θ^(-2i/D)`; any `rope_type` other than `default` (linear,
    dynamic NTK, YaRN, llama3, …) is computed by `transformers`' own RoPE functions, so long-
    context scaling matches Llama exactly.
    """

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        # Dynamic NTK rescales once a sequence outgrows the context the model was trained for.
        trained = config.rope_parameters.get("original_max_position_embeddings", config.max_position_embeddings)
        self.max_seq_len_cached = trained
        self.original_max_seq_len = trained
        fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: MiniGPTConfig, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, float]:
        """Return (inverse frequencies `(D/2,)`, attention scaling 1.0) for plain RoPE."""
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `(B, T)` -> (cos, sin), each `(B, T, D)` in `x`'s dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


#: RoPE scaling types `set_rope_scaling` accepts (computed by `transformers`' RoPE functions).
ROPE_SCALING_TYPES = tuple(sorted(t for t in ROPE_INIT_FUNCTIONS if t != "default"))


def set_rope_scaling(model: nn.Module, rope_scaling: dict | None, max_position_embeddings: int | None = None) -> None:
    """Switch a (trained) MiniGPT model to scaled RoPE and/or a longer context, in place.

    Context extension (Chen et al. 2023, "Extending Context Window of Large Language Models via
    Positional Interpolation", arXiv:2306.15595 — `linear`; dynamic NTK-aware scaling —
    `dynamic`; Peng et al. 2023, "YaRN", arXiv:2309.00071 — `yarn`): the rotary frequencies
    are rescaled so positions beyond the trained context map into the range seen in training.

    Args:
        model: a `MiniGPTForCausalLM` / `MiniGPTModel` (its config is edited and its rotary
            module rebuilt).
        rope_scaling: `transformers`' form, e.g. `{"rope_type": "yarn", "factor": 4.0}`
            (`type` is accepted for `rope_type`); `original_max_position_embeddings` defaults
            to the context the model was trained for, and a missing `factor` to
            new context / trained context. None keeps the current RoPE.
        max_position_embeddings: the new context length; None keeps it. With `dynamic` it stays
            the trained context: that type rescales on the fly for longer inputs.

    Raises:
        UserError: an unknown `rope_type`, or parameters `transformers` rejects for it.
    """
    from minigpt.errors import UserError

    config = model.config
    trained = int(config.rope_parameters.get("original_max_position_embeddings", config.max_position_embeddings))
    new_max = int(max_position_embeddings or config.max_position_embeddings)
    if rope_scaling is not None:
        rope = dict(rope_scaling)
        rope_type = rope.pop("type", None) or rope.get("rope_type", "default")
        if rope_type not in ROPE_SCALING_TYPES and rope_type != "default":
            raise UserError(f"model.rope_scaling: unknown rope_type {rope_type!r}; choose one of {', '.join(ROPE_SCALING_TYPES)}")
        rope["rope_type"] = rope_type
        rope["rope_theta"] = float(rope.get("rope_theta", config.rope_theta))
        if rope_type != "default":
            rope.setdefault("original_max_position_embeddings", trained)
            rope.setdefault("factor", max(1.0, new_max / trained))
        if rope_type == "dynamic":
            # transformers' dynamic NTK rescales on the fly beyond `max_position_embeddings`,
            # which must therefore stay the trained context (as in Llama's configs).
            new_max = trained
        old = (config.rope_parameters, config.max_position_embeddings)
        config.rope_parameters, config.max_position_embeddings = rope, new_max
    else:
        old = (config.rope_parameters, config.max_position_embeddings)
        config.max_position_embeddings = new_max
    base = getattr(model, "model", model)
    try:
        rotary = MiniGPTRotaryEmbedding(config)
    except (KeyError, ValueError, TypeError) as e:
        config.rope_parameters, config.max_position_embeddings = old
        raise UserError(f"model.rope_scaling {rope_scaling!r}: {e}") from e
    base.rotary_emb = rotary.to(base.embed_tokens.weight.device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` on the last dimension (the rotation of RoPE, half-split layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x (B, heads, T, D)` by the angles whose cos/sin are `(B, T, D)`."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class MiniGPTAttention(nn.Module):
    """Grouped-query causal self-attention through `F.scaled_dot_product_attention`.

    `K` key/value heads are shared by `H/K` query heads each, which shrinks the KV cache by
    that factor with little loss in quality (Ainslie et al. 2023).
    """

    def __init__(self, config: MiniGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        c, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(c, self.num_heads * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(c, self.num_kv_heads * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(c, self.num_kv_heads * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * d, c, bias=config.attention_bias)
        self.o_proj.residual_projection = True  # writes into the residual stream (see _init_weights)
        if getattr(config, "qk_norm", False):
            self.q_norm = MiniGPTRMSNorm(d, config.rms_norm_eps)  # over each head's D, before RoPE
            self.k_norm = MiniGPTRMSNorm(d, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        """x `(B, T, C)`; mask `(B, 1, T, S)` bool (True = may attend) or None: plain causal
        attention, or with `causal=False` (encoder mode) every position."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, K, S, D)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None and t > 1,
            enable_gqa=self.num_kv_heads != self.num_heads,  # query head h reads K/V head h // (H/K)
        )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, `max(x, 0)²`, elementwise (So et al. 2021, Primer, arXiv:2109.08668)."""
    return torch.square(F.relu(x))


#: `MiniGPTConfig.hidden_act` -> the elementwise function.
ACTIVATIONS = {"silu": F.silu, "relu2": relu2}


class MiniGPTMLP(nn.Module):
    """Gated feed-forward `down(act(gate(x)) * up(x))`, `(B, T, C) -> (B, T, C)`: SwiGLU with
    `hidden_act="silu"` (the default), squared-ReLU gating with `"relu2"`."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(c, f, bias=config.mlp_bias)
        self.up_proj = nn.Linear(c, f, bias=config.mlp_bias)
        self.down_proj = nn.Linear(f, c, bias=config.mlp_bias)
        self.down_proj.residual_projection = True  # writes into the residual stream (see _init_weights)
        self.act_fn = ACTIVATIONS[getattr(config, "hidden_act", "silu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, T, C) -> (B, T, C)`."""
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def gated_mlp(mlp: MiniGPTMLP, x: torch.Tensor, linear=None) -> torch.Tensor:
    """A `MiniGPTMLP`'s `down(act(gate(x)) · up(x))`, `(…, C) -> (…, C)` (gated linear units,
    Shazeer 2020, arXiv:2002.05202): `mlp(x)`, or with `linear(module, input)` standing in for
    each projection's call (the fast engine passes one that uses its cached low-precision
    weights)."""
    if linear is None:
        return mlp(x)
    return linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))


def soft_cap_logits(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """`c · tanh(logits / c)` with `c = config.final_logit_softcapping` (Gemma 2,
    arXiv:2408.00118), any shape; the logits unchanged when the config has no cap. Every path
    that turns hidden states into logits with `lm_head` calls this (the model's forward, the
    engine, the rollout and preference log-prob helpers), so all of them agree."""
    cap = getattr(config, "final_logit_softcapping", None)
    if not cap:
        return logits
    return torch.tanh(logits / cap) * cap


class MiniGPTSparseMoeBlock(nn.Module):
    """Sparse mixture-of-experts feed-forward: a softmax router sends each token to its top-K of
    E SwiGLU experts and adds their outputs weighted by the renormalised router probabilities
    (Shazeer et al. 2017, arXiv:1701.06538; Mixtral, Jiang et al. 2024, arXiv:2401.04088):

        p = softmax(gate(x)),  S = top-K(p),  y = Σ_{e ∈ S} (p_e / Σ_{j ∈ S} p_j) · expert_e(x)

    Names follow Mixtral (`gate` = router, `experts.{e}` = one `MiniGPTMLP` each with the dense
    block's parameter names), so PEFT's LoRA targets (`gate_proj`, `up_proj`, `down_proj`) reach
    every expert and never the router. Experts run batched: assignments are sorted by expert
    once and each expert multiplies its contiguous slice, so the Python loop is over the E
    experts, never over tokens.
    """

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(MiniGPTMLP(config) for _ in range(self.num_experts))

    def route(self, x: torch.Tensor, linear=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router of `x (N, C)`: `(router_logits (N, E), weights (N, K) fp32 summing to 1 per
        token, expert indices (N, K) int64)`; the softmax and top-K are computed in fp32."""
        logits = self.gate(x) if linear is None else linear(self.gate, x)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        return logits, weights / weights.sum(-1, keepdim=True), chosen

    def forward(self, x: torch.Tensor, linear=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`x (B, T, C) -> (y (B, T, C), router_logits (B·T, E))`.

        `linear(module, input)`, when given, replaces each projection's call (the engine's
        cached low-precision weights). In training every expert runs, even on an empty slice,
        so each one stays in the autograd graph (DDP needs no `find_unused_parameters`)."""
        b, t, c = x.shape
        flat = x.reshape(-1, c)  # (N, C)
        logits, weights, chosen = self.route(flat, linear)
        flat_chosen = chosen.reshape(-1)  # (N·K,) expert of each assignment, token-major
        order = flat_chosen.argsort(stable=True)  # assignments grouped by expert
        token = order // self.top_k  # (N·K,) token of each sorted assignment
        counts = torch.bincount(flat_chosen, minlength=self.num_experts).tolist()
        slices = flat[token].split(counts)  # E slices of (n_e, C)
        keep_all = torch.is_grad_enabled()
        outs = [
            gated_mlp(expert, part, linear)
            for expert, part in zip(self.experts, slices)
            if keep_all or part.shape[0]
        ]
        y = torch.cat(outs)  # (N·K, C), sorted order
        y = y * weights.reshape(-1)[order, None].to(y.dtype)
        out = torch.zeros(flat.shape[0], c, dtype=y.dtype, device=y.device).index_add_(0, token, y)
        return out.view(b, t, c), logits


class MiniGPTDecoderLayer(GradientCheckpointingLayer):
    """One pre-norm block: attention then SwiGLU, each added to the residual stream.

    A `transformers` `GradientCheckpointingLayer`: after `model.activation_checkpointing_enable()`
    (what `--train.gradient_checkpointing` calls) a training forward keeps only the block's
    input and recomputes the rest during backward (Chen et al. 2016, "Training Deep Nets with
    Sublinear Memory Cost"); dropout masks are replayed from the saved RNG state, so gradients
    are those of the plain forward."""

    def __init__(self, config: MiniGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MiniGPTAttention(config, layer_idx)
        self.mlp = MiniGPTSparseMoeBlock(config) if getattr(config, "num_local_experts", 0) else MiniGPTMLP(config)
        self.input_layernorm = MiniGPTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MiniGPTRMSNorm(config.hidden_size, config.rms_norm_eps)
        # With p = 0 an nn.Dropout still allocates (and keeps for backward) a copy per call.
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x, rope, mask, past_key_values=None, causal=True):
        """`x (B, T, C) -> (y (B, T, C), router_logits (B·T, E) or None when dense)`; `rope`,
        `mask`, the cache and `causal` as in `MiniGPTAttention`."""
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), rope, mask, past_key_values, causal))
        h = self.mlp(self.post_attention_layernorm(x))
        router_logits = None
        if isinstance(h, tuple):
            h, router_logits = h
        return x + self.resid_dropout(h), router_logits


class MiniGPTPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the `transformers` plumbing shared by MiniGPT models."""

    config_class = MiniGPTConfig
    config: MiniGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniGPTDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, except that a model carrying LoRA/DoRA adapters
        injected in place by peft (`minigpt.model.lora.apply_lora` / `load_adapter`) writes the
        adapter alone in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`)
        and its `generation_config.json`, as `transformers`' own adapter integration would, but
        without depending on which peft release that integration accepts.

        `adapter_final_dir` (keyword): the folder an adapter written to a staging
        `save_directory` will be moved to; its base path is recorded relative to that folder."""
        from minigpt.model.adapters import has_bottleneck_adapters, save_bottleneck_adapters
        from minigpt.model.lora import has_lora, save_adapter

        final_dir = kwargs.pop("adapter_final_dir", None)
        if has_bottleneck_adapters(self):
            save_bottleneck_adapters(self, save_directory, final_dir=final_dir)
            if self.can_generate() and self.generation_config is not None:
                self.generation_config.save_pretrained(save_directory)
            return
        if has_lora(self) and not getattr(self, "_hf_peft_config_loaded", False):
            save_adapter(self, save_directory, final_dir=final_dir)
            if self.can_generate() and self.generation_config is not None:
                self.generation_config.save_pretrained(save_directory)
            return
        super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for every linear and embedding weight (transformers'
        default; it calls this on leaf modules only). With `config.zero_init_residual` the two
        projections that write into the residual stream (`o_proj`, `down_proj`, marked
        `residual_projection` where they are built) start at zero instead, so every block
        begins as the identity (the modded-nanogpt speedruns' initialisation)."""
        super()._init_weights(module)
        if getattr(module, "residual_projection", False) and getattr(self.config, "zero_init_residual", False):
            init.zeros_(module.weight)


def _position_ids(attention_mask: torch.Tensor | None, past: int, t: int, device: torch.device) -> torch.Tensor:
    """Positions `(B|1, T)` of the new tokens.

    As transformers' Llama does, `past + arange(T)` by default. When a 2-D padding mask covering
    the cached and the new tokens is given, positions are counted over real tokens only, so a
    left-padded row gets the same positions as the unpadded sequence (what `generate` computes
    itself and passes as `position_ids`).
    """
    if attention_mask is None or attention_mask.ndim != 2 or attention_mask.shape[-1] != past + t:
        return torch.arange(past, past + t, device=device)[None]
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)[:, -t:]


# transformers 5.24 (the floor) renamed the cache of models, of `generate`'s model inputs, of the
# model outputs and of `create_causal_mask` from `past_key_values` to `cache`; the old name stays
# accepted here, since peft's prefix tuning and older user code still pass it.


def _pick_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache to use when it may come under either name.

    `cache` (transformers ≥ 5.24's name) wins; the older `past_key_values` is used when `cache`
    is missing or still empty. Both arrive at once with peft's prefix tuning (releases up to
    0.21) under `generate` of transformers ≥ 5.24: peft passes its prefix as `past_key_values`
    at every step, while `generate` passes its own cache as `cache`, empty at the first step
    (so the prefix is taken, and written into the cache `generate` then carries on with) and
    holding prefix and tokens afterwards.
    """
    if cache is None or (past_key_values is not None and cache.get_seq_length() == 0):
        return past_key_values
    return cache


class MiniGPTModel(MiniGPTPreTrainedModel):
    """The decoder stack without the LM head: `input_ids (B, T) -> last_hidden_state (B, T, C)`."""

    # Loaded (AutoModel, sentence-transformers) from a MiniGPTForEmbedding directory, the
    # projection head used only in training is left out without a warning.
    _keys_to_ignore_on_load_unexpected = [r"^projection\."]

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MiniGPTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MiniGPTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = MiniGPTRotaryEmbedding(config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        bidirectional: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Run the stack.

        Masks and positions are built as transformers' own Llama builds them: the mask by
        `transformers.masking_utils.create_causal_mask` from the padding mask, the cache's own
        sizes (`get_mask_sizes`, which also covers a preallocated `StaticCache`) and the
        positions (position ids that restart inside a row, with no padding mask, mean packed
        sequences and give a block-diagonal mask). `None` is returned by it when plain causal
        attention suffices, which lets SDPA take its `is_causal` fast path.

        Args:
            input_ids: `(B, T)` token ids (or `inputs_embeds` `(B, T, C)`).
            attention_mask: `(B, S)` with 1 for real tokens and 0 for padding, covering the
                cached tokens too (`S = past + T`); or a prepared `(B, 1, T, S)` mask (bool,
                True = may attend, or additive float), used as given; None means no padding.
            position_ids: `(B, T)`; by default `past + arange(T)`, counted over real tokens
                when a 2-D padding mask is given.
            past_key_values / cache: a `transformers` `Cache` (e.g. `DynamicCache`,
                `StaticCache`) updated in place; transformers ≥ 5.24 passes it as `cache`.
            use_cache: create a `DynamicCache` when none is given (not in training mode).
            bidirectional: attend both ways (encoder mode) or causally; None: as
                `config.use_bidirectional_attention` says. The encoder heads pass it, so one
                decoder stack serves a causal LM and an MLM / embedding view of it without its
                config changing.

        Raises:
            ValueError: both or neither of `input_ids` / `inputs_embeds`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        cache = _pick_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _position_ids(attention_mask, past, x.shape[1], x.device)
        if bidirectional is None:
            bidirectional = bool(getattr(self.config, "use_bidirectional_attention", False))
        if bidirectional:
            # Encoder mode: padding is the only thing masked; None = attend everywhere.
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask, cache=cache)
        else:
            # With `config.sliding_window` each query sees only the last W positions (Mistral).
            make_mask = create_sliding_window_causal_mask if getattr(self.config, "sliding_window", None) else create_causal_mask
            mask = make_mask(
                config=self.config,
                inputs_embeds=x,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
            )  # (B, 1, T, S) bool (sdpa) or additive float (eager), or None = plain causal
        if mask is not None and mask.dtype != torch.bool:
            mask = mask == 0 if torch.is_floating_point(mask) else mask.bool()  # additive -> keep/drop
        rope = self.rotary_emb(x, position_ids)
        x = self.dropout(x)
        router_logits = []
        for layer in self.layers:
            x, z = layer(x, rope, mask, cache, not bidirectional)
            if z is not None:
                router_logits.append(z)
        if router_logits:
            return MoeModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache, router_logits=tuple(router_logits))
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache)


@dataclass
class MiniGPTMoeCausalLMOutput(MoeCausalLMOutputWithPast):
    """`MoeCausalLMOutputWithPast` (`loss`, `aux_loss`, `logits`, `cache`, `router_logits`) plus
    the router z-loss and the weighted router loss the LM objectives add per token.

    Attributes:
        router_z_loss: scalar, `minigpt.losses.moe.router_z_loss`.
        router_loss: scalar, `router_aux_loss_coef · aux_loss + router_z_loss_coef · router_z_loss`.
        expert_load: `(L, E)` share of the token→expert assignments per layer (no gradient).
    """

    router_z_loss: torch.Tensor | None = None
    router_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None


def require_causal(model: nn.Module, who: str) -> None:
    """Refuse a model that attends both ways where next-token log-probs are needed.

    A decoder whose config says `use_bidirectional_attention` (an MLM encoder, or a causal
    model whose config was switched) lets every position see the tokens after it, so its
    "next-token" log-probs are wrong without any error: DPO, GRPO, PPO, reward models and
    generation would train on or sample from them.

    Args:
        model: any model with a `config` (a PEFT wrapper passes its base's through).
        who: what needs the causal model, for the message.

    Raises:
        UserError: `model.config.use_bidirectional_attention` is true.
    """
    if getattr(getattr(model, "config", None), "use_bidirectional_attention", False):
        from minigpt.errors import UserError

        raise UserError(
            f"{who} needs a causal model, but this one attends both ways (config.use_bidirectional_attention "
            "is true, as an MLM encoder's): its log-probs would see later tokens. Use the causal model, or set "
            "config.use_bidirectional_attention = False if it was switched by mistake"
        )


class MiniGPTForCausalLM(MiniGPTPreTrainedModel, GenerationMixin):
    """MiniGPT with its language-model head: `input_ids (B, T) -> logits (B, T, V)`.

    Works with `model.generate` (greedy, sampling, beam search, KV `Cache` objects) and
    `AutoModelForCausalLM.from_pretrained(dir)` once `minigpt` is imported. `labels` follow
    the `transformers` convention: same shape as `input_ids`, shifted inside, −100 ignored.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__(config)
        self.model = MiniGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits `(B, T, V)` (or of the last `logits_to_keep` positions) and, given targets, the
        next-token cross-entropy in nats (computed in fp32).

        Args:
            labels: `(B, T)` in the `transformers` convention (position t predicts
                `labels[t + 1]`; −100 ignored).
            shift_labels: `(B, T)` already aligned targets (position t predicts
                `shift_labels[t]`), as `transformers`' loss functions accept; used instead of
                `labels` when given. Packed pretraining blocks use these, so no token is lost.
            num_items_in_batch: divide the summed loss by this instead of by the number of
                supervised tokens (1 gives the sum; the training loop uses it to average over a
                whole accumulated step).
            output_router_logits: mixture-of-experts models only (default
                `config.output_router_logits`): return a `MiniGPTMoeCausalLMOutput` with the
                router logits, `aux_loss` (load balancing), `router_z_loss`, `router_loss` and
                `expert_load`; `loss`, when computed, then includes `router_loss` (as Mixtral).

        Raises:
            UserError: the config says `use_bidirectional_attention` (an encoder's config): a
                causal LM's logits must not see later tokens.
        """
        if self.config.use_bidirectional_attention:
            require_causal(self, "a causal LM forward (and generate)")
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache,
        )
        h = out.last_hidden_state  # (B, T, C)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = soft_cap_logits(self.lm_head(h), self.config)  # (B, T, V)
        loss = None
        if shift_labels is None and labels is not None:
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        if shift_labels is not None:
            loss = token_cross_entropy(logits[:, -shift_labels.shape[1] :], shift_labels, reduction="sum")
            denom = num_items_in_batch if num_items_in_batch is not None else (shift_labels != IGNORE_INDEX).sum().clamp(min=1)
            loss = loss / denom
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        router_logits = getattr(out, "router_logits", None)
        if not (router_logits and output_router_logits):
            return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
        mask = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        k = self.config.num_experts_per_tok
        aux = load_balancing_loss(router_logits, k, mask)
        z = router_z_loss(router_logits, mask)
        router_loss = self.config.router_aux_loss_coef * aux + self.config.router_z_loss_coef * z
        return MiniGPTMoeCausalLMOutput(
            loss=None if loss is None else loss + router_loss.to(loss.dtype),
            aux_loss=aux,
            logits=logits,
            cache=out.cache,
            router_logits=router_logits,
            router_z_loss=z,
            router_loss=router_loss,
            expert_load=expert_load(router_logits, k, mask),
        )


#: The short name of the course and the API guide: `MiniGPT(config)` is the causal LM.
MiniGPT = MiniGPTForCausalLM

# AutoModelForCausalLM.from_pretrained(run_dir) gives the language model, AutoModel the bare
# decoder stack (what sentence-transformers' Transformer module runs). Imported here, at the
# end: importing transformers' Auto package runs `import minigpt`'s registration hook, which
# imports the reward model and encoder modules, and they need this module's classes.
from transformers import AutoModel as _AutoModel, AutoModelForCausalLM as _AutoModelForCausalLM  # noqa: E402

_AutoModelForCausalLM.register(MiniGPTConfig, MiniGPTForCausalLM, exist_ok=True)
_AutoModel.register(MiniGPTConfig, MiniGPTModel, exist_ok=True)


import minigpt as _minigpt  # noqa: E402

_minigpt._register_if_pending(__name__)  # a registration postponed while this module loaded (see minigpt/__init__)
