"""A fast batched decoding engine for MiniGPT: a preallocated KV cache and a hand-written step.

`model.generate` (kept untouched, see DESIGN.md principle 3) is general: it grows a
`DynamicCache`, rebuilds masks and runs logits processors every step, and under bf16 autocast
it re-casts every weight every step. The engine runs the same decoder math with less per-step
work (speed figures: `benchmarks/bench_decode.py`; on a 2-core CPU the fp32 step of the
`small` preset is bound by reading the weights, so the engine's gain there is modest, and
largest in bf16):

* one KV cache tensor `(L, 2, B, K, S, D)` allocated once per call, written in place;
* the rotary tables for every position computed once per call by the model's own
  `rotary_emb`, then sliced per step;
* prefill computes logits for the last prompt position only;
* a decode step attends the single new query of each query head group against the valid
  prefix through one `scaled_dot_product_attention` call, without expanding K/V to all heads;
* sampling works on a `(B, V)` tensor with a running "seen" mask for the repetition penalty;
* in bf16/fp16 the linear weights are cast once per call, not once per step.

The per-layer forward calls the model's own modules (`q_proj`, `mlp`, norms, `lm_head`, ...),
so LoRA adapters injected into those modules (PEFT) are honoured and the math is the
model's. Dropout is never applied (decoding is inference).

Shapes: B = batch, P = padded prompt length, N = new tokens, S = P + N, L = layers,
H = query heads, K = key/value heads, D = head_dim, C = hidden_size, V = vocab_size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.inference.sampling import apply_repetition_penalty, draw, filter_logits
from minigpt.inference.prepack import can_prepack, concat_linear, packed_linear, prepack, quantize_int8
from minigpt.model.modeling import MiniGPTMLP, MiniGPTRMSNorm, MiniGPTSparseMoeBlock, apply_rotary, gated_mlp, require_causal, soft_cap_logits


@dataclass
class GenerationOutput:
    """What `GenerationEngine.generate` returns. N is the number of decoding steps actually run:
    `max_new_tokens`, or fewer when every row stopped at EOS earlier.

    Attributes:
        sequences: `(B, P + N)` int64: the left-padded prompts followed by the completions;
            positions after a row's EOS hold the pad id.
        completion_ids: `(B, N)` int64, `sequences[:, P:]`.
        completion_mask: `(B, N)` int64, 1 on generated tokens up to and including the EOS
            that ended the row, 0 after it.
        prompt_mask: `(B, P)` int64, 1 on real prompt tokens, 0 on the left padding.
        logprobs: `(B, N)` float32 or None (see `return_logprobs`): log p_model(token | prefix)
            of each generated token under the *raw* model distribution, i.e. log_softmax of
            the model's logits at temperature 1, before repetition penalty, top-k and top-p.
            This is the quantity policy-gradient code (PPO, GRPO) needs. 0 where the
            completion mask is 0.
        sampling_logprobs: `(B, N)` float32 or None: log-probability of each token under the
            distribution it was actually drawn from (after repetition penalty, temperature,
            top-k and top-p). Greedy decoding picks deterministically, so it is 0 there.
            0 where the completion mask is 0.
    """

    sequences: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_mask: torch.Tensor
    logprobs: torch.Tensor | None = None
    sampling_logprobs: torch.Tensor | None = None

    @property
    def attention_mask(self) -> torch.Tensor:
        """`(B, P + N)` int64: 1 on real prompt and completion tokens, for re-scoring `sequences`
        with `model(sequences, attention_mask=...)`."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


# --------------------------------------------------------------------------------------------
# The engine.
# --------------------------------------------------------------------------------------------


@dataclass
class _Sampling:
    """Validated sampling settings of one call."""

    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    do_sample: bool
    stop_on_eos: bool


class GenerationEngine:
    """Batched generation with a preallocated KV cache for `MiniGPTForCausalLM`.

    Args:
        model: a `MiniGPTForCausalLM` (or a PEFT model wrapping one; adapters stay active).
            The engine reads the model's modules at every call, so weight updates between
            calls (RL) are seen; it never modifies the model or its `generate`.
        eos_token_id: id or ids that end a row; None takes `model.config.eos_token_id` (which
            may itself be None: then rows only stop at `max_new_tokens`).
        pad_token_id: id written for left padding and after EOS; None takes
            `model.config.pad_token_id`, else the first EOS id, else 0.
        dtype: None computes in the model's dtype (fp32 by default: exact). `torch.bfloat16`
            (or `torch.float16`) on an fp32 model runs the step under `torch.autocast`, with
            the linear weights cast once per call and the KV cache in that dtype.

    Raises:
        UserError: if `model` does not have the MiniGPT module layout, attends both ways
            (`require_causal`), or `dtype` is neither None, the model's dtype, nor bf16/fp16
            for an fp32 model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if hasattr(model, "get_base_model"):  # PEFT wrapper: LoRA layers live in the base model
            model = model.get_base_model()
        if not (hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model, "lm_head")):
            raise UserError(f"GenerationEngine needs a MiniGPTForCausalLM, got {type(model).__name__}")
        require_causal(model, "the generation engine")
        self.model = model
        self.config = model.config
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id
        if eos_token_id is None:
            self.eos_token_ids: list[int] = []
        elif isinstance(eos_token_id, int):
            self.eos_token_ids = [eos_token_id]
        else:
            self.eos_token_ids = [int(e) for e in eos_token_id]
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad_token_id)
        self.dtype = dtype
        self._compute_dtype()  # reject an unusable dtype now rather than at the first call
        self.num_heads = self.config.num_attention_heads
        self.num_kv_heads = self.config.num_key_value_heads
        self.head_dim = self.config.head_dim

    # ---------------------------------------------------------------- public API

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        do_sample: bool | None = None,
        seed: int | None = None,
        stop_on_eos: bool = True,
        return_logprobs: bool = False,
        attention_mask: torch.Tensor | None = None,
        logprob_temperature: float = 1.0,
    ) -> GenerationOutput:
        """Generate up to `max_new_tokens` tokens for each prompt.

        Args:
            prompts: a list of token-id lists of any lengths (left-padded here), or an int
                tensor `(B, P)` (or `(P,)`) already left-padded, with `attention_mask`
                `(B, P)` marking real tokens (None = no padding).
            max_new_tokens: >= 1; prompt length + max_new_tokens must fit
                `config.max_position_embeddings`.
            temperature: divides the logits when sampling; 0 means greedy.
            top_k / top_p: see `filter_logits` (0 / 1.0 = off).
            repetition_penalty: CTRL penalty over the row's real prompt tokens and its
                generated tokens (padding excluded); 1.0 = off. Applied to greedy too.
            do_sample: sample (True) or take the argmax (False); None = `temperature > 0`.
            seed: seeds a private `torch.Generator`, so equal seeds give equal samples;
                None draws from torch's global RNG.
            stop_on_eos: a row stops after producing an EOS id (later positions get the pad
                id and mask 0); the loop ends when every row has stopped.
            return_logprobs: fill `logprobs` (raw model, temperature 1) and
                `sampling_logprobs` (the sampling distribution); see `GenerationOutput`.
            logprob_temperature: `logprobs` are taken from `log_softmax(logits / this)`
                instead (RL code scores the tempered policy it samples from, as TRL does);
                must be > 0.

        Returns a `GenerationOutput` whose tensors are on the model's device and are ordinary
        tensors (not inference-mode tensors), so they can feed a training forward.

        Raises:
            UserError: on empty prompts, ids outside the vocabulary, right padding, too long a
                context, or invalid sampling settings.
        """
        ids, mask = self._prepare_prompts(prompts, attention_mask)
        sampling = self._check_sampling(
            ids.shape[1], max_new_tokens, temperature, top_k, top_p, repetition_penalty, do_sample, stop_on_eos
        )
        if not logprob_temperature > 0:
            raise UserError(f"logprob_temperature must be > 0, got {logprob_temperature}")
        generator = self._generator(seed)
        tokens, alive, raw_lp, samp_lp = [], [], [], []
        with self._context():
            lp_temp = float(logprob_temperature) if return_logprobs else None
            steps = self._decode(ids, mask, max_new_tokens, sampling, generator, lp_temp)
            for tok, was_alive, lp, slp in steps:
                tokens.append(tok)
                alive.append(was_alive)
                if return_logprobs:
                    raw_lp.append(lp)
                    samp_lp.append(slp)
            completion = torch.stack(tokens, dim=1)  # (B, N)
            alive_mask = torch.stack(alive, dim=1)  # (B, N) bool
            completion_mask = alive_mask.long()
            logprobs = sampling_logprobs = None
            if return_logprobs:
                logprobs = torch.stack(raw_lp, dim=1).masked_fill(~alive_mask, 0.0)
                sampling_logprobs = torch.stack(samp_lp, dim=1).masked_fill(~alive_mask, 0.0)
        # Clone outside inference mode: inference tensors cannot be saved for backward, and RL
        # code feeds these straight into a training forward.
        return GenerationOutput(
            sequences=torch.cat([ids, completion], dim=1).clone(),
            completion_ids=completion.clone(),
            completion_mask=completion_mask.clone(),
            prompt_mask=mask.long().clone(),
            logprobs=None if logprobs is None else logprobs.clone(),
            sampling_logprobs=None if sampling_logprobs is None else sampling_logprobs.clone(),
        )

    def stream(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        do_sample: bool | None = None,
        seed: int | None = None,
        stop_on_eos: bool = True,
    ) -> Iterator[int]:
        """Yield the generated token ids of one prompt one at a time, as they are produced.

        Same settings and same tokens as `generate` on a batch of one. The EOS id that ends the
        stream is *not* yielded (check `len(...) < max_new_tokens` to tell the two stops
        apart); with `stop_on_eos=False` every token, EOS ids included, is yielded.
        Inference mode and autocast are only active inside each step, never while the caller
        runs between tokens.

        Raises:
            UserError: as `generate` (checked before the first token).
        """
        if isinstance(prompt_ids, torch.Tensor):
            if prompt_ids.dim() != 1:
                raise UserError(f"stream takes one prompt (1-D ids), got shape {tuple(prompt_ids.shape)}")
            prompt_ids = prompt_ids.tolist()
        ids, mask = self._prepare_prompts([list(prompt_ids)], None)
        sampling = self._check_sampling(
            ids.shape[1], max_new_tokens, temperature, top_k, top_p, repetition_penalty, do_sample, stop_on_eos
        )
        return self._stream(ids, mask, max_new_tokens, sampling, self._generator(seed))

    def _stream(self, ids, mask, max_new_tokens, sampling, generator) -> Iterator[int]:
        steps = self._decode(ids, mask, max_new_tokens, sampling, generator, False)
        eos = set(self.eos_token_ids)
        while True:
            with self._context():
                try:
                    tok, was_alive, _, _ = next(steps)
                except StopIteration:
                    return
                token = int(tok[0])
            if not bool(was_alive[0]):
                return
            if sampling.stop_on_eos and token in eos:
                return
            yield token

    # ---------------------------------------------------------------- validation

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.model.lm_head.weight.device

    def _compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in: the model's, or the lower one asked for at construction.

        Raises:
            UserError: if a dtype above the model's was asked (autocast only lowers precision).
        """
        model_dtype = self.model.lm_head.weight.dtype
        if self.dtype is None or self.dtype == model_dtype:
            return model_dtype
        if self.dtype == torch.int8:
            if not hasattr(torch, "_weight_int8pack_mm"):
                raise UserError("dtype int8 needs torch._weight_int8pack_mm (torch >= 2.4); use bfloat16")
            return torch.bfloat16  # int8 weights, bf16 activations
        if self.dtype not in (torch.bfloat16, torch.float16) or model_dtype != torch.float32:
            raise UserError(
                f"dtype {self.dtype} is not available for a {model_dtype} model: use None (the model's dtype), "
                "bfloat16/float16 with an fp32 model, or int8 (weight-only)"
            )
        return self.dtype

    def _context(self) -> contextlib.ExitStack:
        """Inference mode, plus autocast when a lower compute dtype than the model's was asked."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self._compute_dtype() != self.model.lm_head.weight.dtype:
            stack.enter_context(torch.autocast(self.device.type, dtype=self._compute_dtype()))
        return stack

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        return gen

    def _prepare_prompts(
        self, prompts: Sequence[Sequence[int]] | torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> left-padded ids `(B, P)` int64 and mask `(B, P)` bool on the model device."""
        vocab = self.config.vocab_size
        if isinstance(prompts, torch.Tensor):
            if prompts.dim() == 1:
                prompts = prompts[None]
                attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
            if prompts.dim() != 2 or prompts.dtype.is_floating_point or prompts.dtype == torch.bool:
                raise UserError(
                    f"prompt tensor must be integer ids of shape (B, P), got {prompts.dtype} {tuple(prompts.shape)}"
                )
            ids = prompts.to(self.device, torch.long)
            if attention_mask is None:
                mask = torch.ones_like(ids, dtype=torch.bool)
            else:
                if tuple(attention_mask.shape) != tuple(ids.shape):
                    raise UserError(
                        f"attention_mask shape {tuple(attention_mask.shape)} does not match prompts {tuple(ids.shape)}"
                    )
                mask = attention_mask.to(self.device).bool()
                # Left padding means the mask never goes from 1 back to 0 along a row.
                if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
                    raise UserError("prompts must be left-padded: attention_mask has a 0 after a 1")
            if ids.numel() == 0 or not bool(mask[:, -1].all()):
                raise UserError("every prompt needs at least one token")
            real = ids[mask]
        else:
            rows = [list(p) for p in prompts]
            if not rows:
                raise UserError("no prompts given")
            if any(len(r) == 0 for r in rows):
                raise UserError("every prompt needs at least one token")
            length = max(len(r) for r in rows)
            padded = [[self.pad_token_id] * (length - len(r)) + r for r in rows]
            flags = [[False] * (length - len(r)) + [True] * len(r) for r in rows]
            try:
                ids = torch.tensor(padded, dtype=torch.long, device=self.device)
            except (TypeError, ValueError, RuntimeError) as err:
                raise UserError(f"prompts must be lists of integer token ids: {err}") from None
            mask = torch.tensor(flags, dtype=torch.bool, device=self.device)
            real = ids[mask]
        if bool(((real < 0) | (real >= vocab)).any()):
            bad = real[(real < 0) | (real >= vocab)][0].item()
            raise UserError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        return ids, mask

    def _check_sampling(
        self, prompt_len, max_new_tokens, temperature, top_k, top_p, repetition_penalty, do_sample, stop_on_eos
    ) -> _Sampling:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        limit = self.config.max_position_embeddings
        if prompt_len + max_new_tokens > limit:
            raise UserError(
                f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} = {prompt_len + max_new_tokens} "
                f"exceeds the model's max_position_embeddings {limit}"
            )
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if do_sample is None:
            do_sample = temperature > 0
        if do_sample and temperature == 0:
            raise UserError("do_sample=True needs temperature > 0 (temperature 0 means greedy)")
        if not isinstance(top_k, int) or top_k < 0:
            raise UserError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        if not 0 < top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}")
        if repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        return _Sampling(
            float(temperature), top_k, float(top_p), float(repetition_penalty), bool(do_sample), bool(stop_on_eos)
        )

    # ---------------------------------------------------------------- the decoder

    def _decode(
        self,
        ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        max_new: int,
        sampling: _Sampling,
        generator: torch.Generator | None,
        want_logprobs: float | bool | None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Prefill then decode; yields per step `(token (B,), alive (B,) bool, raw logprob (B,),
        sampling logprob (B,))`, where `alive` says whether the row was still generating (its
        token is real, not padding after EOS). `want_logprobs`: None/False = no log-probs, else
        the temperature the raw log-probs are taken at (True = 1). Must run inside
        `self._context()`."""
        model = self.model
        cfg = self.config
        b, p = ids.shape
        s = p + max_new
        device = ids.device
        compute_dtype = self._compute_dtype()
        n_layers = len(model.model.layers)
        # (L, 2, B, K, S, D) zeros: every slot read is written first, zeros only make sure an
        # unwritten slot could never inject NaN through a masked score.
        cache = torch.zeros(n_layers, 2, b, self.num_kv_heads, s, self.head_dim, dtype=compute_dtype, device=device)

        padded = not bool(prompt_mask.all())
        # Positions count real tokens only, as the model does (cumsum of the mask - 1).
        prompt_pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
        n_real = prompt_mask.long().sum(-1)  # (B,)
        step_pos = n_real[:, None] + torch.arange(max_new, device=device)[None]  # (B, N)
        # Rotary tables for every position once, by the model's module so scaling matches.
        embed_dtype = model.model.embed_tokens.weight.dtype
        all_pos = torch.arange(s, device=device)[None]
        cos_tab, sin_tab = model.model.rotary_emb(torch.empty(0, dtype=embed_dtype, device=device), all_pos)
        cos_tab, sin_tab = cos_tab[0], sin_tab[0]  # (S, D)
        cos_step, sin_step = cos_tab[step_pos], sin_tab[step_pos]  # (B, N, D)

        # Prefill mask (B, 1, P, P): causal and not padding; a padding query keeps its own
        # diagonal so no softmax row is empty (those outputs are never used). None -> is_causal.
        if padded:
            causal = torch.ones(p, p, dtype=torch.bool, device=device).tril()
            prefill_mask = causal[None] & prompt_mask[:, None, :]
            prefill_mask |= torch.eye(p, dtype=torch.bool, device=device)[None]
            prefill_mask = prefill_mask[:, None]
            # Key validity over the whole cache: generated slots are always valid.
            valid = torch.ones(b, 1, 1, s, dtype=torch.bool, device=device)
            valid[:, 0, 0, :p] = prompt_mask
        else:
            prefill_mask = None
            valid = None
        window = getattr(cfg, "sliding_window", None)
        if window:
            # Sliding-window attention (Mistral): a query at position q sees keys at positions
            # q-W+1..q only. Positions, not cache slots, decide (left padding shifts slots).
            slot_pos = torch.cat([prompt_pos, step_pos], dim=1)  # (B, S) position of each cache slot
            near = slot_pos[:, None, :p] > prompt_pos[:, :, None] - window  # (B, P, P)
            if prefill_mask is None:
                prefill_mask = (torch.ones(p, p, dtype=torch.bool, device=device).tril()[None] & near)[:, None]
            else:
                prefill_mask = prefill_mask & near[:, None]
                prefill_mask |= torch.eye(p, dtype=torch.bool, device=device)[None, None]
            if valid is None:
                valid = torch.ones(b, 1, 1, s, dtype=torch.bool, device=device)

        seen_sink = seen = None
        if sampling.repetition_penalty != 1.0:
            # (B, V + 1): the extra column is a sink for padding / finished rows, so one
            # scatter of True marks exactly the real tokens.
            seen_sink = torch.zeros(b, cfg.vocab_size + 1, dtype=torch.bool, device=device)
            seen_sink.scatter_(1, ids.masked_fill(~prompt_mask, cfg.vocab_size), True)
            seen = seen_sink[:, : cfg.vocab_size]  # (B, V) view

        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
        stop = sampling.stop_on_eos and eos.numel() > 0
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        pad = torch.full((b,), self.pad_token_id, dtype=torch.long, device=device)

        linears = self._prepared_linears(compute_dtype)
        x = model.model.embed_tokens(ids)  # (B, P, C)
        logits = self.forward_layers(
            x, cos_tab[prompt_pos], sin_tab[prompt_pos], cache, 0, prefill_mask, linears, last_only=True
        )
        for i in range(max_new):
            logits = logits.float()  # (B, V)
            scores = logits if seen is None else apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
            if sampling.do_sample:
                filtered = filter_logits(scores, sampling.temperature, sampling.top_k, sampling.top_p)
                tok = draw(filtered.softmax(-1), generator)
            else:
                filtered = None
                tok = scores.argmax(-1)
            lp = slp = None
            if want_logprobs:
                lp_logits = logits if want_logprobs is True or want_logprobs == 1.0 else logits / want_logprobs
                lp = lp_logits.log_softmax(-1).gather(1, tok[:, None]).squeeze(1)
                if filtered is None:
                    slp = torch.zeros_like(lp)
                else:
                    slp = filtered.log_softmax(-1).gather(1, tok[:, None]).squeeze(1)
            alive = ~finished
            tok = torch.where(finished, pad, tok)
            if seen_sink is not None:
                seen_sink.scatter_(1, torch.where(alive, tok, cfg.vocab_size)[:, None], True)
            if stop:
                finished = finished | torch.isin(tok, eos)
            yield tok, alive, lp, slp
            if i == max_new - 1 or (stop and bool(finished.all())):
                return
            x = model.model.embed_tokens(tok[:, None])  # (B, 1, C)
            mask = None if valid is None else valid[..., : p + i + 1]
            if window:
                mask = mask & (slot_pos[:, None, None, : p + i + 1] > step_pos[:, i, None, None, None] - window)
            logits = self.forward_layers(
                x, cos_step[:, i : i + 1], sin_step[:, i : i + 1], cache, p + i, mask, linears, last_only=False
            )

    def _prepared_linears(self, compute_dtype: torch.dtype) -> dict:
        """`_low_precision_linears`, reused across calls while no parameter has changed.

        A parameter's `_version` counter moves on every in-place update (optimizer steps,
        `load_state_dict`), so a chat or an evaluation loop pays the cast / quantization once,
        while RL, which updates the weights between rollouts, gets fresh ones each time.
        """
        key = (compute_dtype, self.dtype, tuple((id(p), p._version) for p in self.model.parameters()))
        # Fused optimizers (AdamW(fused=True), the loop's default on CPU and CUDA) update the
        # weights without moving `_version`: code that trains between calls must `refresh()`.
        cached = getattr(self, "_prepared", None)
        if cached is None or cached[0] != key:
            self._prepared = (key, self._low_precision_linears(compute_dtype))
        return self._prepared[1]

    def refresh(self) -> None:
        """Forget the weights cast at an earlier call, so the next call reads the model anew.

        Needed after the weights changed in a way `_version` does not record (fused optimizer
        steps); RL rollouts call it before every sampling round."""
        self._prepared = None

    def _low_precision_linears(self, compute_dtype: torch.dtype) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """Weights of the plain `nn.Linear` layers cast once to `compute_dtype`, keyed by module id.

        Only used when computing below the model's dtype: CPU autocast does not keep its
        weight-cast cache under inference mode, so without this every decode step would
        re-cast all weights (`benchmarks/bench_decode.py` shows the bf16 rows). Built per
        call, so weight updates between calls are seen. Other module types (LoRA wrappers)
        are called as modules under autocast instead. With `dtype=torch.int8` every entry is
        then quantized (`quantize_int8`).
        """
        if compute_dtype == self.model.lm_head.weight.dtype:
            return {}
        out: dict = {}
        for module in self.model.modules():
            if type(module) is torch.nn.Linear and module.weight.dtype != compute_dtype:
                bias = None if module.bias is None else module.bias.to(compute_dtype)
                out[id(module)] = (module.weight.to(compute_dtype), bias)
        # Fused projections: q|k|v and gate|up as one matrix each, so a decode step makes 4
        # matmuls per layer instead of 7 (at batch 1 the per-call overhead rivals the weight
        # reads). Low precision only: in the model's own dtype the engine keeps the exact
        # calls `generate` makes, so greedy tokens match bit for bit.
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            if all(id(x) in out for x in (a.q_proj, a.k_proj, a.v_proj)):
                out[("qkv", id(a))] = concat_linear([out[id(a.q_proj)], out[id(a.k_proj)], out[id(a.v_proj)]])
            if type(m) is MiniGPTMLP and id(m.gate_proj) in out and id(m.up_proj) in out:
                out[("gate_up", id(m))] = concat_linear([out[id(m.gate_proj)], out[id(m.up_proj)]])
        if self.dtype == torch.int8:
            out = {key: quantize_int8(*wb) for key, wb in out.items()}
        elif compute_dtype == torch.bfloat16 and self.device.type == "cpu" and can_prepack():
            superseded = set()
            for layer in self.model.model.layers:
                a, m = layer.self_attn, layer.mlp
                if ("qkv", id(a)) in out:
                    superseded.update((id(a.q_proj), id(a.k_proj), id(a.v_proj)))
                if ("gate_up", id(m)) in out:
                    superseded.update((id(m.gate_proj), id(m.up_proj)))
            out = {key: wb if key in superseded else prepack(*wb) for key, wb in out.items()}
        return out

    def forward_layers(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: torch.Tensor,
        start: int | torch.Tensor,
        mask: torch.Tensor | None,
        linears: dict[int, tuple[torch.Tensor, torch.Tensor | None]],
        last_only: bool | torch.Tensor,
    ) -> torch.Tensor:
        """Run the stack on `x (B, T, C)` whose tokens sit at cache slots `start..start+T-1`.

        cos/sin `(B, T, D)`; mask `(B, 1, T, start+T)` bool (True = may attend) or None
        (plain causal for prefill, everything for a single decode token); `linears` from
        `_low_precision_linears`. Returns logits `(B, V)` of the last position, or with
        `last_only` a `(B,)` int64 tensor, of position `last_only[b]` in row b (right-padded
        prompts of different lengths); only those positions go through the final norm and head.

        `start` may also be a `(B,)` int64 tensor when T == 1: row b's token is written at
        cache slot `start[b]` (continuous batching, where every row sits at its own position);
        keys then span slots `0..max(start)`, and `mask` `(B, 1, 1, max(start)+1)` must hide
        each row's slots beyond its own.
        """

        def lin(module: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
            weights = linears.get(id(module))
            return module(inp) if weights is None else packed_linear(inp, weights)

        low = self._compute_dtype() if linears else None

        def norm(module: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
            # In low precision, the model's RMSNorm as one fused fp32 op and one cast (the
            # module spends ~8 small ops per call, 2 norms per layer, each decode step).
            if low is None or type(module) is not MiniGPTRMSNorm:
                return module(inp)
            return F.rms_norm(inp.float(), (inp.shape[-1],), module.weight.float(), module.variance_epsilon).to(low)

        model = self.model
        b, t, _ = x.shape
        h_, k_, d_ = self.num_heads, self.num_kv_heads, self.head_dim
        rep = h_ // k_
        per_row = isinstance(start, torch.Tensor)
        if per_row:
            rows = torch.arange(b, device=x.device)
            end = int(start.max()) + 1
        else:
            end = start + t
        for li, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            h = norm(layer.input_layernorm, x)
            fused = linears.get(("qkv", id(attn)))
            if fused is not None:
                # One rotary call for q and k together: (B, H+K, T, D) -> split.
                qkv = packed_linear(h, fused).view(b, t, h_ + 2 * k_, d_).transpose(1, 2)  # (B, H+2K, T, D)
                qk = qkv[:, : h_ + k_]
                if hasattr(attn, "q_norm"):
                    qk = torch.cat([norm(attn.q_norm, qk[:, :h_]), norm(attn.k_norm, qk[:, h_:])], dim=1)
                qk = apply_rotary(qk, cos, sin)
                q, k, v = qk[:, :h_], qk[:, h_:], qkv[:, h_ + k_ :]
            else:
                q, k, v = lin(attn.q_proj, h), lin(attn.k_proj, h), lin(attn.v_proj, h)
                q = q.view(b, t, h_, d_).transpose(1, 2)  # (B, H, T, D)
                k = k.view(b, t, k_, d_).transpose(1, 2)  # (B, K, T, D)
                v = v.view(b, t, k_, d_).transpose(1, 2)  # (B, K, T, D)
                if hasattr(attn, "q_norm"):
                    q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            kc, vc = cache[li, 0], cache[li, 1]  # (B, K, S, D) views
            if per_row:
                kc[rows, :, start] = k[:, :, 0]  # (B, K, D) into each row's own slot
                vc[rows, :, start] = v[:, :, 0]
            else:
                kc[:, :, start:end] = k
                vc[:, :, start:end] = v
            keys, values = kc[:, :, :end], vc[:, :, :end]  # (B, K, end, D)
            if t == 1:
                # Grouped-query trick: the `rep` query heads sharing one K/V head become `rep`
                # query rows of one SDPA head, so K/V are never expanded or copied.
                y = F.scaled_dot_product_attention(q.reshape(b, k_, rep, d_), keys, values, attn_mask=mask)
                y = y.reshape(b, 1, h_ * d_)  # (B, K, rep, D) -> (B, 1, H*D), head = kv*rep + r
            else:
                if rep > 1:
                    keys = keys[:, :, None].expand(b, k_, rep, end, d_).reshape(b, h_, end, d_)
                    values = values[:, :, None].expand(b, k_, rep, end, d_).reshape(b, h_, end, d_)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None)
                y = y.transpose(1, 2).reshape(b, t, h_ * d_)
            x = x + lin(attn.o_proj, y)
            x = x + self._mlp(layer.mlp, norm(layer.post_attention_layernorm, x), lin, linears.get(("gate_up", id(layer.mlp))))
        if isinstance(last_only, torch.Tensor):
            x = x[torch.arange(b, device=x.device), last_only][:, None]  # (B, 1, C)
        elif last_only:
            x = x[:, -1:]
        return soft_cap_logits(lin(model.lm_head, norm(model.model.norm, x))[:, -1], model.config)  # (B, V)

    @staticmethod
    def _mlp(mlp: torch.nn.Module, x: torch.Tensor, lin, gate_up=None) -> torch.Tensor:
        """The model's gated feed-forward with cached low-precision weights (fused gate|up when given); a
        mixture of experts with the same weights for its router and every expert (only the
        experts some token chose run); any other feed-forward module is called as is."""
        if gate_up is not None:
            gate, up = packed_linear(x, gate_up).chunk(2, dim=-1)
            return lin(mlp.down_proj, mlp.act_fn(gate) * up)
        if type(mlp) is MiniGPTMLP:
            return gated_mlp(mlp, x, lin)
        if isinstance(mlp, MiniGPTSparseMoeBlock):
            return mlp(x, linear=lin)[0]
        return mlp(x)


