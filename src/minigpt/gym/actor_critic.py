"""The actor-critic network and the rollout collector that PPO and A2C share (and REINFORCE's
policy network): vectorised Gymnasium environments, discrete or Gaussian actions, and a
time-limit truncation that bootstraps (its reward gets `γ·V(final observation)` added).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from minigpt.errors import UserError
from minigpt.gym.common import finished_returns, mlp
from minigpt.losses.advantages import gae
from minigpt.losses.policy import entropy_from_logits

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def observation_size(space: Any) -> int:
    """Input width for an observation space: a Box flattened, a Discrete one-hot.

    Raises:
        UserError: another kind of space.
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    raise UserError(f"observation space {space} is not supported (Box or Discrete)")


class ActorCriticMLP(nn.Module):
    """A policy and a value function over MLPs with two tanh hidden layers: separate actor and
    critic networks, or (`shared=True`, A2C's usual form) one trunk with two linear heads.

    The policy is a categorical over `n` actions or a diagonal Gaussian over `action_dim` with a
    learned, state-independent log-std (log-prob summed over dimensions): `sample(x)`,
    `evaluate_actions(x, actions)` (with the values), `act(x)` (for rollouts); `value(x) -> (N,)`;
    `encode(observations)` makes `x (N, obs_dim)` (Discrete observations one-hot).

    Raises:
        UserError: an action space other than Discrete or 1-D Box; an unsupported observation
            space.
    """

    def __init__(self, observation_space: Any, action_space: Any, hidden_size: int = 64, shared: bool = False) -> None:
        super().__init__()
        from gymnasium import spaces

        self.obs_dim = observation_size(observation_space)
        self.obs_onehot = isinstance(observation_space, spaces.Discrete)
        self.discrete = isinstance(action_space, spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            out = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.zeros(out))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise UserError(f"the policy takes Discrete or 1-D Box actions, not {action_space}")
        self.shared = shared
        if shared:
            self.trunk = nn.Sequential(mlp([self.obs_dim, hidden_size, hidden_size], last_gain=2**0.5), nn.Tanh())
            self.actor = mlp([hidden_size, out], last_gain=0.01)
            self.critic = mlp([hidden_size, 1], last_gain=1.0)
        else:
            self.trunk = nn.Identity()
            self.actor = mlp([self.obs_dim, hidden_size, hidden_size, out], last_gain=0.01)
            self.critic = mlp([self.obs_dim, hidden_size, hidden_size, 1], last_gain=1.0)

    def encode(self, observations: Any) -> torch.Tensor:
        """`(N, obs_dim)` float inputs from a batch of observations."""
        if self.obs_onehot:
            return torch.nn.functional.one_hot(torch.as_tensor(np.asarray(observations), dtype=torch.long), self.obs_dim).float()
        return torch.as_tensor(np.asarray(observations, dtype=np.float32)).reshape(len(observations), -1)

    def evaluate_actions(self, x: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(log_probs, entropy, values)`, each `(N,)`, in one pass (the trunk computed once):
        log π(a|s) of `actions` (`(N,)` indices, or `(N, action_dim)` for a Gaussian policy,
        summed over dimensions) and H(π(·|s)), in nats, and V(s), for inputs `x (N, obs_dim)`.
        Written out rather than through `torch.distributions`, whose per-call checks cost more
        than the tiny networks here."""
        h = self.trunk(x)
        out = self.actor(h)
        if self.discrete:
            entropy = entropy_from_logits(out)
        else:  # a diagonal Gaussian: Σ_d (½ + ½·log 2π + log σ_d)
            entropy = (0.5 + _HALF_LOG_2PI + self.log_std).sum().expand(out.shape[0])
        return self._log_prob(out, actions), entropy, self.critic(h).squeeze(-1)

    def _log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return torch.log_softmax(out, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - out) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - _HALF_LOG_2PI).sum(-1)

    def _sample(self, out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.discrete:  # inverse-CDF sampling: one uniform per row (cheaper than multinomial)
                cdf = torch.softmax(out, dim=-1).cumsum(-1)
                u = torch.rand(out.shape[:-1] + (1,))
                return (cdf < u).sum(-1).clamp(max=out.shape[-1] - 1)
            return out + torch.randn_like(out) * self.log_std.exp()

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """Actions drawn from π(·|s) for inputs `x (N, obs_dim)` (no gradient): `(N,)` indices or
        `(N, action_dim)` unclipped Gaussian samples."""
        return self._sample(self.actor(self.trunk(x)))

    @torch.no_grad()
    def act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass for a rollout step, without gradient: `(actions, log_probs, values)`
        for inputs `x (N, obs_dim)` (log-probs and values `(N,)`)."""
        h = self.trunk(x)
        out = self.actor(h)
        actions = self._sample(out)
        return actions, self._log_prob(out, actions), self.critic(h).squeeze(-1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V(s) `(N,)`, in return units, for inputs `x (N, obs_dim)`."""
        return self.critic(self.trunk(x)).squeeze(-1)

    @torch.no_grad()
    def act_deterministic(self, obs: Any) -> Any:
        """The most likely action for one observation (the mean, clipped to the bounds, for a
        Gaussian policy)."""
        out = self.actor(self.trunk(self.encode([obs])))
        if self.discrete:
            return int(out.argmax(-1))
        return torch.clamp(out, self.low, self.high)[0].numpy()

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """Sampled actions as the environments take them (clipped to a Box's bounds)."""
        if self.discrete:
            return action.numpy()
        return torch.clamp(action, self.low, self.high).numpy()


@dataclass
class Rollout:
    """`T` steps of `N` environments, time first: `obs (T, N, obs_dim)`, `actions (T, N[, A])`,
    `log_probs`, `rewards` (truncations bootstrapped), `dones` (the episode ended at that
    step), `values` (T, N); `last_values (N,)`: V of the observation after the
    last step."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    values: torch.Tensor
    last_values: torch.Tensor

    def advantages(self, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`(advantages, returns)`, each `(T, N)`, by `losses.advantages.gae` (environments as
        rows, time as columns) with the episode ends and the bootstrap values."""
        adv, ret = gae(self.rewards.T, self.values.T, None, gamma, gae_lambda, dones=self.dones.T, last_values=self.last_values)
        return adv.T, ret.T


class RolloutCollector:
    """Steps `envs` (a vector env from `make_vector_env`) with `policy`, keeping the current
    observation between rollouts; `on_episode(step, return)` hears of every finished episode."""

    def __init__(self, envs: Any, policy: ActorCriticMLP, gamma: float, seed: int, on_episode: Callable[[int, float], None]) -> None:
        self.envs, self.policy, self.gamma, self.on_episode = envs, policy, gamma, on_episode
        obs, _ = envs.reset(seed=seed)
        self.obs = policy.encode(obs)
        self.steps = 0

    def collect(self, num_steps: int) -> Rollout:
        """The next `num_steps` steps of every environment; log-probs and values are constants
        (the update recomputes what it differentiates with `evaluate_actions`)."""
        p, n = self.policy, self.envs.num_envs
        obs_l, act_l, logp_l, val_l, rew_l, done_l = [], [], [], [], [], []
        for _ in range(num_steps):
            action, logp, value = p.act(self.obs)
            logp_l.append(logp)
            val_l.append(value)
            obs_l.append(self.obs)
            act_l.append(action)
            raw, reward, terminated, truncated, info = self.envs.step(p.env_action(action))
            self.steps += n
            reward = torch.as_tensor(reward, dtype=torch.float32)
            cut = truncated & ~terminated
            if cut.any():  # a time limit, not a terminal state: bootstrap from the last observation
                final = p.encode(np.stack([info["final_obs"][i] for i in np.nonzero(cut)[0]]))
                with torch.no_grad():
                    reward[torch.as_tensor(cut)] += self.gamma * p.value(final)
            rew_l.append(reward)
            done_l.append(torch.as_tensor(terminated | truncated, dtype=torch.float32))
            self.obs = p.encode(raw)
            for r in finished_returns(info):
                self.on_episode(self.steps, r)
        with torch.no_grad():
            last = p.value(self.obs)
        return Rollout(torch.stack(obs_l), torch.stack(act_l), torch.stack(logp_l), torch.stack(rew_l), torch.stack(done_l), torch.stack(val_l), last)


__all__ = ["ActorCriticMLP", "Rollout", "RolloutCollector", "observation_size"]
