"""RLHF with PPO as a Python API: `RLHFConfig`, `ActorCritic`, `create_rlhf_trainer`,
`RLHFTrainer.train_step(prompts, prompt_masks)`.

One step samples a completion per prompt from the policy, scores it (a reward model and/or rule
rewards), penalises every token's KL to a frozen reference policy, reads values from a critic,
computes advantages by GAE(γ, λ) and runs `ppo_epochs` passes of the clipped surrogate and the
clipped value loss over mini-batches (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al.
2022, arXiv:2203.02155). The math lives in `minigpt.objectives.ppo.PPOObjective`, the
objective `minigpt ppo` trains with through the one training loop; only the optimizer step
lives here.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from minigpt.errors import UserError
from minigpt.trainers.base import PolicyTrainer, as_options, optimizer_step_for, sampling_ids
from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import PPO_SAMPLING, PPO_TRAIN_DEFAULTS, RLHFConfig, with_learning_rate
from minigpt.objectives.ppo import ActorCritic, PPOObjective
from minigpt.train.config import TrainConfig
from minigpt.model.lora import has_adapters
from minigpt.model.modeling import require_causal


def _default_critic(policy: nn.Module, reward_model: nn.Module | None) -> nn.Module:
    """A trainable critic: a copy of the reward model (as TRL), else a fresh score head on a
    copy of the policy's decoder."""
    from minigpt.model.reward_model import create_reward_model

    if reward_model is not None:
        critic = copy.deepcopy(reward_model)
    else:
        critic = create_reward_model(policy, hidden_size=policy.config.hidden_size)
    critic.requires_grad_(True)
    return critic.train()


class RLHFTrainer(PolicyTrainer):
    """Optimise a policy with PPO-RLHF, one `train_step` per batch of prompts.

    Args:
        policy_model: the causal LM to train (e.g. the SFT model), optionally with LoRA.
        reward_model: a `MiniGPTRewardModel`; scores `prompt + completion` ids (the completion
            ends with the stop token the policy emitted) unless `reward_funcs` are given. It is
            never trained.
        config: `RLHFConfig` or a dict of its fields.
        value_model: the critic (a `MiniGPTRewardModel`, trained); None: a copy of
            `reward_model`, or without one a new score head on a copy of the policy's decoder.
        ref_model: frozen reference policy; None: the policy with its adapters disabled
            (LoRA) or a frozen copy of the policy as it is now.
        reward_funcs: a `minigpt.rewards.functions.CombinedReward`, a spec string such as
            `"model,format:0.5"`, a list of `(name, fn, weight)` or a callable; needs
            `tokenizer`.
        tokenizer: decodes completions for reward functions, renders string prompts, and gives
            the chat stop ids.
        sampling: how completions are sampled (`SamplingOptions` or a dict of its fields;
            default `PPO_SAMPLING`, as `minigpt ppo`).
        train: optimisation (`TrainConfig` or a dict of its fields; default
            `PPO_TRAIN_DEFAULTS`, as `minigpt ppo`): `lr` (or `config.learning_rate`; the
            critic's is `config.value_learning_rate`), `weight_decay`, betas, `grad_clip`,
            `precision`. `train_step` keeps the learning rate constant.

    Raises:
        UserError: bad config values, no reward model and no reward functions, a policy
            without trainable parameters, a model that attends both ways (`require_causal`).
    """

    def __init__(
        self,
        policy_model: nn.Module,
        reward_model: nn.Module | None = None,
        config: RLHFConfig | Mapping[str, Any] | None = None,
        value_model: nn.Module | None = None,
        ref_model: nn.Module | None = None,
        reward_funcs: Any = None,
        tokenizer=None,
        sampling: SamplingOptions | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from minigpt.rewards.functions import as_combined_reward
        from minigpt.train.distributed import pick_precision

        config = RLHFConfig() if config is None else config
        self.config = c = config if isinstance(config, RLHFConfig) else RLHFConfig.from_dict(config)
        self.sampling = as_options(sampling, SamplingOptions, PPO_SAMPLING, "sampling")
        self.train = with_learning_rate(as_options(train, TrainConfig, PPO_TRAIN_DEFAULTS, "train"), c.learning_rate)
        if reward_model is None and reward_funcs is None:
            raise UserError("create_rlhf_trainer needs a reward model or reward functions to score completions")
        require_causal(policy_model, "create_rlhf_trainer's policy")
        for name, m in (("reference", ref_model), ("reward model", reward_model), ("value model", value_model)):
            if m is not None:
                require_causal(m, f"create_rlhf_trainer's {name}")
        self.policy = policy_model
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        if value_model is None:
            value_model = _default_critic(policy_model, reward_model)
        needs_ref = c.kl_coef > 0 or c.adaptive_kl
        if needs_ref and ref_model is None and not has_adapters(policy_model):
            ref_model = copy.deepcopy(policy_model).eval()
            ref_model.requires_grad_(False)
        self.ref_model = ref_model
        lr = self.train.lr
        self.model = ActorCritic(policy_model, value_model, (c.value_learning_rate or lr) / lr)
        self.reward_fn = as_combined_reward(reward_funcs, reward_model, tokenizer, self.sampling.max_new_tokens)
        eos, self.pad_token_id = sampling_ids(policy_model, tokenizer)
        self.precision = pick_precision(self.train.precision, self.device())
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.objective = PPOObjective(
            c, self.sampling, self.reward_fn, tokenizer, reward_model if self.reward_fn is None else None, ref_model, dtype, eos, self.pad_token_id
        )
        if not any(p.requires_grad for p in policy_model.parameters()):
            raise UserError("the policy has no trainable parameter")
        self.optimizer_step = optimizer_step_for(self.model, self.objective, self.train, self.precision, empty="skip")
        self.optimizer = self.optimizer_step.optimizer
        self.step_count = 0
        self.history: list[dict[str, float]] = []  # the last train_step's metrics per micro-batch

    def _prompt_ids(self, prompts, prompt_masks) -> list[list[int]]:
        if isinstance(prompts, torch.Tensor):
            if prompts.ndim != 2:
                raise UserError(f"prompts must be a (batch, length) tensor of token ids, got shape {tuple(prompts.shape)}")
            masks = (prompts != self.pad_token_id) if prompt_masks is None else torch.as_tensor(prompt_masks)
            if masks.shape != prompts.shape:
                raise UserError(f"prompt_masks {tuple(masks.shape)} must match prompts {tuple(prompts.shape)}")
            ids = [row[m.bool()].tolist() for row, m in zip(prompts.cpu(), masks.cpu())]
        elif prompts and isinstance(prompts[0], str):
            if self.tokenizer is None:
                raise UserError("string prompts need a tokenizer")
            from minigpt.tokenizer import render_prompt

            ids = [render_prompt(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        else:
            ids = [list(map(int, p)) for p in prompts]
        for i, row in enumerate(ids):
            if not row:
                raise UserError(f"prompt {i} has no real token (its prompt_masks row is all 0)")
        return ids

    def train_step(
        self,
        prompts: torch.Tensor | Sequence[Sequence[int]] | Sequence[str],
        prompt_masks: torch.Tensor | None = None,
        **columns: list,
    ) -> dict[str, float]:
        """One PPO step: sample, score, GAE, then `ppo_epochs` passes of optimizer steps, one
        per micro-batch of `mini_batch_size` completions.

        Args:
            prompts: `(B, P)` token ids, left-padded (or a list of id lists, or strings rendered
                as one user turn through the tokenizer's chat template).
            prompt_masks: `(B, P)` 1 on real prompt tokens (default: ids != pad id).
            **columns: extra dataset columns for reward functions (e.g. `answer=[...]`), one
                entry per prompt.

        Returns floats, means over the step's micro-batches: `mean_reward` (mean score),
        `mean_kl` (KL to the reference per completion, summed over tokens), `kl_coef`,
        `ppo_loss`, `value_loss`, `entropy`, `approx_kl`, `clip_fraction`, `ratio_mean`,
        `value_clip_fraction`, `rlhf_reward`, `completion_length`, ..., plus `loss` and
        `updates` (optimizer steps taken; fewer than planned after an early stop).

        Raises:
            UserError: malformed prompts, a reward function that fails.
        """
        ids = self._prompt_ids(prompts, prompt_masks)
        with torch.no_grad(), self.autocast():
            batches = self.objective.rollout(self.model, ids, None, dict(columns))
        self.model.train()
        self.history = []
        losses = []
        for mb in batches:  # one optimizer update per micro-batch
            result = self.optimizer_step([mb])
            losses.append(result.loss)
            self.history.append(self.objective_metrics(result))
        self.step_count += 1
        keys = {k for m in self.history for k in m}
        result = {k: sum(m[k] for m in self.history if k in m) / sum(1 for m in self.history if k in m) for k in keys}
        result["loss"] = sum(losses) / len(losses)
        result["updates"] = float(len(losses))
        return self.statistics.record(result)


def create_rlhf_trainer(
    policy_model: nn.Module,
    reward_model: nn.Module | None = None,
    config: RLHFConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> RLHFTrainer:
    """Build an `RLHFTrainer`; `config` may be a dict (unknown keys are a UserError
    listing the known ones). Keyword arguments go to `RLHFTrainer` (`value_model`,
    `ref_model`, `reward_funcs`, `tokenizer`, `sampling`, `train`): the objects `minigpt ppo`
    takes as `--ppo.*`, `--sampling.*` and `--train.*`, with the same defaults."""
    return RLHFTrainer(policy_model, reward_model, config, **kwargs)


__all__ = ["RLHFTrainer", "create_rlhf_trainer"]
