"""Deep Q-learning (Mnih et al. 2015): a replay buffer, a target network (a hard copy every N
steps, or soft τ updates), the Huber loss and a linearly decaying ε; optionally the Double DQN
target (van Hasselt et al. 2016, arXiv:1509.06461) and the dueling head (Wang et al. 2016,
arXiv:1511.06581). Discrete actions; `Box` or `Discrete` (one-hot) observations.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minigpt.gym.config import DQNConfig
from minigpt.errors import UserError
from minigpt.gym.common import make_env, torch_seed
from minigpt.gym.session import open_session
from minigpt.gym.qlearning import linear_schedule


def dueling_q(value: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """`Q = V + A − mean_a(A)` (Wang et al. 2016 eq. 9): `value (B, 1)`, `advantages (B, A)` ->
    `(B, A)`. Subtracting the mean makes V and A identifiable."""
    return value + advantages - advantages.mean(dim=-1, keepdim=True)


@torch.no_grad()
def dqn_targets(
    rewards: torch.Tensor, next_q_target: torch.Tensor, terminals: torch.Tensor, gamma: float, next_q_online: torch.Tensor | None = None
) -> torch.Tensor:
    """Regression targets `y = r + γ·(1 − terminal)·Q'(s', a')` of shape `(B,)`.

    Plain DQN: `a' = argmax_a Q_target(s', a)`, i.e. `max_a Q_target(s', a)`. Double DQN (given
    `next_q_online (B, A)`): `a' = argmax_a Q_online(s', a)`, scored by the target network, which
    removes the max operator's overestimation.

    Args:
        rewards: `(B,)`.
        next_q_target: `(B, A)` target-network values of the next states.
        terminals: `(B,)` 1 where the episode terminated (a time-limit truncation is not
            terminal: it bootstraps).
        gamma: discount γ.
        next_q_online: `(B, A)` online-network values of the next states (Double DQN), or None.
    """
    if next_q_online is None:
        best = next_q_target.max(dim=-1).values
    else:
        best = next_q_target.gather(-1, next_q_online.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return rewards + gamma * (1 - terminals.float()) * best


class QNetwork(nn.Module):
    """`obs (B, obs_dim) -> Q (B, A)`: two ReLU layers, then a linear head or the dueling heads."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 128, dueling: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size), nn.ReLU())
        self.dueling = dueling
        if dueling:
            self.value_head = nn.Linear(hidden_size, 1)
            self.advantage_head = nn.Linear(hidden_size, num_actions)
        else:
            self.head = nn.Linear(hidden_size, num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """`(B, obs_dim) -> (B, A)` action values, in return units."""
        h = self.trunk(obs)
        if self.dueling:
            return dueling_q(self.value_head(h), self.advantage_head(h))
        return self.head(h)


class ReplayBuffer:
    """A circular buffer of transitions `(obs, action, reward, next_obs, terminal)` in numpy."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminals = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.pos = capacity, 0, 0

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        """Store one transition, replacing the oldest once the buffer is full."""
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminals[i] = obs, action, reward, next_obs, terminal
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """`n` transitions drawn uniformly with replacement: `obs (n, obs_dim)`, `actions (n,)`,
        `rewards (n,)`, `next_obs (n, obs_dim)`, `terminals (n,)`."""
        idx = rng.integers(self.size, size=n)
        return {k: torch.from_numpy(getattr(self, k)[idx]) for k in ("obs", "actions", "rewards", "next_obs", "terminals")}


def _encoder(space: Any):
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        return n, lambda o: np.eye(n, dtype=np.float32)[int(o)]
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape)), lambda o: np.asarray(o, dtype=np.float32).reshape(-1)
    raise UserError(f"observation space {space} is not supported (Box or Discrete)")


class GreedyPolicy(nn.Module):
    """A Q-network with the observation encoding, acting greedily (what is saved and evaluated)."""

    def __init__(self, q: QNetwork, encode) -> None:
        super().__init__()
        self.q = q
        self._encode = encode

    @torch.no_grad()
    def act_deterministic(self, obs: Any) -> int:
        """The action with the highest Q-value for one observation."""
        return int(self.q(torch.from_numpy(self._encode(obs))[None]).argmax(-1))


def train_dqn(env_id: str, config: DQNConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
              env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True,
              eval_every: int = 0, progress: float = 5.0, resume: bool = False) -> dict[str, Any]:
    """Train DQN (optionally Double and/or dueling) on `env_id` for `total_steps` steps.

    Returns:
        `{"policy": GreedyPolicy, "eval", "episode_returns": [(step, return)], "seconds", "steps"}`.

    Raises:
        UserError: an action space that is not `Discrete` (DQN scores a finite set of actions:
            use ppo for continuous ones), `total_steps` <= 0.
    """
    from gymnasium import spaces

    c = config if isinstance(config, DQNConfig) else DQNConfig.from_dict(config or {})
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    env = make_env(env_id, env_kwargs)
    if not isinstance(env.action_space, spaces.Discrete):
        env.close()
        raise UserError(f"DQN needs Discrete actions; {env_id} has {env.action_space} (use --algo ppo for continuous actions)")
    obs_dim, encode = _encoder(env.observation_space)
    torch_seed(seed)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    online = QNetwork(obs_dim, int(env.action_space.n), c.hidden_size, c.dueling)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), lr=c.learning_rate, fused=True)
    buffer = ReplayBuffer(c.buffer_size, obs_dim)
    session, rec = open_session(out_dir, tensorboard, total_steps, env_id, env_kwargs, seed, eval_every, c.eval_episodes, progress, resume)
    raw, _ = env.reset(seed=seed)
    obs = encode(raw)
    total, episode, done = 0.0, 0, 0
    greedy = GreedyPolicy(online, encode)
    session.policy = lambda: greedy
    session.state = lambda: {"online": online.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict(),
                             "buffer": buffer, "rng": rng, "env": env, "obs": obs, "total": total, "episode": episode, "step": done}
    loop = session.take_restored()
    if loop is not None:
        env.close()
        online.load_state_dict(loop["online"])
        target.load_state_dict(loop["target"])
        optimizer.load_state_dict(loop["optimizer"])
        buffer, rng, env, obs = loop["buffer"], loop["rng"], loop["env"], loop["obs"]
        total, episode, done = loop["total"], loop["episode"], loop["step"]
    session.listen()
    try:
        for step in range(done + 1, total_steps + 1):
            eps = linear_schedule(c.epsilon_start, c.epsilon_end, c.exploration_fraction, step - 1, total_steps)
            if step <= c.learning_starts or rng.random() < eps:
                action = int(env.action_space.sample())
            else:
                with torch.no_grad():
                    action = int(online(torch.from_numpy(obs)[None]).argmax(-1))
            raw, reward, terminated, truncated, _ = env.step(action)
            next_obs = encode(raw)
            buffer.add(obs, action, float(reward), next_obs, bool(terminated))
            total += float(reward)
            obs = next_obs
            if terminated or truncated:
                episode += 1
                rec.episode(step, total, epsilon=eps)
                total = 0.0
                raw, _ = env.reset(seed=seed + episode)
                obs = encode(raw)
            if step > c.learning_starts and step % c.train_freq == 0:
                if c.anneal_lr:
                    optimizer.param_groups[0]["lr"] = c.learning_rate * (1 - (step - 1) / total_steps)
                for _ in range(c.gradient_steps):
                    b = buffer.sample(c.batch_size, rng)
                    with torch.no_grad():
                        next_target = target(b["next_obs"])
                        y = dqn_targets(b["rewards"], next_target, b["terminals"], c.gamma, online(b["next_obs"]) if c.double else None)
                    q = online(b["obs"]).gather(-1, b["actions"][:, None]).squeeze(-1)
                    loss = F.smooth_l1_loss(q, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(online.parameters(), c.max_grad_norm, foreach=True)
                    optimizer.step()
                    if c.tau < 1:
                        with torch.no_grad():
                            for pt, po in zip(target.parameters(), online.parameters()):
                                pt.mul_(1 - c.tau).add_(po, alpha=c.tau)
                if step % (c.train_freq * 25) == 0:
                    rec.log(step, td_loss=float(loss.detach()), q_mean=float(q.detach().mean()))
            if c.tau == 1 and step % c.target_update_interval == 0:
                target.load_state_dict(online.state_dict())
            done = step
            session.tick(step, episode)
    finally:
        session.stop_listening()
        env.close()
        rec.close()
    return {**rec.finish(greedy, env_id, env_kwargs, c.eval_episodes, seed, total_steps), "session": session}


__all__ = ["GreedyPolicy", "QNetwork", "ReplayBuffer", "dqn_targets", "dueling_q", "train_dqn"]
