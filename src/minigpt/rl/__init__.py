"""Reinforcement learning from preferences: the reward model (SPEC §5) and the DPO family
(SPEC §7); RLHF with PPO and the GRPO family land here too."""

from minigpt.model.reward import MiniGPTRewardModel
from minigpt.rl.dpo import DPOConfig, DPOTrainer, create_dpo_trainer
from minigpt.rl.reward_model import RewardModelTrainer, create_reward_model

#: The name users of the original design know.
RewardModel = MiniGPTRewardModel

__all__ = ["DPOConfig", "DPOTrainer", "MiniGPTRewardModel", "RewardModel", "RewardModelTrainer", "create_dpo_trainer", "create_reward_model"]
