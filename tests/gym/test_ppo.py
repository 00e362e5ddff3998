"""PPO on Gymnasium (`minigpt.gym.ppo`): GAE over episode boundaries, the functions shared
with RLHF, seeded reproducibility, a short CartPole run, bad input and `--help`."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gymnasium")

from minigpt.cli import main  # noqa: E402
from minigpt.errors import UserError  # noqa: E402


def test_gae_stops_bootstrapping_at_an_episode_end():
    """One environment, 4 steps; the first episode ends at step 1, the rollout stops inside the
    second one (bootstrap from last_values). Hand computation with γ = 0.9, λ = 0.5."""
    from minigpt.losses.advantages import gae

    r = torch.tensor([[1.0, 2.0, 0.5, 1.0]])
    v = torch.tensor([[0.5, 1.0, 0.2, 0.4]])
    dones = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    last = torch.tensor([3.0])
    g, lam = 0.9, 0.5
    d3 = 1.0 + g * 3.0 - 0.4  # bootstraps from the state after the rollout
    d2 = 0.5 + g * 0.4 - 0.2
    d1 = 2.0 - 1.0  # the episode ended: no V(s_2)
    d0 = 1.0 + g * 1.0 - 0.5
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1  # nothing flows back across the boundary
    a0 = d0 + g * lam * a1
    adv, ret = gae(r, v, None, g, lam, dones=dones, last_values=last)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, a3]]))
    assert torch.allclose(ret, adv + v)
    with pytest.raises(ValueError, match="last_values needs dones"):
        gae(r, v, None, g, lam, last_values=last)


def test_gym_and_rlhf_use_the_same_advantage_and_loss_functions():
    import minigpt.gym.actor_critic as gym_ac
    import minigpt.gym.ppo as gym_ppo
    import minigpt.objectives.ppo as rlhf_ppo
    from minigpt.losses import advantages, policy

    assert gym_ac.gae is rlhf_ppo.gae is advantages.gae
    assert gym_ppo.whiten is rlhf_ppo.whiten is advantages.whiten
    assert gym_ppo.clipped_policy_loss is policy.clipped_policy_loss
    assert gym_ppo.clipped_value_loss is policy.clipped_value_loss
    assert gym_ac.entropy_from_logits is policy.entropy_from_logits


def test_the_policy_log_probs_entropy_and_samples_match_torch_distributions():
    """The policy writes its categorical and Gaussian log-probs and entropies out by hand (for
    speed); they must equal torch.distributions', and its inverse-CDF sampler must draw each
    action with its probability."""
    import gymnasium

    from minigpt.gym.actor_critic import ActorCriticMLP

    torch.manual_seed(0)
    discrete = ActorCriticMLP(gymnasium.spaces.Box(-1, 1, (3,)), gymnasium.spaces.Discrete(4), 16)
    gaussian = ActorCriticMLP(gymnasium.spaces.Box(-1, 1, (3,)), gymnasium.spaces.Box(-2, 2, (2,)), 16)
    with torch.no_grad():
        gaussian.log_std.copy_(torch.tensor([-0.5, 0.3]))
        discrete.actor[-1].weight.mul_(100)  # far from uniform
    x = torch.randn(5, 3)
    actions = torch.tensor([0, 3, 1, 2, 3])
    logp, ent, values = discrete.evaluate_actions(x, actions)
    ref = torch.distributions.Categorical(logits=discrete.actor(x))
    assert torch.allclose(logp, ref.log_prob(actions), atol=1e-5) and torch.allclose(ent, ref.entropy(), atol=1e-5)
    a = torch.randn(5, 2)
    logp, ent, _ = gaussian.evaluate_actions(x, a)
    ref = torch.distributions.Independent(torch.distributions.Normal(gaussian.actor(x), gaussian.log_std.exp()), 1)
    assert torch.allclose(logp, ref.log_prob(a), atol=1e-5) and torch.allclose(ent, ref.entropy(), atol=1e-5)

    one = x[:1].expand(40_000, 3)
    probs = torch.softmax(discrete.actor(x[:1]), -1)[0].detach()
    counts = torch.bincount(discrete.sample(one), minlength=4).float() / 40_000
    assert (counts - probs).abs().max() < 0.01
    draws = gaussian.sample(one)
    assert torch.allclose(draws.mean(0), gaussian.actor(x[:1])[0].detach(), atol=0.03)
    assert torch.allclose(draws.std(0), gaussian.log_std.exp().detach(), atol=0.03)
    assert torch.allclose(values, discrete.value(x))
    actions, logp, values = discrete.act(x)
    assert torch.allclose(logp, discrete.evaluate_actions(x, actions)[0]) and torch.allclose(values, discrete.value(x))


def test_a_fixed_seed_reproduces_the_returns():
    from minigpt.gym.ppo import train_ppo

    cfg = {"num_envs": 2, "num_steps": 64, "eval_episodes": 2}
    a = train_ppo("CartPole-v1", cfg, total_steps=1024, seed=3)
    b = train_ppo("CartPole-v1", cfg, total_steps=1024, seed=3)
    c = train_ppo("CartPole-v1", cfg, total_steps=1024, seed=4)
    assert a["episode_returns"] == b["episode_returns"] and a["eval"] == b["eval"]
    assert a["episode_returns"] != c["episode_returns"]


def test_ppo_balances_cartpole_and_writes_the_run(tmp_path):
    """The default PPO settings, 50k steps (about half a minute): the deterministic policy
    balances the pole past the classic 'solved' line of 195."""
    out = tmp_path / "run"
    assert main(["gym", "--env", "CartPole-v1", "--algo", "ppo", "--total_steps", "50000", "--seed", "1", "--out", str(out),
                 "--no_tensorboard"]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation) == {"mean_return", "std_return", "episodes", "steps", "seconds"} and len(evaluation["episodes"]) == 10
    assert evaluation["steps"] == 50_176 and evaluation["seconds"] > 0  # whole rollouts of 512 steps: ceil(50,000 / 512) × 512
    assert json.loads((out / "environment.json").read_text())["precision"] == "fp32"
    assert evaluation["mean_return"] >= 195
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    returns = [r["episode_return"] for r in rows if "episode_return" in r]
    assert sum(returns[-20:]) / 20 > sum(returns[:20]) / 20 + 100  # it learned during the run
    assert any("policy_loss" in r and "approx_kl" in r for r in rows)
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    from safetensors.torch import load_file

    from minigpt.gym.actor_critic import ActorCriticMLP

    import gymnasium

    env = gymnasium.make("CartPole-v1")
    policy = ActorCriticMLP(env.observation_space, env.action_space, json.loads((out / "policy.json").read_text())["ppo"]["hidden_size"])
    policy.load_state_dict(load_file(out / "policy.safetensors"))
    assert policy.act_deterministic(env.reset(seed=0)[0]) in (0, 1)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    from minigpt.gym.common import check_env_id, parse_env_kwargs

    with pytest.raises(UserError, match="did you mean CartPole-v1"):
        check_env_id("CartPol-v1")
    with pytest.raises(UserError, match="not JSON"):
        parse_env_kwargs("{is_slippery: false}")
    with pytest.raises(UserError, match="JSON object"):
        parse_env_kwargs("[1, 2]")
    assert parse_env_kwargs('{"is_slippery": false}') == {"is_slippery": False}
    assert main(["gym", "--env", "CartPole-v1", "--total_steps", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--total_steps must be > 0" in capsys.readouterr().err
    assert main(["gym", "--env", "Cartpole-v1", "--out", str(tmp_path / "b")]) == 2
    assert "did you mean CartPole-v1" in capsys.readouterr().err
    assert main(["gym", "--env", "FrozenLake-v1", "--env_kwargs", "{bad", "--out", str(tmp_path / "c")]) == 2
    assert "--env_kwargs is not JSON" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_help_lists_each_algorithms_hyper_parameters_with_their_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["gym", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option, doc in (("--ppo.clip_range", "of the clipped surrogate"), ("--dqn.double", "Double DQN"),
                        ("--a2c.gae_lambda", "n-step returns"), ("--reinforce.baseline", "learned V(s)"),
                        ("--qlearning.exploration_fraction", "decays linearly")):
        assert option in out and doc in out, option
