"""PPO on Gymnasium environments (Schulman et al. 2017, arXiv:1707.06347), with the same
advantage and loss functions RLHF's PPO uses: `losses.advantages.gae` (in its
environment-rollout layout, through `gym.actor_critic.Rollout.advantages`),
`losses.advantages.whiten`, `losses.policy.clipped_policy_loss` and
`losses.policy.clipped_value_loss`.

A rollout is `num_steps` steps of `num_envs` vectorised environments; then `num_epochs` passes of
`num_minibatches` minibatches over it. Discrete actions use a categorical policy, continuous
(Box) ones a diagonal Gaussian with a learned, state-independent log-std (actions are clipped to
the bounds when stepping; the log-prob is of the unclipped sample). A time-limit truncation
bootstraps: the reward of that step gets `γ·V(final observation)` added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from minigpt.gym.config import PPOConfig
from minigpt.errors import UserError
from minigpt.gym.actor_critic import ActorCriticMLP, RolloutCollector
from minigpt.gym.common import make_vector_env, torch_seed
from minigpt.gym.session import open_session
from minigpt.losses.advantages import whiten
from minigpt.losses.policy import clipped_policy_loss, clipped_value_loss


def train_ppo(env_id: str, config: PPOConfig | dict | None = None, total_steps: int = 100_000, seed: int = 0,
              env_kwargs: dict | None = None, out_dir: str | Path | None = None, tensorboard: bool = True,
              eval_every: int = 0, progress: float = 5.0, resume: bool = False) -> dict[str, Any]:
    """Train a PPO agent on `env_id` for `total_steps` environment steps.

    Args:
        env_id: a Gymnasium id (`CartPole-v1`, `Pendulum-v1`, …).
        config: `PPOConfig` or a dict of its fields.
        total_steps: environment steps over all environments (rounded up to whole rollouts).
        seed: seeds torch, numpy and the environments' first resets.
        env_kwargs: keyword arguments of `gymnasium.make`.
        out_dir: where `metrics.jsonl` and TensorBoard logs go (None: nowhere).
        tensorboard: also write TensorBoard logs.
        eval_every / progress / resume: see `minigpt.gym.session.GymSession` (evaluation every
            N steps keeping the best policy, a progress line every N seconds, continuing
            `out_dir`'s checkpoint).

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
    policy = ActorCriticMLP(envs.single_observation_space, envs.single_action_space, c.hidden_size)
    optimizer = torch.optim.Adam(policy.parameters(), lr=c.learning_rate, eps=1e-5, fused=True)
    session, rec = open_session(out_dir, tensorboard, total_steps, env_id, env_kwargs, seed, eval_every, c.eval_episodes, progress, resume)

    batch = c.num_envs * c.num_steps
    updates = -(-total_steps // batch)
    collector = RolloutCollector(envs, policy, c.gamma, seed, rec.episode)
    pos = {"update": 0}
    envs = session.attach_rollouts(policy, optimizer, collector, pos)
    session.listen()
    try:
        for update in range(pos["update"], updates):
            if c.anneal_lr:
                optimizer.param_groups[0]["lr"] = c.learning_rate * (1 - update / updates)
            clip = c.clip_range * (1 - update / updates) if c.anneal_clip_range else c.clip_range
            ro = collector.collect(c.num_steps)
            adv, ret = ro.advantages(c.gamma, c.gae_lambda)
            adv, ret = adv.reshape(batch), ret.reshape(batch)
            b_obs, b_act = ro.obs.reshape(batch, -1), ro.actions.reshape((batch,) + ro.actions.shape[2:])
            b_logp, b_val = ro.log_probs.reshape(batch), ro.values.reshape(batch)
            if c.normalize_advantage and c.num_minibatches == 1:
                adv = whiten(adv)  # the whole rollout is each minibatch: whiten once
            stats: dict[str, float] = {}
            mb = batch // c.num_minibatches
            ones = torch.ones(mb, 1)
            for epoch in range(c.num_epochs):
                order = torch.randperm(batch)
                for start in range(0, batch, mb):
                    idx = order[start : start + mb]
                    last = epoch == c.num_epochs - 1 and start + mb == batch  # the minibatch whose stats are logged
                    obs = b_obs[idx]
                    logp, entropy, values = policy.evaluate_actions(obs, b_act[idx])
                    a = whiten(adv[idx]) if c.normalize_advantage and 1 < mb < batch else adv[idx]
                    pl, pstats = clipped_policy_loss(logp[:, None], b_logp[idx, None], a[:, None], ones, clip, with_stats=last)
                    vl, vstats = clipped_value_loss(values[:, None], b_val[idx, None], ret[idx, None], ones, c.clip_range_vf)
                    entropy = entropy.mean()
                    loss = pl.mean() + c.vf_coef * vl.mean() - c.ent_coef * entropy
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(policy.parameters(), c.max_grad_norm, foreach=True)
                    optimizer.step()
                    if last:
                        stats = {"policy_loss": float(pl.mean().detach()), "value_loss": float(vl.mean().detach()), "entropy": float(entropy.detach()),
                                 "approx_kl": pstats["approx_kl"], "clip_fraction": pstats["clip_fraction"], **vstats}
            rec.log(collector.steps, **stats, lr=optimizer.param_groups[0]["lr"])
            pos["update"] = update + 1
            session.tick(collector.steps, len(rec.episode_returns))
    finally:
        session.stop_listening()
        envs.close()
        rec.close()
    return {**rec.finish(policy, env_id, env_kwargs, c.eval_episodes, seed, collector.steps), "session": session}


__all__ = ["train_ppo"]
