"""The GRPO family as a Python API (Shao et al. 2024, arXiv:2402.03300; GSPO, Zheng et al. 2025,
arXiv:2507.18071): `GRPOConfig`, `create_grpo_trainer`, `train_step`.

`GRPOTrainer.train_step(responses, response_masks)` takes sampled sequences as token-id
tensors, as the API guide's example does; `GRPOTrainer.step(prompts)` samples them itself. Both
run `minigpt.objectives.grpo.GRPOObjective`, the objective `minigpt grpo` trains with through
the one training loop; only the optimizer step lives here.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from minigpt.errors import UserError
from minigpt.trainers.base import PolicyTrainer, as_options, optimizer_step_for, sampling_ids
from minigpt.losses.advantages import group_stats
from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, GRPOConfig, with_learning_rate
from minigpt.objectives.grpo import GRPOObjective
from minigpt.train.config import TrainConfig
from minigpt.objectives.rollout import eval_mode, rollout_metrics, score_rollout
from minigpt.model.lora import has_adapters
from minigpt.inference.rollout import Rollout
from minigpt.model.modeling import require_causal

class GRPOTrainer(PolicyTrainer):
    """Optimise a policy with GRPO / GSPO, one `train_step` per batch of sampled groups.

    Args:
        policy_model: the causal LM to train (e.g. the SFT model), optionally with LoRA.
        reward_model: a `MiniGPTRewardModel` scoring whole sequences, used when
            `train_step` gets no `rewards` and no reward functions are given.
        config: `GRPOConfig` (the algorithm's knobs) or a dict of its fields.
        reward_funcs: a `minigpt.rewards.functions.CombinedReward`, a reward spec string such as
            `"format,answer"`, one function or a list of them as in TRL (each weighted 1 and
            called by keyword: `fn(prompts=…, completions=…, **columns)`), or a list of
            `(name, fn, weight)`; needs `tokenizer`.
        tokenizer: decodes completions for reward functions.
        ref_model: frozen reference for the KL term; None with `beta > 0`: the policy with its
            adapters disabled (LoRA) or a frozen copy of the policy as it is now.
        sampling: how completions are sampled (`SamplingOptions`, or a dict of its fields;
            default `GRPO_SAMPLING`, as `minigpt grpo`).
        train: optimisation (`TrainConfig`, or a dict of its fields; default
            `GRPO_TRAIN_DEFAULTS`, as `minigpt grpo`): `lr` (or `config.learning_rate`),
            `weight_decay`, `beta1` / `beta2`, `grad_clip`, `precision` (auto: bf16 where it is
            the fast path). `train_step` keeps the learning rate constant; the command's loop
            follows the schedule.

    Raises:
        UserError: bad config values or inputs; a policy or reference that attends both ways
            (`require_causal`).
    """

    def __init__(
        self,
        policy_model: torch.nn.Module,
        reward_model: torch.nn.Module | None = None,
        config: GRPOConfig | Mapping[str, Any] | None = None,
        reward_funcs: Any = None,
        tokenizer=None,
        ref_model: torch.nn.Module | None = None,
        sampling: SamplingOptions | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from minigpt.rewards.functions import as_combined_reward
        from minigpt.train.distributed import pick_precision

        config = GRPOConfig() if config is None else config
        self.config = c = config if isinstance(config, GRPOConfig) else GRPOConfig.from_dict(config)
        self.sampling = as_options(sampling, SamplingOptions, GRPO_SAMPLING, "sampling")
        self.train = with_learning_rate(as_options(train, TrainConfig, GRPO_TRAIN_DEFAULTS, "train"), c.learning_rate)
        require_causal(policy_model, "create_grpo_trainer's policy")
        if ref_model is not None:
            require_causal(ref_model, "create_grpo_trainer's reference")
        self.policy = policy_model
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        if c.beta > 0 and ref_model is None and not has_adapters(policy_model):
            ref_model = copy.deepcopy(policy_model).eval()
            ref_model.requires_grad_(False)
        self.ref_model = ref_model if c.beta > 0 else None
        self.reward_fn = as_combined_reward(reward_funcs, reward_model, tokenizer, self.sampling.max_new_tokens)
        eos, self.pad_token_id = sampling_ids(policy_model, tokenizer)
        self.precision = pick_precision(self.train.precision, self.device())
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.objective = GRPOObjective(c, self.sampling, self.reward_fn, tokenizer, self.ref_model, dtype, eos, self.pad_token_id)
        # A micro-batch whose completions are all masked out (mask_truncated_completions) is skipped.
        self.optimizer_step = optimizer_step_for(policy_model, self.objective, self.train, self.precision, empty="skip")
        self.optimizer = self.optimizer_step.optimizer
        self.step_count = 0

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]] | Sequence[str]) -> Rollout:
        """Sample `group_size` completions per prompt (token-id lists, or strings rendered as one
        user turn through the tokenizer's chat template)."""
        ids = self._prompt_ids(prompts)
        s = self.sampling
        with self.autocast():
            return self.objective.engine(self.policy).sample(ids, self.config.group_size, s.max_new_tokens, s.temperature, s.top_k, s.top_p)

    def _prompt_ids(self, prompts) -> list[list[int]]:
        if prompts and isinstance(prompts[0], str):
            if self.tokenizer is None:
                raise UserError("string prompts need a tokenizer")
            from minigpt.tokenizer import render_prompt

            return [render_prompt(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        return [list(map(int, p)) for p in prompts]

    def step(self, prompts: Sequence[Sequence[int]] | Sequence[str], **columns: list) -> dict[str, float]:
        """Sample, score with the reward functions (extra dataset columns such as `answer=[…]`,
        one per prompt, go to them as keyword arguments) and run `train_step`."""
        if self.reward_fn is None or self.tokenizer is None:
            raise UserError("step() needs reward functions and a tokenizer")
        ids = self._prompt_ids(prompts)
        rollout = self.generate(ids)
        rewards, per_function = score_rollout(self.reward_fn, self.tokenizer, rollout, ids, columns=columns)
        metrics = rollout_metrics(rollout, rewards, per_function)
        out = self._train(rollout.input_ids, rollout.attention_mask, rollout.completion_mask, rewards, rollout.truncated)
        return self.statistics.record({**metrics, **out})

    # ------------------------------------------------------------------ training
    def train_step(
        self,
        responses: torch.Tensor,
        response_masks: torch.Tensor,
        rewards: torch.Tensor | Sequence[float] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One GRPO update on sampled groups.

        Args:
            responses: `(B, T)` token ids, prompt then response in each row, rows grouped by
                prompt (`B` a multiple of `group_size`).
            response_masks: `(B, T)` 1 on the response tokens (the ones that get the loss).
            rewards: `(B,)` scalar rewards; None scores the rows with the reward model.
            attention_mask: `(B, T)` 1 on real tokens; None: every position up to the row's
                last response token.

        Returns floats: `mean_reward`, `group_variance`, `policy_loss` (the objective, mean
        over the update's micro-batches), `kl` (β > 0), `clip_fraction`, `ratio_mean`.

        Raises:
            UserError: shapes that disagree, no response token, `B` not a multiple of
                `group_size`, no rewards and no reward model.
        """
        if not isinstance(responses, torch.Tensor) or responses.ndim != 2:
            raise UserError("responses must be a (batch, length) tensor of token ids")
        dev = self.device()
        responses = responses.to(dev).long()
        masks = torch.as_tensor(response_masks).to(dev).long()
        if masks.shape != responses.shape:
            raise UserError(f"response_masks {tuple(masks.shape)} must match responses {tuple(responses.shape)}")
        if responses.shape[0] % self.config.group_size:
            raise UserError(f"{responses.shape[0]} rows is not a multiple of group_size {self.config.group_size}")
        cols = masks.any(dim=0).nonzero()
        if cols.numel() == 0:
            raise UserError("response_masks has no response token")
        start = max(int(cols[0]), 1)  # the first response column; position 0 has no predictor
        if attention_mask is None:
            last = torch.where(masks.bool(), torch.arange(masks.shape[1], device=dev), -1).max(dim=1).values
            attention_mask = (torch.arange(masks.shape[1], device=dev)[None] <= last[:, None]).long()
        attention_mask = attention_mask.to(dev).long()
        if rewards is None:
            if self.reward_model is None:
                raise UserError("train_step needs rewards, or a reward model to score the responses")
            with torch.no_grad(), eval_mode(self.reward_model), self.autocast():
                rewards = self.reward_model(input_ids=responses, attention_mask=attention_mask).rewards.float()
        rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
        if rewards.numel() != responses.shape[0]:
            raise UserError(f"{rewards.numel()} rewards for {responses.shape[0]} responses")
        stats = {k: float(v) for k, v in group_stats(rewards, self.config.group_size).items()}
        out = self._train(responses, attention_mask, masks[:, start:], rewards, None)
        return self.statistics.record({**stats, **out})

    def _train(self, input_ids, attention_mask, completion_mask, rewards, truncated) -> dict[str, float]:
        dev = self.device()
        with torch.no_grad(), self.autocast():
            batches = self.objective.experience(self.policy, input_ids.to(dev), attention_mask.to(dev), completion_mask.to(dev), rewards.to(dev), truncated)
        self.policy.train()
        losses, seen = [], {}
        for mb in batches:  # one optimizer update per micro-batch
            result = self.optimizer_step([mb])
            losses.append(result.loss)
            for k, v in self.objective_metrics(result).items():
                seen.setdefault(k, []).append(v)
        self.step_count += 1
        result = {k: sum(v) / len(v) for k, v in seen.items()}
        result["policy_loss"] = sum(losses) / len(losses)
        return result


def create_grpo_trainer(
    policy_model: torch.nn.Module,
    reward_model: torch.nn.Module | None = None,
    config: GRPOConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> GRPOTrainer:
    """Build a `GRPOTrainer`; `config` may be a dict of `GRPOConfig` fields. Keyword arguments go to
    `GRPOTrainer` (`reward_funcs`, `tokenizer`, `ref_model`, `sampling`, `train`): the objects
    `minigpt grpo` takes as `--grpo.*`, `--sampling.*` and `--train.*`, with the same defaults."""
    return GRPOTrainer(policy_model, reward_model, config, **kwargs)
