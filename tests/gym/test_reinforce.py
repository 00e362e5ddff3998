"""REINFORCE and A2C (`minigpt.gym.reinforce`, `minigpt.gym.a2c`): discounted returns within
episodes by hand, and both improve on CartPole."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gymnasium")

from minigpt.cli import main  # noqa: E402


def test_reinforce_returns_are_discounted_sums_within_each_episode():
    from minigpt.losses.advantages import discounted_returns

    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    dones = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]])  # episodes: steps 0-2, then 3-4
    g = 0.5
    expected = [1 + g * 2 + g * g * 3, 2 + g * 3, 3.0, 4 + g * 5, 5.0]
    assert torch.allclose(discounted_returns(rewards, dones, g), torch.tensor([expected]))


@pytest.mark.parametrize(("algo", "steps"), [("reinforce", 15_000), pytest.param("a2c", 50_000, marks=pytest.mark.slow)])  # a2c: 10-12 s
def test_reinforce_and_a2c_improve_on_cartpole(algo, steps, tmp_path):
    """The later episodes last clearly longer than the first ones (a random policy keeps about
    22 steps). A2C's one small update per 40 steps needs more steps than REINFORCE's."""
    out = tmp_path / algo
    assert main(["gym", "--env", "CartPole-v1", "--algo", algo, "--total_steps", str(steps), "--seed", "0", "--out", str(out),
                 "--no_tensorboard"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    returns = [r["episode_return"] for r in rows if "episode_return" in r]
    assert sum(returns[-10:]) / 10 > 2 * sum(returns[:10]) / 10
    assert json.loads((out / "run.json").read_text())[algo]  # its settings are recorded
