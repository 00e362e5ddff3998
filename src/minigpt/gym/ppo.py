"""PPO on Gymnasium environments (Schulman et al. 2017, arXiv:1707.06347), with the same
advantage and loss functions RLHF's PPO uses: `losses.advantages.gae` (in its
environment-rollout layout), `losses.advantages.whiten`, `losses.policy.clipped_policy_loss`
and `losses.policy.clipped_value_loss`.

A rollout is `num_steps` steps of `num_envs` vectorised environments; then `num_epochs` passes of
`num_minibatches` minibatches over it. Discrete actions use a categorical policy, continuous
(Box) ones a diagonal Gaussian with a learned, state-independent log-std (actions are clipped to
the bounds when stepping; the log-prob is of the unclipped sample). A time-limit truncation
bootstraps: the reward of that step gets `γ·V(final observation)` added.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minigpt.config import DictConfig
from minigpt.errors import UserError
from minigpt.gym.common import MetricsLog, evaluate_policy, finished_returns, make_vector_env, mlp, torch_seed
from minigpt.losses.advantages import gae, whiten
from minigpt.losses.policy import clipped_policy_loss, clipped_value_loss


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
    clip_range_vf: float | None = None
    """Clip the value update to ±this around the rollout's values (None: no clipping)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
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


class ActorCriticMLP(nn.Module):
    """Separate actor and critic MLPs (two tanh hidden layers each).

    `distribution(obs (N, obs_dim))` is a categorical over `n` actions or a diagonal Gaussian
    over `action_dim` (log-prob summed over dimensions); `value(obs) -> (N,)`.
    """

    def __init__(self, obs_dim: int, action_space: Any, hidden_size: int = 64) -> None:
        super().__init__()
        from gymnasium import spaces

        self.discrete = isinstance(action_space, spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            out = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.zeros(out))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise UserError(f"PPO here takes Discrete or 1-D Box actions, not {action_space}")
        self.actor = mlp([obs_dim, hidden_size, hidden_size, out], last_gain=0.01)
        self.critic = mlp([obs_dim, hidden_size, hidden_size, 1], last_gain=1.0)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Independent(torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def act_deterministic(self, obs: np.ndarray) -> Any:
        """The most likely action (the mean, clipped to the bounds, for Gaussian policies)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))[None]
        if self.discrete:
            return int(self.actor(x).argmax(-1))
        return torch.clamp(self.actor(x), self.low, self.high)[0].numpy()

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """The sampled action as the environment takes it (clipped to a Box's bounds)."""
        if self.discrete:
            return action.numpy()
        return torch.clamp(action, self.low, self.high).numpy()


def _flat_obs_dim(space: Any) -> int:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)  # one-hot
    raise UserError(f"observation space {space} is not supported (Box or Discrete)")


def _obs_tensor(obs: np.ndarray, space: Any) -> torch.Tensor:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return torch.nn.functional.one_hot(torch.as_tensor(obs, dtype=torch.long), int(space.n)).float()
    return torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(len(obs), -1)


def train_ppo(env_id: str, config: PPOConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
              env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True) -> dict[str, Any]:
    """Train a PPO agent on `env_id` for `total_steps` environment steps.

    Args:
        env_id: a Gymnasium id (`CartPole-v1`, `Pendulum-v1`, …).
        config: `PPOConfig` or a dict of its fields.
        total_steps: environment steps over all environments (rounded up to whole rollouts).
        seed: seeds torch, numpy and the environments' first resets.
        env_kwargs: keyword arguments of `gymnasium.make`.
        out_dir: where `metrics.jsonl` and TensorBoard logs go (None: nowhere).
        tensorboard: also write TensorBoard logs.

    Returns:
        `{"policy": ActorCriticMLP, "eval": {"mean_return", "std_return", "episodes"},
        "episode_returns": [(step, return), ...], "seconds"}`.

    Raises:
        UserError: bad settings, an unknown environment, an unsupported space.
    """
    c = config if isinstance(config, PPOConfig) else PPOConfig.from_dict(config or {})
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    torch_seed(seed)
    envs = make_vector_env(env_id, c.num_envs, env_kwargs)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    policy = ActorCriticMLP(_flat_obs_dim(obs_space), act_space, c.hidden_size)
    optimizer = torch.optim.Adam(policy.parameters(), lr=c.learning_rate, eps=1e-5)
    log = MetricsLog(Path(out_dir), tensorboard) if out_dir is not None else None
    n, t_len = c.num_envs, c.num_steps
    batch = n * t_len
    updates = -(-total_steps // batch)
    obs_buf = torch.zeros(t_len, n, _flat_obs_dim(obs_space))
    act_buf = torch.zeros((t_len, n) + (() if policy.discrete else act_space.shape), dtype=torch.long if policy.discrete else torch.float32)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(t_len, n) for _ in range(4))
    episode_returns: list[tuple[int, float]] = []
    obs_np, _ = envs.reset(seed=seed)
    obs = _obs_tensor(obs_np, obs_space)
    step = 0
    t0 = time.time()
    try:
        for update in range(updates):
            if c.anneal_lr:
                optimizer.param_groups[0]["lr"] = c.learning_rate * (1 - update / updates)
            for t in range(t_len):
                with torch.no_grad():
                    dist = policy.distribution(obs)
                    action = dist.sample()
                    logp_buf[t], val_buf[t] = dist.log_prob(action), policy.value(obs)
                obs_buf[t], act_buf[t] = obs, action
                obs_np, reward, terminated, truncated, info = envs.step(policy.env_action(action))
                step += n
                reward = torch.as_tensor(reward, dtype=torch.float32)
                cut = truncated & ~terminated
                if cut.any():  # a time limit, not a terminal state: bootstrap from the last observation
                    final = _obs_tensor(np.stack([info["final_obs"][i] for i in np.nonzero(cut)[0]]), obs_space)
                    with torch.no_grad():
                        reward[torch.as_tensor(cut)] += c.gamma * policy.value(final)
                rew_buf[t] = reward
                done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
                obs = _obs_tensor(obs_np, obs_space)
                for r in finished_returns(info):
                    episode_returns.append((step, r))
                    if log is not None:
                        log.log(step, episode_return=r)
            with torch.no_grad():
                last_values = policy.value(obs)
            # gae takes rows = environments, columns = time.
            adv, ret = gae(rew_buf.T, val_buf.T, None, c.gamma, c.gae_lambda, dones=done_buf.T, last_values=last_values)
            adv, ret = adv.T.reshape(batch), ret.T.reshape(batch)
            b_obs, b_act = obs_buf.reshape(batch, -1), act_buf.reshape((batch,) + act_buf.shape[2:])
            b_logp, b_val = logp_buf.reshape(batch), val_buf.reshape(batch)
            stats: dict[str, float] = {}
            mb = batch // c.num_minibatches
            for _ in range(c.num_epochs):
                order = torch.randperm(batch)
                for start in range(0, batch, mb):
                    idx = order[start : start + mb]
                    dist = policy.distribution(b_obs[idx])
                    logp = dist.log_prob(b_act[idx])
                    a = whiten(adv[idx]) if c.normalize_advantage and mb > 1 else adv[idx]
                    ones = torch.ones(len(idx), 1)
                    pl, pstats = clipped_policy_loss(logp[:, None], b_logp[idx, None], a[:, None], ones, c.clip_range)
                    vl, vstats = clipped_value_loss(policy.value(b_obs[idx])[:, None], b_val[idx, None], ret[idx, None], ones, c.clip_range_vf)
                    entropy = dist.entropy().mean()
                    loss = pl.mean() + c.vf_coef * vl.mean() - c.ent_coef * entropy
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(policy.parameters(), c.max_grad_norm)
                    optimizer.step()
                    stats = {"policy_loss": float(pl.mean().detach()), "value_loss": float(vl.mean().detach()), "entropy": float(entropy.detach()),
                             "approx_kl": pstats["approx_kl"], "clip_fraction": pstats["clip_fraction"], **vstats}
            if log is not None:
                log.log(step, **stats, lr=optimizer.param_groups[0]["lr"])
    finally:
        envs.close()
        if log is not None:
            log.close()
    seconds = time.time() - t0
    policy.eval()
    result = evaluate_policy(policy.act_deterministic, env_id, env_kwargs, c.eval_episodes, seed + 10_000) if c.eval_episodes else {}
    return {"policy": policy, "eval": result, "episode_returns": episode_returns, "seconds": seconds, "steps": step}


__all__ = ["ActorCriticMLP", "PPOConfig", "train_ppo"]
