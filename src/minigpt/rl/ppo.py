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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from minigpt.errors import UserError
from minigpt.rl.config import DictConfig
from minigpt.rl.trainer import PolicyTrainer, sampling_ids
from minigpt.losses.kl import KL_ESTIMATORS
from minigpt.objectives.ppo import PPOObjective
from minigpt.model.lora import has_adapters, has_lora, load_adapter_state
from minigpt.inference.rollout import completion_logprobs

VALUE_MODEL_DIR = "value_model"


@dataclass
class RLHFConfig(DictConfig):
    """Settings of PPO-RLHF (names as in TRL's `PPOConfig` where they exist)."""

    ppo_epochs: int = 4
    """Optimisation passes over each rollout (TRL: num_ppo_epochs)."""
    clip_epsilon: float = 0.2
    """Clip range ε of the policy ratio (TRL: cliprange)."""
    kl_coef: float = 0.1
    """β: reward units per nat of KL to the reference, on every token (the starting value when
    adaptive_kl)."""
    learning_rate: float = 1e-5
    """AdamW learning rate of the policy in `train_step` (constant; the CLI uses the loop's
    schedule)."""
    value_learning_rate: float | None = None
    """Learning rate of the critic (None: learning_rate)."""
    gamma: float = 0.99
    """Discount γ of GAE."""
    gae_lambda: float = 0.95
    """λ of GAE (1: Monte-Carlo returns, 0: one-step TD)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    clip_range_value: float | None = 0.2
    """Clip range of the value update around the rollout's values (None or 0: no clipping)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    kl_estimator: str = "k1"
    """Per-token KL in the reward: k1 (log π − log π_ref, TRL's default) or k3 (always >= 0)."""
    mini_batch_size: int = 0
    """Completions per micro-batch (0: the whole rollout in one)."""
    whiten_advantages: bool = True
    """Standardise the advantages over the rollout's completion tokens."""
    target_kl: float | None = None
    """Stop a rollout's remaining passes once a micro-batch's approximate KL to the sampling
    policy exceeds this (None: never)."""
    adaptive_kl: bool = False
    """Adapt kl_coef towards kl_target after every rollout (Ziegler et al. 2019 §2.2)."""
    kl_target: float = 6.0
    """KL per completion (nats, summed over tokens) the adaptive controller steers towards."""
    kl_horizon: int = 10000
    """Completions over which the adaptive controller moves kl_coef by about ±20 %."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of completions that hit max_new_tokens without a stop token."""
    max_new_tokens: int = 64
    """Longest completion sampled."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are taken at this temperature too)."""
    top_k: int = 0
    """Top-k filter of sampling (0 = off)."""
    top_p: float = 1.0
    """Nucleus filter of sampling (1.0 = off)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (policy and critic together) to this (0 disables)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    precision: str = "fp32"
    """fp32, or bf16 (autocast for training forwards and sampling)."""

    def __post_init__(self) -> None:
        def is_int(x, low):
            return isinstance(x, int) and not isinstance(x, bool) and x >= low

        checks = [
            (is_int(self.ppo_epochs, 1), "ppo_epochs must be an integer >= 1"),
            (0 < self.clip_epsilon < 1, "clip_epsilon must be in (0, 1)"),
            (self.kl_coef >= 0, "kl_coef must be >= 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.value_learning_rate is None or self.value_learning_rate > 0, "value_learning_rate must be > 0"),
            (0 <= self.gamma <= 1, "gamma must be in [0, 1]"),
            (0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.clip_range_value is None or self.clip_range_value >= 0, "clip_range_value must be >= 0 or None"),
            (self.entropy_coef >= 0, "entropy_coef must be >= 0"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}"),
            (is_int(self.mini_batch_size, 0), "mini_batch_size must be an integer >= 0"),
            (self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or None"),
            (self.kl_target > 0, "kl_target must be > 0"),
            (self.kl_horizon > 0, "kl_horizon must be > 0"),
            (is_int(self.max_new_tokens, 1), "max_new_tokens must be an integer >= 1"),
            (self.temperature > 0, "temperature must be > 0 (RL samples)"),
            (self.precision in ("fp32", "bf16"), "precision must be fp32 or bf16"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"RLHFConfig.{message}")



class ActorCritic(nn.Module):
    """The policy and its critic in one module, so one optimizer, one gradient clip and one
    checkpoint cover both.

    Args:
        policy: a `MiniGPTForCausalLM` (optionally with LoRA adapters).
        value_model: a `MiniGPTRewardModel` used per token (`token_values`).
        value_lr_scale: the critic learns at this multiple of the optimizer's learning rate
            (set as `value_model.lr_scale`, read by `minigpt.train.optim.param_groups`);
            None leaves the critic's attribute as it is.

    `save_pretrained(dir)` writes the policy at `dir` (so `AutoModelForCausalLM` loads it) and
    the critic at `dir/value_model/`; `load_state_dict` takes `value_model.*` keys for the
    critic and the rest (with or without a `policy.` prefix) for the policy, which is what
    `minigpt.train.checkpoint.load_checkpoint` reads back from such a directory. `config` and
    `tie_weights` are the policy's.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module, value_lr_scale: float | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        if value_lr_scale is not None:
            value_model.lr_scale = float(value_lr_scale)

    @property
    def config(self):
        return self.policy.config

    @property
    def _tied_weights_keys(self):
        return getattr(self.policy, "_tied_weights_keys", None)

    def tie_weights(self) -> None:
        if hasattr(self.policy, "tie_weights"):
            self.policy.tie_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
        return_entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Policy log-probs, entropies and critic values of the completion tokens.

        Args:
            input_ids: `(B, P + N)` prompts (left-padded) then completions (right-padded).
            attention_mask: `(B, P + N)` 1 on real tokens.
            completion_mask: `(B, N)` 1 on completion tokens.
            temperature: the sampling temperature (logits are divided by it).
            return_entropy: compute the entropies (else None).

        Returns:
            `(logprobs (B, N), entropy (B, N) | None, values (B, N))` fp32, 0 where
            `completion_mask` is 0. `values[:, t]` is the critic's value of the state before
            completion token t (its hidden state at position `P + t − 1`), the V_t of GAE.
        """
        n = completion_mask.shape[1]
        p = input_ids.shape[1] - n
        if return_entropy:
            logprobs, entropy = completion_logprobs(self.policy, input_ids, attention_mask, completion_mask, temperature, True)
        else:
            logprobs = completion_logprobs(self.policy, input_ids, attention_mask, completion_mask, temperature)
            entropy = None
        values = self.value_model.token_values(input_ids, attention_mask)[:, p - 1 : p + n - 1]  # (B, N)
        values = torch.where(completion_mask.bool(), values, torch.zeros_like(values))
        return logprobs, entropy, values

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Policy at `save_directory`, critic at `save_directory/value_model/`."""
        save_directory = Path(save_directory)
        self.policy.save_pretrained(save_directory, **kwargs)
        self.value_model.save_pretrained(save_directory / VALUE_MODEL_DIR, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load `value_model.*` keys into the critic and the others into the policy (a
        `policy.` prefix is optional; a policy with LoRA adapters takes the adapter keys of its
        checkpoint, as PEFT names them).

        Returns `(missing_keys, unexpected_keys)` with the prefixes of this module.

        Raises:
            RuntimeError: with `strict`, missing or unexpected keys.
        """
        prefix = VALUE_MODEL_DIR + "."
        critic = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        rest = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        prefixed = any(k.startswith("policy.") for k in rest)
        policy = {k[len("policy.") :] if k.startswith("policy.") else k: v for k, v in rest.items()}
        missing: list[str] = []
        unexpected: list[str] = []
        if has_lora(self.policy) and not prefixed:
            unexpected += load_adapter_state(self.policy, policy)
        else:
            result = self.policy.load_state_dict(policy, strict=False, assign=assign)
            missing += list(result.missing_keys)
            unexpected += list(result.unexpected_keys)
        result = self.value_model.load_state_dict(critic, strict=False, assign=assign)
        missing += [prefix + k for k in result.missing_keys]
        unexpected += [prefix + k for k in result.unexpected_keys]
        if strict:
            tied = set(self._tied_weights_keys or ())
            bad_missing = [k for k in missing if k not in tied]
            if bad_missing or unexpected:
                raise RuntimeError(f"ActorCritic.load_state_dict: missing {bad_missing}, unexpected {unexpected}")
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


def _default_critic(policy: nn.Module, reward_model: nn.Module | None) -> nn.Module:
    """A trainable critic: a copy of the reward model (as TRL), else a fresh score head on a
    copy of the policy's decoder."""
    from minigpt.rl.reward_model import create_reward_model

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
        reward_funcs: a `minigpt.rl.rewards.CombinedReward`, a spec string such as
            `"model,format:0.5"`, a list of `(name, fn, weight)` or a callable; needs
            `tokenizer`.
        tokenizer: decodes completions for reward functions, renders string prompts, and gives
            the chat stop ids.

    Raises:
        UserError: bad config values, no reward model and no reward functions, a policy
            without trainable parameters.
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
    ) -> None:
        from minigpt.rl.grpo import _reward_fn
        from minigpt.train.optim import param_groups

        config = RLHFConfig() if config is None else config
        self.config = c = config if isinstance(config, RLHFConfig) else RLHFConfig.from_dict(config)
        if reward_model is None and reward_funcs is None:
            raise UserError("create_rlhf_trainer needs a reward model or reward functions to score completions")
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
        value_lr = c.value_learning_rate or c.learning_rate
        self.model = ActorCritic(policy_model, value_model, value_lr / c.learning_rate)
        self.reward_fn = _reward_fn(reward_funcs, reward_model, tokenizer, c.max_new_tokens)
        eos, self.pad_token_id = sampling_ids(policy_model, tokenizer)
        dtype = torch.bfloat16 if c.precision == "bf16" else None
        self.objective = PPOObjective(
            c, self.reward_fn, tokenizer, reward_model if self.reward_fn is None else None, ref_model, dtype, eos, self.pad_token_id
        )
        if not any(p.requires_grad for p in policy_model.parameters()):
            raise UserError("the policy has no trainable parameter")
        groups = param_groups(self.model, c.weight_decay, lr=c.learning_rate)
        self.optimizer = torch.optim.AdamW(groups, lr=c.learning_rate)
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
        c = self.config
        ids = self._prompt_ids(prompts, prompt_masks)
        with torch.no_grad(), self._autocast():
            batches = self.objective.rollout(self.model, ids, None, dict(columns))
        self.model.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.history = []
        losses = []
        for mb in batches:
            with self._autocast():
                out = self.objective.compute_loss(self.model, mb)
            units = max(out.num_units, 1)
            (out.loss_sum / units).backward()
            if c.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss_sum.detach()) / units)
            self.history.append(dict(out.metrics))
        self.step_count += 1
        keys = {k for m in self.history for k in m}
        result = {k: sum(m[k] for m in self.history if k in m) / sum(1 for m in self.history if k in m) for k in keys}
        result["loss"] = sum(losses) / len(losses)
        result["updates"] = float(len(losses))
        return result


def create_rlhf_trainer(
    policy_model: nn.Module,
    reward_model: nn.Module | None = None,
    config: RLHFConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> RLHFTrainer:
    """Build an `RLHFTrainer`; `config` may be a dict (unknown keys are a UserError
    listing the known ones). Keyword arguments go to `RLHFTrainer` (`value_model`,
    `ref_model`, `reward_funcs`, `tokenizer`)."""
    return RLHFTrainer(policy_model, reward_model, config, **kwargs)


__all__ = ["ActorCritic", "RLHFConfig", "RLHFTrainer", "create_rlhf_trainer"]
