"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016, arXiv:1602.01783): short rollouts
of vectorised environments, n-step (λ = 1) or GAE advantages, one update per rollout, an entropy
bonus, and an actor and a critic head on a shared trunk by default.

The advantages come from `losses.advantages.gae` and the policy-gradient term from
`losses.policy.clipped_policy_loss` at ratio 1 (its gradient is then −A·∇log π, the plain
policy gradient), the same functions PPO and RLHF use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from minigpt.gym.config import A2CConfig
from minigpt.errors import UserError
from minigpt.gym.actor_critic import ActorCriticMLP, RolloutCollector
from minigpt.gym.common import make_vector_env, torch_seed
from minigpt.gym.session import open_session
from minigpt.losses.advantages import whiten
from minigpt.losses.policy import clipped_policy_loss, clipped_value_loss


def train_a2c(env_id: str, config: A2CConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
              env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True,
              eval_every: int = 0, progress: float = 5.0, resume: bool = False) -> dict[str, Any]:
    """Train A2C on `env_id` for `total_steps` environment steps (over all environments).

    Returns:
        `{"policy": ActorCriticMLP, "eval", "episode_returns": [(step, return)], "seconds", "steps"}`.

    Raises:
        UserError: bad settings, an unknown environment, an unsupported space.
    """
    c = config if isinstance(config, A2CConfig) else A2CConfig.from_dict(config or {})
    if total_steps <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    torch_seed(seed)
    envs = make_vector_env(env_id, c.num_envs, env_kwargs)
    policy = ActorCriticMLP(envs.single_observation_space, envs.single_action_space, c.hidden_size, shared=c.shared)
    if c.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(policy.parameters(), lr=c.learning_rate, alpha=0.99, eps=1e-5)
    else:
        optimizer = torch.optim.Adam(policy.parameters(), lr=c.learning_rate)
    session, rec = open_session(out_dir, tensorboard, total_steps, env_id, env_kwargs, seed, eval_every, c.eval_episodes, progress, resume)

    collector = RolloutCollector(envs, policy, c.gamma, seed, rec.episode)
    updates = -(-total_steps // (c.num_envs * c.num_steps))
    pos = {"update": 0}
    envs = session.attach_rollouts(policy, optimizer, collector, pos)
    session.listen()
    try:
        for update in range(pos["update"], updates):
            ro = collector.collect(c.num_steps)
            adv, ret = ro.advantages(c.gamma, c.gae_lambda)  # constants
            if c.normalize_advantage:
                adv = whiten(adv)
            # one batched pass over the rollout (the same parameters that acted): differentiable
            # log-probs, entropies and values
            logp, entropy, values = policy.evaluate_actions(ro.obs.flatten(0, 1), ro.actions.flatten(0, 1))
            logp, values = logp[:, None], values[:, None]
            ones = torch.ones_like(logp)
            pl, _ = clipped_policy_loss(logp, logp.detach(), adv.reshape(-1, 1), ones)  # ratio 1: the plain policy gradient
            vl, _ = clipped_value_loss(values, values.detach(), ret.reshape(-1, 1), ones, None)  # ½(V − R)²
            entropy = entropy.mean()
            loss = pl.mean() + c.vf_coef * vl.mean() - c.ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), c.max_grad_norm)
            optimizer.step()
            if update % 50 == 0:
                rec.log(collector.steps, policy_loss=float(pl.mean().detach()), value_loss=float(vl.mean().detach()), entropy=float(entropy.detach()))
            pos["update"] = update + 1
            session.tick(collector.steps, len(rec.episode_returns))
    finally:
        session.stop_listening()
        envs.close()
        rec.close()
    return {**rec.finish(policy, env_id, env_kwargs, c.eval_episodes, seed, collector.steps), "session": session}


__all__ = ["train_a2c"]
