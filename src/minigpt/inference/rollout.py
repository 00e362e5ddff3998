"""The rollout engine: batched sampling of completions for online RL (GRPO, PPO).

A rollout is the producer side of DESIGN principle 5: it samples `group_size` completions per
prompt on the fast decoding path (`minigpt.inference.GenerationEngine`: left-padded prompts, a
preallocated KV cache, per-row stop, temperature / top-k / top-p) and returns them as a
`Rollout` with the log-probabilities of the sampled tokens. Objectives consume it.

Shapes: B = rows (prompts × group_size), P = padded prompt length, N = completion positions
(the longest completion of the batch), V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from minigpt.errors import UserError
from minigpt.inference.engine import GenerationEngine
from minigpt.losses.preference import sequence_logprobs
from minigpt.model.modeling import soft_cap_logits


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts, grouped by prompt.

    Rows `[g * group_size, (g + 1) * group_size)` are the samples of prompt `g`.

    Attributes:
        prompt_ids: `(B, P)` int64, left-padded with the pad id.
        prompt_mask: `(B, P)` int64, 1 on real prompt tokens.
        completion_ids: `(B, N)` int64, right-padded: after a row's stop token come pad ids.
        completion_mask: `(B, N)` int64, 1 on generated tokens up to and including the stop
            token that ended the row.
        logprobs: `(B, N)` float32, log π(token | prefix) of each sampled token under the
            policy at the sampling temperature (`log_softmax(logits / temperature)`, before
            top-k / top-p), as computed while sampling; 0 where `completion_mask` is 0.
        truncated: `(B,)` bool, True for rows that hit `max_new_tokens` without a stop token.
        group_size: samples per prompt (G).
        temperature: the sampling temperature the log-probs refer to.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    truncated: torch.Tensor
    group_size: int = 1
    temperature: float = 1.0

    @property
    def input_ids(self) -> torch.Tensor:
        """`(B, P + N)`: prompts then completions, for a training forward."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """`(B, P + N)` int64: 1 on real prompt and completion tokens."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """`(B,)` int64: generated tokens per row (the stop token included)."""
        return self.completion_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def to(self, device: torch.device | str) -> "Rollout":
        """A copy with every tensor on `device`."""
        return Rollout(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the completion tokens under `model` (one full forward).

    Args:
        model: a causal LM. When it has the `transformers` `.model` backbone and `.lm_head`
            (MiniGPT, also with in-place LoRA adapters) the LM head runs only on the N
            positions that predict completion tokens.
        input_ids: `(B, P + N)` prompts (left-padded) then completions (right-padded).
        attention_mask: `(B, P + N)` 1 on real tokens.
        completion_mask: `(B, N)` 1 on the completion tokens to score.
        temperature: logits are divided by it before `log_softmax` (the sampled policy).
        return_entropy: also return the entropy (nats) of each scored position's
            distribution.

    Returns `logprobs (B, N)` float32 (0 where `completion_mask` is 0), and with
    `return_entropy` also `entropy (B, N)` float32; differentiable when grad is enabled.
    """
    n = completion_mask.shape[1]
    p = input_ids.shape[1] - n
    if p < 1:
        raise UserError("completion_logprobs needs at least one prompt position before the completion")
    backbone, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    sel = completion_mask.bool()  # (B, N)
    targets = input_ids[:, p:][sel]  # (K,)
    if backbone is not None and head is not None:
        h = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = soft_cap_logits(head(h[:, p - 1 : p + n - 1][sel]), getattr(model, "config", None))  # (K, V): position t predicts token t + 1
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, p - 1 : p + n - 1][sel]
    if temperature != 1.0:
        logits = logits / temperature
    token_logprobs, _ = sequence_logprobs(logits[:, None], targets[:, None])  # (K,)
    out = torch.zeros(completion_mask.shape, dtype=torch.float32, device=input_ids.device)
    out = out.masked_scatter(sel, token_logprobs)
    if not return_entropy:
        return out
    ent = _entropy(logits)
    entropy = torch.zeros(completion_mask.shape, dtype=torch.float32, device=input_ids.device).masked_scatter(sel, ent)
    return out, entropy


def _entropy(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """`(K, V)` logits -> `(K,)` fp32 entropies, in row chunks to bound the fp32 copy."""
    parts = []
    for s in range(0, logits.shape[0], chunk):
        lp = logits[s : s + chunk].float().log_softmax(-1)
        parts.append(-(lp.exp() * lp).sum(-1))
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


class RolloutEngine:
    """Sample `group_size` completions per prompt with the fast engine.

    Args:
        model: a `MiniGPTForCausalLM` (or a PEFT model around one); read at every call, so
            the engine follows the policy as it trains.
        eos_token_id: stop id(s) (for chat models `<|im_end|>` and the EOS id); None takes the
            model config's.
        pad_token_id: pad id for left padding and after a stop.
        dtype: compute dtype of sampling (None = the model's; `torch.bfloat16` is the fast
            path on CPUs with AMX and on GPUs).
        max_batch_size: rows decoded together (None = all rows at once).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        self.engine = GenerationEngine(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, dtype=dtype)
        self.max_batch_size = max_batch_size

    @property
    def pad_token_id(self) -> int:
        return self.engine.pad_token_id

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        group_size: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Rollout:
        """Sample `group_size` completions for each of the prompts (token-id lists).

        `temperature == 0` decodes greedily (for evaluation; log-probs then refer to
        temperature 1). `seed` makes the draw reproducible (None uses torch's global RNG).

        Raises:
            UserError: no prompts, an empty prompt, `group_size < 1`, or a prompt whose length
                plus `max_new_tokens` exceeds the model's context (the error names the prompt's
                index and length).
        """
        prompts = [list(p) for p in prompts]
        if not prompts:
            raise UserError("no prompts to sample from")
        if not isinstance(group_size, int) or group_size < 1:
            raise UserError(f"group_size must be a positive integer, got {group_size!r}")
        limit = self.engine.config.max_position_embeddings
        for i, p in enumerate(prompts):
            if not p:
                raise UserError(f"prompt {i} is empty")
            if len(p) + max_new_tokens > limit:
                raise UserError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} it exceeds the "
                    f"model's context of {limit} tokens (shorten the prompt or lower max_new_tokens)"
                )
        rows = [p for p in prompts for _ in range(group_size)]
        self.engine.refresh()  # the policy trained since the last call (fused AdamW leaves no trace)
        step = self.max_batch_size or len(rows)
        lp_temp = temperature if temperature > 0 else 1.0
        parts = []
        for s in range(0, len(rows), step):
            parts.append(
                self.engine.generate(
                    rows[s : s + step],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    seed=None if seed is None else seed + s,
                    return_logprobs=True,
                    logprob_temperature=lp_temp,
                )
            )
        pad = self.engine.pad_token_id
        prompt_ids = _cat_padded([o.sequences[:, : o.prompt_mask.shape[1]] for o in parts], pad, left=True)
        prompt_mask = _cat_padded([o.prompt_mask for o in parts], 0, left=True)
        completion_ids = _cat_padded([o.completion_ids for o in parts], pad, left=False)
        completion_mask = _cat_padded([o.completion_mask for o in parts], 0, left=False)
        logprobs = _cat_padded([o.logprobs for o in parts], 0.0, left=False)
        ends = completion_mask.sum(1) - 1  # index of each row's last generated token
        last = completion_ids.gather(1, ends.clamp(min=0)[:, None]).squeeze(1)
        eos = torch.tensor(self.engine.eos_token_ids or [-1], device=last.device)
        truncated = ~torch.isin(last, eos)
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, truncated, group_size, lp_temp)


def _cat_padded(tensors: list[torch.Tensor], value, left: bool) -> torch.Tensor:
    """Concatenate `(b_i, L_i)` tensors along rows, padding to the longest `L` on the left or right."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        gap = width - t.shape[1]
        if gap:
            fill = torch.full((t.shape[0], gap), value, dtype=t.dtype, device=t.device)
            t = torch.cat([fill, t] if left else [t, fill], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)


__all__ = ["Rollout", "RolloutEngine", "completion_logprobs"]
