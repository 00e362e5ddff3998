"""Classic reinforcement learning on Gymnasium environments (`minigpt gym`), built on the same
advantage and policy-loss functions as RLHF (`minigpt.losses.advantages`, `minigpt.losses.policy`).

Python API, one `train_*` per algorithm, e.g. `train_ppo(env_id, config, total_steps, seed, ...)`,
`train_qlearning(...)`; each returns the policy, its evaluation and the episode returns.
"""

from minigpt.gym.dqn import DQNConfig, train_dqn
from minigpt.gym.ppo import ActorCriticMLP, PPOConfig, train_ppo
from minigpt.gym.qlearning import QLearningConfig, QTable, train_qlearning

__all__ = ["DQNConfig", "train_dqn", "ActorCriticMLP", "PPOConfig", "QLearningConfig", "QTable", "train_ppo", "train_qlearning"]
