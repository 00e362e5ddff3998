"""`minigpt.rl`: the names the API guide imports for reinforcement learning of language models,
gathered in one namespace. Nothing is defined here; each name lives in its room:

- the reward model (`minigpt.model.reward_model`) and its trainer (`minigpt.trainers.reward_model`)
- DPO (`minigpt.trainers.dpo`), GRPO (`minigpt.objectives.config`, `minigpt.trainers.grpo`),
  RLHF with PPO (`minigpt.objectives.ppo`, `minigpt.trainers.rlhf`)
- reward functions (`minigpt.rewards`), the rollout engine (`minigpt.inference.rollout`)
- the RLHF pipeline, a command that runs the sft, reward and ppo recipes
  (`minigpt.recipes.pipeline`): this namespace sits above the recipes in the floor plan.

The names are imported on first use (`minigpt._lazy`)."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["MiniGPTRewardModel", "create_reward_model"], "minigpt.model.reward_model"),
    "RewardModelTrainer": "minigpt.trainers.reward_model",
    "DPOConfig": "minigpt.objectives.config",
    **dict.fromkeys(["DPOTrainer", "create_dpo_trainer"], "minigpt.trainers.dpo"),
    "GRPOConfig": "minigpt.objectives.config",
    **dict.fromkeys(["GRPOTrainer", "create_grpo_trainer"], "minigpt.trainers.grpo"),
    "ActorCritic": "minigpt.objectives.ppo",
    "RLHFConfig": "minigpt.objectives.config",
    **dict.fromkeys(["RLHFTrainer", "create_rlhf_trainer"], "minigpt.trainers.rlhf"),
    **dict.fromkeys(["CombinedReward", "RewardModelScorer", "make_reward"], "minigpt.rewards.functions"),
    **dict.fromkeys(["Rollout", "RolloutEngine"], "minigpt.inference.rollout"),
    **dict.fromkeys(["RLHFPipeline", "RLHFPipelineConfig", "create_rlhf_pipeline"], "minigpt.recipes.pipeline"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
