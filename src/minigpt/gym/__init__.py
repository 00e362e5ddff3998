"""Classic reinforcement learning on Gymnasium environments (`minigpt gym`), built on the same
advantage and policy-loss functions as RLHF (`minigpt.losses.advantages`, `minigpt.losses.policy`).

Python API, one `train_*` per algorithm: `train_ppo(env_id, config, total_steps, seed, ...)`.
"""

from minigpt.gym.ppo import ActorCriticMLP, PPOConfig, train_ppo

__all__ = ["ActorCriticMLP", "PPOConfig", "train_ppo"]
