"""Reinforcement learning for language models, as Python APIs: the reward model, the DPO family
(Rafailov et al. 2023), the GRPO family (Shao et al. 2024) with its rollout engine and reward
functions, and RLHF with PPO (Ouyang et al. 2022)."""

from minigpt.model.reward import MiniGPTRewardModel
from minigpt.rl.dpo import DPOConfig, DPOTrainer, create_dpo_trainer
from minigpt.rl.grpo import GRPOTrainer, create_grpo_trainer
# The pipeline is a command (it runs the sft, reward and ppo recipes); `minigpt.rl` re-exports it
# for the original design's users, the one import from a floor above (pyproject.toml, importlinter).
from minigpt.recipes.pipeline import RLHFPipeline, RLHFPipelineConfig, create_rlhf_pipeline
from minigpt.objectives.grpo import GRPOConfig
from minigpt.objectives.ppo import ActorCritic, RLHFConfig
from minigpt.rl.ppo import RLHFTrainer, create_rlhf_trainer
from minigpt.rl.rewards import CombinedReward, RewardModelScorer, make_reward
from minigpt.inference.rollout import Rollout, RolloutEngine
from minigpt.model.reward import create_reward_model
from minigpt.rl.reward_model import RewardModelTrainer

#: The name users of the original design know.
RewardModel = MiniGPTRewardModel

__all__ = [
    "ActorCritic",
    "CombinedReward",
    "DPOConfig",
    "DPOTrainer",
    "GRPOConfig",
    "GRPOTrainer",
    "MiniGPTRewardModel",
    "RLHFConfig",
    "RLHFPipeline",
    "RLHFPipelineConfig",
    "RLHFTrainer",
    "RewardModel",
    "RewardModelScorer",
    "RewardModelTrainer",
    "Rollout",
    "RolloutEngine",
    "create_dpo_trainer",
    "create_grpo_trainer",
    "create_reward_model",
    "create_rlhf_pipeline",
    "create_rlhf_trainer",
    "make_reward",
]
