"""REINFORCE (Williams 1992): whole episodes, Monte-Carlo returns `G_t`, and the policy gradient
`−Σ_t (G_t − b_t)·∇log π(a_t|s_t)` with a baseline `b`: none, the batch's mean return, or a
learned value `V(s_t)` (then also regressed on `G_t`).

Returns come from `losses.advantages.discounted_returns` (GAE with V = 0 and λ = 1), the
policy-gradient term from `losses.policy.clipped_policy_loss` at ratio 1. A time-limit
truncation ends the episode like a terminal state (no bootstrap: the method has no critic by
default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minigpt.gym.config import REINFORCEConfig
from minigpt.errors import UserError
from minigpt.gym.actor_critic import ActorCriticMLP
from minigpt.gym.common import make_env, torch_seed
from minigpt.gym.session import open_session
from minigpt.losses.advantages import discounted_returns
from minigpt.losses.policy import clipped_policy_loss, clipped_value_loss


def train_reinforce(env_id: str, config: REINFORCEConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
                    env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True,
                    eval_every: int = 0, progress: float = 5.0, resume: bool = False) -> dict[str, Any]:
    """Train REINFORCE on `env_id` until `total_steps` environment steps have been taken (the
    last update's episodes are finished).

    Returns:
        `{"policy": ActorCriticMLP, "eval", "episode_returns": [(step, return)], "seconds", "steps"}`.

    Raises:
        UserError: bad settings, an unknown environment, an unsupported space.
    """
    from minigpt.losses.advantages import whiten

    c = config if isinstance(config, REINFORCEConfig) else REINFORCEConfig.from_dict(config or {})
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    torch_seed(seed)
    env = make_env(env_id, env_kwargs)
    policy = ActorCriticMLP(env.observation_space, env.action_space, c.hidden_size)
    optimizer = torch.optim.Adam(policy.parameters(), lr=c.learning_rate)
    session, rec = open_session(out_dir, tensorboard, total_steps, env_id, env_kwargs, seed, eval_every, c.eval_episodes, progress, resume)
    step, episode = 0, 0
    session.policy = lambda: policy
    session.state = lambda: {"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "env": env,
                             "step": step, "episode": episode}
    loop = session.take_restored()
    if loop is not None:
        env.close()
        policy.load_state_dict(loop["policy"])
        optimizer.load_state_dict(loop["optimizer"])
        env, step, episode = loop["env"], loop["step"], loop["episode"]
    session.listen()
    try:
        while step < total_steps:
            obs_l, act_l, rew_l, done_l = [], [], [], []
            for _ in range(c.episodes_per_update):
                raw, _ = env.reset(seed=seed + episode)
                episode += 1
                total, done = 0.0, False
                while not done:
                    x = policy.encode([raw])
                    with torch.no_grad():
                        action = policy.sample(x)
                    raw, reward, terminated, truncated, _ = env.step(policy.env_action(action)[0])
                    done = bool(terminated or truncated)
                    obs_l.append(x[0]), act_l.append(action[0]), rew_l.append(float(reward)), done_l.append(float(done))
                    total += float(reward)
                    step += 1
                rec.episode(step, total)
            obs, actions = torch.stack(obs_l), torch.stack(act_l)
            returns = discounted_returns(torch.tensor([rew_l]), torch.tensor([done_l]), c.gamma)[0]
            logp, _, values = policy.evaluate_actions(obs, actions)
            if c.baseline == "value":
                adv = returns - values.detach()
            elif c.baseline == "mean":
                adv = returns - returns.mean()
            else:
                adv = returns
            if c.normalize_advantage and len(adv) > 1:
                adv = whiten(adv)
            ones = torch.ones(len(adv), 1)
            pl, _ = clipped_policy_loss(logp[:, None], logp.detach()[:, None], adv[:, None], ones)  # ratio 1: −A·∇log π
            loss = pl.mean()
            if c.baseline == "value":
                vl, _ = clipped_value_loss(values[:, None], values.detach()[:, None], returns[:, None], ones, None)
                loss = loss + c.vf_coef * vl.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), c.max_grad_norm)
            optimizer.step()
            rec.log(step, policy_loss=float(pl.mean().detach()), mean_return=float(np.mean([r for _, r in rec.episode_returns[-c.episodes_per_update:]])))
            session.tick(step, episode)
    finally:
        session.stop_listening()
        env.close()
        rec.close()
    return {**rec.finish(policy, env_id, env_kwargs, c.eval_episodes, seed, step), "session": session}


__all__ = ["train_reinforce"]
