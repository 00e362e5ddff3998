"""What the online-RL objectives (GRPO/GSPO, PPO) share on their producer side: the
rollout engine that follows the policy, the reference policy's log-probs (a frozen model, or
the policy with its LoRA adapters disabled), completions decoded for reward functions, and the
floats logged per rollout."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import torch

from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import check_rl_sampling
from minigpt.losses.advantages import group_stats
from minigpt.model.lora import adapters_disabled, has_adapters
from minigpt.inference.rollout import Rollout, RolloutEngine, completion_logprobs


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run `model` in eval mode (no dropout) and restore its mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class RolloutObjective:
    """Base of the objectives that sample their own training data.

    Args:
        config: the algorithm's config (`minigpt.objectives.config`; one with `resolved()`
            has its None fields filled here).
        sampling: how completions are sampled (a `SamplingOptions`: length, temperature,
            filters); log-probs are taken at its temperature.
        reward_fn: a `minigpt.rewards.functions.CombinedReward` (`(prompts, completions, **columns)
            -> (totals, per_function)`).
        tokenizer: decodes prompts and completions for `reward_fn`.
        ref_model: frozen reference policy, or None (see `reference_or_none`).
        engine_dtype: compute dtype of sampling (None = the model's).
        eos_token_id / pad_token_id: stop id(s) and pad id for sampling.
        grad_accum: micro-batches per optimizer step (decides which micro-batches still see
            the sampling policy).

    Raises:
        UserError: sampling settings online RL cannot train on (`check_rl_sampling`).
    """

    unit_name = "completion tokens"

    def __init__(
        self,
        config,
        sampling: SamplingOptions,
        reward_fn: Callable | None = None,
        tokenizer=None,
        ref_model: torch.nn.Module | None = None,
        engine_dtype: torch.dtype | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        grad_accum: int = 1,
    ) -> None:
        check_rl_sampling(sampling)
        # A config whose None fields take the algorithm's values (GRPOConfig) is resolved once.
        self.config = config.resolved() if hasattr(config, "resolved") else config
        self.sampling = sampling
        self.reward_fn = reward_fn
        self.tokenizer = tokenizer
        self.ref_model = ref_model
        self.engine_dtype = engine_dtype
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.grad_accum = grad_accum
        self._engine: RolloutEngine | None = None
        self._engine_model: torch.nn.Module | None = None

    def engine(self, policy: torch.nn.Module) -> RolloutEngine:
        """The rollout engine over `policy` (made once, re-reading the weights every call)."""
        if self._engine is None or self._engine_model is not policy:
            self._engine = RolloutEngine(policy, self.eos_token_id, self.pad_token_id, self.engine_dtype)
            self._engine_model = policy
        return self._engine

    def reference_or_none(self, policy, input_ids, attention_mask, completion_mask) -> torch.Tensor | None:
        """`(B, N)` log-probs of the completions under the reference policy (no grad): the
        frozen `ref_model`, else `policy` with its adapters disabled; None when there is neither."""
        t = self.sampling.temperature
        if self.ref_model is not None:
            with eval_mode(self.ref_model):
                return completion_logprobs(self.ref_model, input_ids, attention_mask, completion_mask, t)
        if has_adapters(policy):
            with adapters_disabled(policy):
                return completion_logprobs(policy, input_ids, attention_mask, completion_mask, t)
        return None


def decode_completions(tokenizer, rollout: Rollout) -> tuple[list[str], list[list[int]]]:
    """Completion texts for reward functions: special tags kept, the stop token and padding
    dropped. Returns `(texts, ids)` with `ids` the token ids of each text."""
    texts, ids = [], []
    for row, mask, cut in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist(), rollout.truncated.tolist()):
        n = sum(mask)
        toks = row[: n if cut else max(n - 1, 0)]
        ids.append(toks)
        texts.append(tokenizer.decode(toks, skip_special_tokens=False))
    return texts, ids


def score_rollout(
    reward_fn: Callable,
    tokenizer,
    rollout: Rollout,
    prompt_ids: Sequence[Sequence[int]],
    prompts: Sequence[str] | None = None,
    columns: Mapping[str, Sequence] | None = None,
) -> tuple[torch.Tensor, dict[str, list]]:
    """Score every completion of `rollout` with `reward_fn`.

    Args:
        reward_fn: `(prompts, completions, **columns) -> (totals, per_function)` (a
            `minigpt.rewards.functions.CombinedReward`).
        tokenizer: decodes the completions (and the prompts when `prompts` is None).
        rollout: `group_size` rows per prompt.
        prompt_ids / prompts / columns: one entry per *prompt* (each column a list); they are
            repeated `group_size` times to line up with the rows.

    Returns `rewards (B,)` float32 on the rollout's device and the per-function values.

    Raises:
        UserError: from `reward_fn` (a failing function, naming it and the sample).
    """
    g = rollout.group_size
    texts, ids = decode_completions(tokenizer, rollout)
    if prompts is None:
        prompts = [tokenizer.decode(list(p), skip_special_tokens=False) for p in prompt_ids]
    cols = {k: [v for v in vals for _ in range(g)] for k, vals in (columns or {}).items()}
    totals, per_function = reward_fn(
        [p for p in prompts for _ in range(g)], texts, completion_ids=ids, prompt_ids=[list(p) for p in prompt_ids for _ in range(g)], **cols
    )
    return torch.tensor(totals, dtype=torch.float32, device=rollout.prompt_ids.device), per_function


def reward_means(per_function: Mapping[str, Sequence] | None) -> dict[str, float]:
    """`{"reward/<name>": mean}` of each reward function over the samples it applied to
    (None, NaN and inf values left out)."""
    out = {}
    for name, values in (per_function or {}).items():
        real = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if real:
            out[f"reward/{name}"] = sum(real) / len(real)
    return out


def rollout_metrics(rollout: Rollout, rewards: torch.Tensor, per_function: dict[str, list] | None = None) -> dict[str, float]:
    """Floats logged per rollout: `mean_reward`, `group_variance`, `frac_zero_std`, mean
    `completion_length`, `truncated_fraction`, and `reward/<name>` per reward function."""
    m = {k: float(v) for k, v in group_stats(rewards, rollout.group_size).items()}
    m["completion_length"] = float(rollout.completion_lengths.float().mean())
    m["truncated_fraction"] = float(rollout.truncated.float().mean())
    m.update(reward_means(per_function))
    return m
