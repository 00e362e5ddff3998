"""Reward model construction and a standalone Bradley–Terry trainer (Ouyang et al. 2022, eq. 1).

`create_reward_model` turns a (supervised fine-tuned) causal LM into a `MiniGPTRewardModel` by
copying its decoder and adding a fresh score head. `RewardModelTrainer.train_step` is the
original design's one-call API for user loops and notebooks; the `minigpt reward` recipe trains
through the one training loop instead (`minigpt.objectives.reward.RewardObjective`), with the
same loss.
"""

from __future__ import annotations

import torch

from minigpt.errors import UserError
from minigpt.losses.preference import bradley_terry_loss
from minigpt.model.reward import MiniGPTRewardModel, create_reward_model, stack_pairs


class RewardModelTrainer:
    """Bradley–Terry training of a reward model one batch of pairs at a time.

    Each step minimises `mean_i [−log σ(r_w,i − r_l,i − m_i) + c·(r_w,i + r_l,i)²]` (see
    `minigpt.losses.preference.bradley_terry_loss`), clips the gradient norm and steps the
    optimizer.

    Args:
        reward_model: a `MiniGPTRewardModel` (frozen parameters are left out of the default
            optimizer).
        optimizer: any torch optimizer over the model's parameters; default AdamW(lr =
            `learning_rate`, weight decay 0) over the trainable ones.
        margin: the default margin `m` (reward units) when `train_step` gets none.
        center_rewards_coef: `c`, the reward-centring coefficient (Eisenstein et al. 2023).
        learning_rate: for the default optimizer.
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping).

    Raises:
        UserError: no trainable parameter (frozen backbone and head).
    """

    def __init__(
        self,
        reward_model: MiniGPTRewardModel,
        optimizer: torch.optim.Optimizer | None = None,
        margin: float = 0.0,
        center_rewards_coef: float = 0.0,
        learning_rate: float = 1e-5,
        max_grad_norm: float | None = 1.0,
    ) -> None:
        self.model = reward_model
        params = [p for p in reward_model.parameters() if p.requires_grad]
        if not params:
            raise UserError("the reward model has no trainable parameter")
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        self.margin = margin
        self.center_rewards_coef = center_rewards_coef
        self.max_grad_norm = max_grad_norm

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
        dev = model.device
        rewards = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).rewards  # (2B,)
        n = chosen_ids.shape[0]
        rw, rl = rewards[:n], rewards[n:]
        m = self.margin if margin is None else margin
        if isinstance(m, torch.Tensor):
            m = m.to(dev)
        loss = bradley_terry_loss(rw, rl, m, self.center_rewards_coef).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.max_grad_norm if self.max_grad_norm else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rw, rl = rw.detach(), rl.detach()
        return {
            "loss": float(loss.detach()),
            "accuracy": int((rw > rl).sum()) / n,
            "chosen_reward": float(rw.mean()),
            "rejected_reward": float(rl.mean()),
            "reward_margin": float((rw - rl).mean()),
            "grad_norm": grad_norm,
        }


__all__ = ["create_reward_model", "RewardModelTrainer"]
