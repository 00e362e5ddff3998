"""Classic reinforcement learning on Gymnasium environments (`minigpt gym`), built on the same
advantage and policy-loss functions as RLHF (`minigpt.losses.advantages`, `minigpt.losses.policy`).

Python API, one `train_*` per algorithm, each `train_x(env_id, config, total_steps, seed,
env_kwargs=None, out_dir=None)` returning the policy, its deterministic evaluation
(`{"mean_return", "std_return", "episodes"}`) and the episode returns.

The names are imported on first use (`minigpt._lazy`): importing the package is cheap."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    "A2CConfig": "minigpt.gym.config",
    "train_a2c": "minigpt.gym.a2c",
    "ActorCriticMLP": "minigpt.gym.actor_critic",
    "DQNConfig": "minigpt.gym.config",
    "train_dqn": "minigpt.gym.dqn",
    "PPOConfig": "minigpt.gym.config",
    "train_ppo": "minigpt.gym.ppo",
    "QLearningConfig": "minigpt.gym.config",
    "QTable": "minigpt.gym.qlearning",
    "train_qlearning": "minigpt.gym.qlearning",
    "REINFORCEConfig": "minigpt.gym.config",
    "train_reinforce": "minigpt.gym.reinforce",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "A2CConfig", "ActorCriticMLP", "DQNConfig", "PPOConfig", "QLearningConfig", "QTable", "REINFORCEConfig",
    "train_a2c", "train_dqn", "train_ppo", "train_qlearning", "train_reinforce",
]
