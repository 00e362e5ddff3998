"""Classic reinforcement learning on Gymnasium environments (`minigpt gym`), built on the same
advantage and policy-loss functions as RLHF (`minigpt.losses.advantages`, `minigpt.losses.policy`).

Python API, one `train_*` per algorithm, each `train_x(env_id, config, total_steps, seed,
env_kwargs=None, out_dir=None)` returning the policy, its deterministic evaluation
(`{"mean_return", "std_return", "episodes"}`) and the episode returns.
"""

from minigpt.gym.a2c import A2CConfig, train_a2c
from minigpt.gym.actor_critic import ActorCriticMLP
from minigpt.gym.dqn import DQNConfig, train_dqn
from minigpt.gym.ppo import PPOConfig, train_ppo
from minigpt.gym.qlearning import QLearningConfig, QTable, train_qlearning
from minigpt.gym.reinforce import REINFORCEConfig, train_reinforce

__all__ = [
    "A2CConfig", "ActorCriticMLP", "DQNConfig", "PPOConfig", "QLearningConfig", "QTable", "REINFORCEConfig",
    "train_a2c", "train_dqn", "train_ppo", "train_qlearning", "train_reinforce",
]
