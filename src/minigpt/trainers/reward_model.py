"""Reward model construction and a standalone Bradley–Terry trainer (Ouyang et al. 2022, eq. 1).

`create_reward_model` (defined beside the reward model, `minigpt.model.reward_model`) turns a
(supervised fine-tuned) causal LM into a `MiniGPTRewardModel` by copying its decoder and adding
a fresh score head. `RewardModelTrainer.train_step` is the one-call API for
user loops and notebooks; it runs the objective `minigpt reward` trains with
(`minigpt.objectives.reward_model.RewardObjective`) through the loop's optimizer step.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from minigpt.errors import UserError
from minigpt.model.reward_model import MiniGPTRewardModel, stack_pairs
from minigpt.objectives.reward_model import RewardObjective
from minigpt.objectives.config import REWARD_TRAIN_DEFAULTS
from minigpt.train.config import TrainConfig
from minigpt.train.statistics import ReportsStatistics


class RewardModelTrainer(ReportsStatistics):
    """Bradley–Terry training of a reward model one batch of pairs at a time.

    Each step minimises `mean_i [−log σ(r_w,i − r_l,i − m_i) + c·(r_w,i + r_l,i)²]` through
    `minigpt.objectives.reward_model.RewardObjective` (the objective `minigpt reward` trains with) and
    the shared `minigpt.train.step.OptimizerStep`: it clips the gradient norm and steps the
    optimizer.

    Args:
        reward_model: a `MiniGPTRewardModel` (frozen parameters are left out of the default
            optimizer).
        optimizer: any torch optimizer over the model's parameters; default AdamW as `train`
            describes it (`minigpt.train.optim.make_optimizer`) over the trainable ones.
        margin: the default margin `m` (reward units) when `train_step` gets none.
        center_rewards_coef: `c`, the reward-centring coefficient (Eisenstein et al. 2023).
        train: optimisation (`TrainConfig` or a dict of its fields; default
            `REWARD_TRAIN_DEFAULTS`, as `minigpt reward`): `lr`, `weight_decay`, betas (for the
            default optimizer), `grad_clip` (0: no clipping) and `precision`. The learning
            rate stays constant.

    Raises:
        UserError: no trainable parameter (frozen backbone and head).
    """

    def __init__(
        self,
        reward_model: MiniGPTRewardModel,
        optimizer: torch.optim.Optimizer | None = None,
        margin: float = 0.0,
        center_rewards_coef: float = 0.0,
        train: TrainConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from minigpt.trainers.base import as_options, optimizer_step_for

        self.model = reward_model
        self.train = as_options(train, TrainConfig, REWARD_TRAIN_DEFAULTS, "train")
        if not any(p.requires_grad for p in reward_model.parameters()):
            raise UserError("the reward model has no trainable parameter")
        self.margin = margin
        self.center_rewards_coef = center_rewards_coef
        self.objective = RewardObjective(margin, center_rewards_coef)
        self.optimizer_step = optimizer_step_for(reward_model, self.objective, self.train, optimizer=optimizer)
        self.optimizer = self.optimizer_step.optimizer

    #: The objective's metrics `train_step` returns (beside `loss` and `grad_norm`).
    METRICS = ("accuracy", "chosen_reward", "rejected_reward", "reward_margin")

    def train_step(
        self,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor,
        chosen_attention_mask: torch.Tensor | None = None,
        rejected_attention_mask: torch.Tensor | None = None,
        margin: float | torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One optimizer step on a batch of B pairs.

        Args:
            chosen_ids: `(B, T1)` prompt + preferred reply; rejected_ids: `(B, T2)` prompt +
                the other reply. Padding on either side.
            chosen_attention_mask / rejected_attention_mask: `(B, T1)` / `(B, T2)`, 1 = real;
                default from `config.pad_token_id`.
            margin: float or `(B,)` per-pair margins (e.g. from preference strength, as Llama 2);
                default the trainer's `margin`.

        Returns:
            Python floats, all measured before the update on this batch: `loss` (mean over
            pairs), `accuracy` (share of pairs with `r_w > r_l`; ties count as wrong),
            `chosen_reward` / `rejected_reward` (means), `reward_margin` (mean of `r_w − r_l`),
            and `grad_norm` (before clipping).
        """
        model = self.model
        model.train()
        ids, mask = stack_pairs(
            chosen_ids, rejected_ids, chosen_attention_mask, rejected_attention_mask, model.config.pad_token_id
        )
        batch = {"input_ids": ids, "attention_mask": mask}
        if margin is not None:
            batch["margin"] = margin
        result = self.optimizer_step([batch])
        return self.statistics.record({"loss": result.loss, **{k: result.metrics[k] for k in self.METRICS}, "grad_norm": result.grad_norm})


__all__ = ["RewardModelTrainer"]
