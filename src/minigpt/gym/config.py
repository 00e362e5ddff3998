"""The settings of each classic-RL algorithm (`minigpt gym --ppo.learning_rate ...`): plain
dataclasses with no torch import, so the command line is parsed without loading torch; the
algorithm modules (`minigpt.gym.ppo`, ...) run them."""

from __future__ import annotations

from dataclasses import dataclass

from minigpt.config import DictConfig

#: REINFORCE baselines: none, the batch's mean return, or a learned state-value baseline.
BASELINES = ("none", "mean", "value")


@dataclass
class QLearningConfig(DictConfig):
    """Tabular Q-learning's hyper-parameters."""

    learning_rate: float = 0.1
    """α of the update."""
    gamma: float = 0.99
    """Discount γ."""
    epsilon_start: float = 1.0
    """ε at the first step."""
    epsilon_end: float = 0.05
    """ε after the decay."""
    exploration_fraction: float = 0.5
    """Share of total_steps over which ε decays linearly from epsilon_start to epsilon_end."""
    eval_episodes: int = 100
    """Deterministic (greedy) evaluation episodes after training (eval.json)."""

    def __post_init__(self) -> None:
        self.require([
            (0 < self.learning_rate <= 1, "learning_rate must be in (0, 1]"),
            (0 <= self.gamma <= 1, "gamma must be in [0, 1]"),
            (0 <= self.epsilon_end <= self.epsilon_start <= 1, "need 0 <= epsilon_end <= epsilon_start <= 1"),
            (0 <= self.exploration_fraction <= 1, "exploration_fraction must be in [0, 1]"),
            (self.eval_episodes >= 0, "eval_episodes must be >= 0"),
        ])


@dataclass
class DQNConfig(DictConfig):
    """DQN's hyper-parameters (defaults close to SB3's, for classic control)."""

    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the run (steadies the greedy policy late in
    training, when the buffer holds mostly successful episodes)."""
    buffer_size: int = 50_000
    """Transitions kept in the replay buffer (oldest replaced first)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    learning_starts: int = 1000
    """Environment steps taken (at random) before learning starts."""
    gamma: float = 0.99
    """Discount γ."""
    train_freq: int = 4
    """Environment steps between training rounds."""
    gradient_steps: int = 1
    """Gradient steps per training round."""
    target_update_interval: int = 500
    """With tau = 1: environment steps between hard copies of the online network."""
    tau: float = 1.0
    """1: hard copies; < 1: soft updates θ' ← τ·θ + (1 − τ)·θ' after every gradient step."""
    epsilon_start: float = 1.0
    """ε at the first step."""
    epsilon_end: float = 0.05
    """ε after the decay."""
    exploration_fraction: float = 0.2
    """Share of total_steps over which ε decays linearly."""
    double: bool = False
    """Double DQN: the online network picks the next action, the target network scores it."""
    dueling: bool = False
    """Dueling head: Q = V + A − mean(A)."""
    hidden_size: int = 128
    """Width of the two hidden (ReLU) layers."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm."""
    eval_episodes: int = 10
    """Deterministic (greedy) evaluation episodes after training (eval.json)."""

    def __post_init__(self) -> None:
        self.require([
            (self.learning_rate > 0 and 0 <= self.gamma <= 1, "learning_rate must be > 0 and gamma in [0, 1]"),
            (self.buffer_size >= self.batch_size >= 1, "need buffer_size >= batch_size >= 1"),
            (self.learning_starts >= 0 and self.train_freq >= 1 and self.gradient_steps >= 1, "learning_starts >= 0, train_freq and gradient_steps >= 1"),
            (self.target_update_interval >= 1 and 0 < self.tau <= 1, "target_update_interval must be >= 1 and tau in (0, 1]"),
            (0 <= self.epsilon_end <= self.epsilon_start <= 1, "need 0 <= epsilon_end <= epsilon_start <= 1"),
            (self.hidden_size >= 1 and self.eval_episodes >= 0, "hidden_size must be >= 1 and eval_episodes >= 0"),
        ])


@dataclass
class REINFORCEConfig(DictConfig):
    """REINFORCE's hyper-parameters."""

    gamma: float = 0.99
    """Discount γ."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    episodes_per_update: int = 4
    """Whole episodes per gradient step."""
    baseline: str = "value"
    """none, mean (the batch's mean return) or value (a learned V(s))."""
    vf_coef: float = 0.5
    """Value-loss coefficient (baseline = value)."""
    normalize_advantage: bool = True
    """Whiten the advantages of each update (after the baseline)."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm."""
    hidden_size: int = 64
    """Width of the hidden layers."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training (eval.json)."""

    def __post_init__(self) -> None:
        self.require([
            (0 <= self.gamma <= 1 and self.learning_rate > 0, "gamma must be in [0, 1] and learning_rate > 0"),
            (self.episodes_per_update >= 1, "episodes_per_update must be >= 1"),
            (self.baseline in BASELINES, f"baseline must be one of {', '.join(BASELINES)}"),
            (self.hidden_size >= 1 and self.eval_episodes >= 0, "hidden_size must be >= 1 and eval_episodes >= 0"),
        ])


@dataclass
class A2CConfig(DictConfig):
    """A2C's hyper-parameters. Defaults are SB3's except the network: a shared trunk here (the
    A3C paper's form), separate actor and critic networks in SB3. `shared: false, vf_coef: 1.0`
    is SB3's A2C exactly (configs/gym/a2c_cartpole.yaml); on CartPole-v1 it learns faster than
    the shared trunk (benchmarks/bench_gym.py)."""

    num_envs: int = 8
    """Environments stepped together."""
    num_steps: int = 5
    """Steps per environment in one rollout (the n of n-step returns)."""
    gamma: float = 0.99
    """Discount γ."""
    gae_lambda: float = 1.0
    """GAE λ (1: n-step returns bootstrapped from the last value)."""
    learning_rate: float = 7e-4
    """Learning rate."""
    optimizer: str = "rmsprop"
    """rmsprop (α 0.99, ε 1e-5, as A2C implementations use) or adam."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient. The value loss is ½(V − R)² (CleanRL's form); SB3 uses (V − R)², so
    SB3's vf_coef c is 2c here."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm."""
    normalize_advantage: bool = False
    """Whiten each rollout's advantages."""
    shared: bool = True
    """One trunk for the actor and critic heads (else two networks)."""
    hidden_size: int = 64
    """Width of the hidden layers."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training (eval.json)."""

    def __post_init__(self) -> None:
        self.require([
            (self.num_envs >= 1 and self.num_steps >= 1, "num_envs and num_steps must be >= 1"),
            (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma and gae_lambda must be in [0, 1]"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.optimizer in ("rmsprop", "adam"), "optimizer must be rmsprop or adam"),
            (self.hidden_size >= 1 and self.eval_episodes >= 0, "hidden_size must be >= 1 and eval_episodes >= 0"),
        ])


@dataclass
class PPOConfig(DictConfig):
    """PPO's hyper-parameters (defaults: CleanRL's and SB3's for classic control)."""

    num_envs: int = 4
    """Environments stepped together (gymnasium.vector.SyncVectorEnv)."""
    num_steps: int = 128
    """Steps per environment in one rollout (rollout size = num_envs × num_steps)."""
    gamma: float = 0.99
    """Discount γ."""
    gae_lambda: float = 0.95
    """GAE λ."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    learning_rate: float = 2.5e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    clip_range: float = 0.2
    """ε of the clipped surrogate."""
    anneal_clip_range: bool = False
    """Decay ε linearly to 0 over the run, as RL Zoo's `lin_0.2` schedules do."""
    clip_range_vf: float | None = None
    """Clip the value update to ±this around the rollout's values (None: no clipping)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient. The value loss is ½(V − R)² (CleanRL's form); SB3 uses (V − R)², so
    SB3's vf_coef c is 2c here."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm."""
    normalize_advantage: bool = True
    """Whiten advantages per minibatch."""
    hidden_size: int = 64
    """Width of the two hidden layers of the actor and of the critic."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training (eval.json)."""

    def __post_init__(self) -> None:
        self.require([
            (self.num_envs >= 1 and self.num_steps >= 1, "num_envs and num_steps must be >= 1"),
            (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma and gae_lambda must be in [0, 1]"),
            (self.num_epochs >= 1 and self.num_minibatches >= 1, "num_epochs and num_minibatches must be >= 1"),
            ((self.num_envs * self.num_steps) % self.num_minibatches == 0, "num_envs × num_steps must be a multiple of num_minibatches"),
            (self.learning_rate > 0 and 0 < self.clip_range < 1, "learning_rate must be > 0 and clip_range in (0, 1)"),
            (self.hidden_size >= 1 and self.eval_episodes >= 0, "hidden_size must be >= 1 and eval_episodes >= 0"),
        ])


__all__ = ["BASELINES", "QLearningConfig", "DQNConfig", "REINFORCEConfig", "A2CConfig", "PPOConfig"]
