"""The GRPO / GSPO objective: group-relative policy optimisation on sampled completions.

Producer side (`make_batches`, run by the loop without gradients): sample `group_size`
completions per prompt with the rollout engine, score them with the reward functions, turn the
rewards into group advantages, and compute the log-probs the loss needs from the reference
policy (KL term) and, when the policy will have moved before a micro-batch is used, from the
sampling policy (importance ratio). Consumer side (`compute_loss`): the clipped surrogate of
`minigpt.losses.policy` plus β·KL, aggregated per token or per sequence.

GRPO: Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300) eq. 3; GSPO: Zheng et al. 2025
(arXiv:2507.18071) eq. 5-7.

Micro-batch keys (B rows, L = P + N columns, N completion positions):
`input_ids (B, L)`, `attention_mask (B, L)`, `completion_mask (B, N)`, `advantages (B,)`,
optional `old_logprobs (B, N)` (absent: the policy has not moved since sampling, so the ratio
is exactly 1 and `logprobs.detach()` stands in), optional `ref_logprobs (B, N)` (β > 0), and on
the first micro-batch of a rollout `rollout_metrics` (floats).
"""

from __future__ import annotations

from typing import Any

import torch

from minigpt.errors import UserError
from minigpt.losses.advantages import group_advantages
from minigpt.losses.kl import kl_estimate
from minigpt.losses.policy import aggregate, cispo_policy_loss, clipped_policy_loss
from minigpt.train.objective import LossOutput
from minigpt.objectives.rollout import RolloutObjective, eval_mode, rollout_metrics, score_rollout
from minigpt.inference.rollout import completion_logprobs

__all__ = ["GRPOObjective"]

class GRPOObjective(RolloutObjective):
    """GRPO/GSPO for the one training loop (see the module docstring).

    Args:
        config: a `minigpt.objectives.config.GRPOConfig` (its None fields are resolved here).
        sampling: how completions are sampled (`SamplingOptions`; log-probs are taken at its
            temperature).
        reward_fn: a `minigpt.rewards.functions.CombinedReward` (or any callable with its contract:
            `(prompts, completions, **columns) -> (totals, per_function)`); needed by
            `make_batches`.
        tokenizer: decodes completions for the reward functions.
        ref_model: frozen reference policy for the KL term; None with `beta > 0` uses the
            policy with its adapters disabled (LoRA) and is an error otherwise.
        engine_dtype: compute dtype of sampling (None = the model's).
        eos_token_id / pad_token_id: stop ids and pad id for sampling.
        grad_accum: micro-batches per optimizer step (decides whether a micro-batch can still
            be on-policy).
    """

    # ------------------------------------------------------------------ consumer
    def num_units(self, batch: dict[str, Any]) -> int:
        """Completion tokens of the micro-batch (token aggregation), or its completions with at
        least one token (sequence aggregation): what the loop divides the summed loss by."""
        mask = batch["completion_mask"]
        if self.config.aggregation == "sequence":
            return int((mask.sum(dim=1) > 0).sum())
        return int(mask.sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed GRPO/GSPO loss of a micro-batch (keys in the module docstring).

        Per completion token t of row i (DeepSeekMath eq. 3; GSPO eq. 5 with the sequence
        ratio): `−min(r·A_i, clip(r, 1−ε_low, 1+ε_high)·A_i) + β·k3(π, π_ref)`, with
        `r = π/π_old` per token (grpo) or `exp(mean_t log π/π_old)` per row (gspo), summed per
        token or as each row's token mean (`aggregation`); with `algorithm: cispo` the policy
        term is `−sg(clip(r, 1−ε_low, 1+ε_high))·A_i·log π` instead (MiniMax-M1 eq. 4). Metrics: `clip_fraction`,
        `ratio_mean`, `ratio_max`, `approx_kl`, `kl` (β > 0) and the rollout's floats.
        """
        c = self.config
        mask = batch["completion_mask"]
        logprobs = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], mask, self.sampling.temperature)
        old = batch.get("old_logprobs")
        old = logprobs.detach() if old is None else old
        if c.algorithm == "cispo":
            per_token, stats = cispo_policy_loss(logprobs, old, batch["advantages"], mask, c.clip_epsilon, c.clip_epsilon_high)
        else:
            per_token, stats = clipped_policy_loss(
                logprobs, old, batch["advantages"], mask, c.clip_epsilon, c.clip_epsilon_high, c.importance_sampling_level
            )
        maskf = mask.float()
        n_tok = float(maskf.sum())
        metrics = {k: float(v) for k, v in stats.items()}
        if c.beta > 0:
            kl = kl_estimate(logprobs, batch["ref_logprobs"], c.kl_estimator) * maskf
            per_token = per_token + c.beta * kl
            metrics["kl"] = float(kl.detach().sum()) / max(n_tok, 1.0)
        loss_sum, units = aggregate(per_token, mask, c.aggregation)
        metrics.update(batch.get("rollout_metrics", {}))
        return LossOutput(loss_sum, units, metrics=metrics)

    # ------------------------------------------------------------------ producer
    def make_batches(self, model: torch.nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Prompt batch (`collate_prompts`) -> training micro-batches (see the module docstring)."""
        c, s = self.config, self.sampling
        if self.reward_fn is None or self.tokenizer is None:
            raise UserError("GRPO needs reward functions and a tokenizer to score sampled completions")
        rollout = self.engine(model).sample(
            batch["prompt_ids"], c.group_size, s.max_new_tokens, s.temperature, s.top_k, s.top_p
        )
        rewards, per_function = score_rollout(self.reward_fn, self.tokenizer, rollout, batch["prompt_ids"], batch["prompt"], batch.get("columns"))
        metrics = rollout_metrics(rollout, rewards, per_function)
        return self.experience(model, rollout.input_ids, rollout.attention_mask, rollout.completion_mask, rewards, rollout.truncated, metrics)

    def experience(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        rewards: torch.Tensor,
        truncated: torch.Tensor | None = None,
        metrics: dict[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Scored completions -> micro-batches for `num_iterations` passes.

        Args: `input_ids (B, L)`, `attention_mask (B, L)`, `completion_mask (B, N)`,
        `rewards (B,)` with rows grouped by prompt, `truncated (B,)` bool (masked out of the
        loss when `mask_truncated_completions`).
        """
        c = self.config
        advantages = group_advantages(rewards, c.group_size, c.advantage_type, c.scale_rewards)
        completion_mask = completion_mask.long()
        if c.mask_truncated_completions and truncated is not None:
            completion_mask = completion_mask * (~truncated.bool()).long()[:, None]
        rows = input_ids.shape[0]
        size = c.mini_batch_size or rows
        if rows % size:
            raise UserError(f"mini_batch_size {size} must divide the rollout's {rows} completions (prompts × group_size)")
        n_micro = rows // size
        on_policy = c.num_iterations == 1 and self.grad_accum % n_micro == 0
        with eval_mode(model):
            old = None if on_policy else completion_logprobs(model, input_ids, attention_mask, completion_mask, self.sampling.temperature)
            ref = None
            if c.beta > 0:
                ref = self.reference_logprobs(model, input_ids, attention_mask, completion_mask)
        out = []
        for it in range(c.num_iterations):
            order = torch.arange(rows) if it == 0 or n_micro == 1 else torch.randperm(rows)
            for s in range(0, rows, size):
                idx = order[s : s + size].to(input_ids.device)
                mb = {
                    "input_ids": input_ids[idx],
                    "attention_mask": attention_mask[idx],
                    "completion_mask": completion_mask[idx],
                    "advantages": advantages[idx],
                }
                if old is not None:
                    mb["old_logprobs"] = old[idx]
                if ref is not None:
                    mb["ref_logprobs"] = ref[idx]
                out.append(mb)
        if metrics is not None:
            out[0]["rollout_metrics"] = metrics
        return out

    def reference_logprobs(self, model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
        """Log-probs of the completions under the reference policy (no grad).

        Raises:
            UserError: `beta > 0` with neither a reference model nor LoRA adapters to disable.
        """
        ref = self.reference_or_none(model, input_ids, attention_mask, completion_mask)
        if ref is None:
            raise UserError("beta > 0 needs a reference model (or LoRA adapters to disable); pass beta=0 to train without KL")
        return ref
