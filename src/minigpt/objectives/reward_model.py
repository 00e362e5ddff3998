"""Reward-model training for the one loop: the Bradley–Terry loss on batches of preference pairs."""

from __future__ import annotations

from typing import Any

import torch

from minigpt.losses.preference import bradley_terry_loss
from minigpt.train.objective import LossOutput


class RewardObjective:
    """`L = Σ_pairs [−log σ(r_w − r_l − m) + c·(r_w + r_l)²]`, one unit per pair.

    Batch (`minigpt.data.preference.collate_preference`): `input_ids (2B, T)` and
    `attention_mask (2B, T)`, rows `0..B-1` = prompt + chosen, rows `B..2B-1` = prompt +
    rejected (the `targets` are not used); optional `margin (B,)` per-pair margins, which then
    replace the objective's `margin`.

    Sums reported per pair (the loop divides by the number of pairs): `accuracy` (pairs with
    `r_w > r_l`; ties count as wrong), `chosen_reward`, `rejected_reward`, `reward_margin`
    (`r_w − r_l`). Evaluation therefore reports `val_accuracy`, the held-out pairwise accuracy.

    Args:
        margin: `m` in reward units (Llama 2's margin loss, Touvron et al. 2023, eq. 2).
        center_rewards_coef: `c` ≥ 0 (reward centring, Eisenstein et al. 2023).
    """

    unit_name = "pairs"

    def __init__(self, margin: float = 0.0, center_rewards_coef: float = 0.0) -> None:
        self.margin = float(margin)
        self.center_rewards_coef = float(center_rewards_coef)

    def num_units(self, batch: dict[str, Any]) -> int:
        """Pairs in the batch: half its rows."""
        return batch["input_ids"].shape[0] // 2

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Score all 2B rows in one forward pass and sum the pair losses."""
        ids = batch["input_ids"]
        n = ids.shape[0] // 2
        rewards = model(input_ids=ids, attention_mask=batch.get("attention_mask")).rewards  # (2B,) fp32
        rw, rl = rewards[:n], rewards[n:]
        margin = batch.get("margin", self.margin)
        losses = bradley_terry_loss(rw, rl, margin, self.center_rewards_coef)  # (B,)
        rw, rl = rw.detach(), rl.detach()
        sums = {
            "accuracy": float((rw > rl).sum()),
            "chosen_reward": float(rw.sum()),
            "rejected_reward": float(rl.sum()),
            "reward_margin": float((rw - rl).sum()),
        }
        return LossOutput(loss_sum=losses.sum(), num_units=n, sums=sums)
