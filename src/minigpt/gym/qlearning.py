"""Tabular Q-learning (Watkins & Dayan 1992) with ε-greedy exploration decaying linearly, for
environments whose observations and actions are both `Discrete` (FrozenLake, Taxi, CliffWalking).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minigpt.gym.config import QLearningConfig
from minigpt.errors import UserError
from minigpt.gym.common import make_env, torch_seed
from minigpt.gym.session import open_session


def q_learning_update(q: np.ndarray, state: int, action: int, reward: float, next_state: int, terminal: bool, alpha: float, gamma: float) -> float:
    """One Q-learning update in place, returning the TD error:

        δ = r + γ·(1 − terminal)·max_a' Q(s', a') − Q(s, a),   Q(s, a) ← Q(s, a) + α·δ

    A time-limit truncation is not terminal: the caller passes `terminal=False` for it.
    """
    target = reward + (0.0 if terminal else gamma * float(q[next_state].max()))
    delta = target - float(q[state, action])
    q[state, action] += alpha * delta
    return delta


def linear_schedule(start: float, end: float, fraction: float, step: int, total: int) -> float:
    """`start` moving linearly to `end` over the first `fraction · total` steps, then `end`."""
    span = fraction * total
    if span <= 0:
        return end
    return end + (start - end) * max(0.0, 1.0 - step / span)


class QTable(nn.Module):
    """A Q-table `(num_states, num_actions)` kept as a buffer (saved with the policy)."""

    def __init__(self, num_states: int, num_actions: int) -> None:
        super().__init__()
        self.register_buffer("q", torch.zeros(num_states, num_actions, dtype=torch.float64))

    def act_deterministic(self, obs: Any) -> int:
        """The greedy action (the lowest index among ties)."""
        return int(self.q[int(obs)].argmax())


def _greedy(row: np.ndarray, rng: np.random.Generator) -> int:
    """argmax with ties broken at random (a zero-initialised table must not always pick 0)."""
    best = np.flatnonzero(row == row.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def train_qlearning(env_id: str, config: QLearningConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
                    env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True,
                    eval_every: int = 0, progress: float = 5.0, resume: bool = False) -> dict[str, Any]:
    """Tabular Q-learning on `env_id` for `total_steps` environment steps.

    Returns:
        `{"policy": QTable, "eval", "episode_returns": [(step, return)], "seconds", "steps"}`.

    Raises:
        UserError: observations or actions that are not `Discrete`, `total_steps` <= 0.
    """
    from gymnasium import spaces

    c = config if isinstance(config, QLearningConfig) else QLearningConfig.from_dict(config or {})
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    env = make_env(env_id, env_kwargs)
    if not (isinstance(env.observation_space, spaces.Discrete) and isinstance(env.action_space, spaces.Discrete)):
        env.close()
        raise UserError(f"tabular Q-learning needs Discrete observations and actions; {env_id} has "
                        f"{env.observation_space} and {env.action_space} (use dqn or ppo)")
    torch_seed(seed)
    rng = np.random.default_rng(seed)
    table = QTable(int(env.observation_space.n), int(env.action_space.n))
    q = table.q.numpy()  # shares memory with the buffer
    session, rec = open_session(out_dir, tensorboard, total_steps, env_id, env_kwargs, seed, eval_every, c.eval_episodes, progress, resume)
    obs, _ = env.reset(seed=seed)
    total, episode, done = 0.0, 0, 0
    session.policy = lambda: table
    session.state = lambda: {"q": q.copy(), "rng": rng, "env": env, "obs": obs, "total": total, "episode": episode, "step": done}
    loop = session.take_restored()
    if loop is not None:
        env.close()
        q[...] = loop["q"]
        rng, env, obs, total, episode, done = loop["rng"], loop["env"], loop["obs"], loop["total"], loop["episode"], loop["step"]
    session.listen()
    try:
        for step in range(done + 1, total_steps + 1):
            eps = linear_schedule(c.epsilon_start, c.epsilon_end, c.exploration_fraction, step - 1, total_steps)
            action = int(rng.integers(q.shape[1])) if rng.random() < eps else _greedy(q[obs], rng)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            q_learning_update(q, int(obs), action, float(reward), int(next_obs), bool(terminated), c.learning_rate, c.gamma)
            total += float(reward)
            obs = next_obs
            if terminated or truncated:
                episode += 1
                rec.episode(step, total, epsilon=eps)
                total = 0.0
                obs, _ = env.reset(seed=seed + episode)
            done = step
            session.tick(step, episode)
    finally:
        session.stop_listening()
        env.close()
        rec.close()
    return {**rec.finish(table, env_id, env_kwargs, c.eval_episodes, seed, total_steps), "session": session}


__all__ = ["QTable", "linear_schedule", "q_learning_update", "train_qlearning"]
