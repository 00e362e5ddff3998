"""DQN (`minigpt.gym.dqn`): the (double) DQN targets and the dueling head by hand, continuous
actions refused, a little learning on CartPole."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gymnasium")

from minigpt.cli import main  # noqa: E402
from minigpt.errors import UserError  # noqa: E402


def test_dqn_and_double_dqn_targets_and_the_dueling_head_by_hand():
    from minigpt.gym.dqn import dqn_targets, dueling_q

    rewards = torch.tensor([1.0, 0.5, 2.0])
    terminals = torch.tensor([0.0, 0.0, 1.0])
    next_target = torch.tensor([[1.0, 3.0], [4.0, 2.0], [9.0, 9.0]])
    next_online = torch.tensor([[5.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # plain: r + γ·max_a Q_target(s', a); a terminal row keeps r alone
    assert torch.allclose(dqn_targets(rewards, next_target, terminals, 0.9), torch.tensor([1 + 0.9 * 3, 0.5 + 0.9 * 4, 2.0]))
    # double: the online net picks a' (0, then 1), the target net scores it (1.0, then 2.0)
    assert torch.allclose(dqn_targets(rewards, next_target, terminals, 0.9, next_online), torch.tensor([1 + 0.9 * 1, 0.5 + 0.9 * 2, 2.0]))
    q = dueling_q(torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    assert torch.allclose(q, torch.tensor([[1.0, 2.0, 3.0], [-1.0, -1.0, 2.0]]))  # V + A − mean(A)
    assert torch.allclose(q.mean(-1), torch.tensor([2.0, 0.0]))  # the mean over actions is V


def test_dqn_refuses_continuous_actions(tmp_path, capsys):
    from minigpt.gym.dqn import train_dqn

    with pytest.raises(UserError, match="DQN needs Discrete actions"):
        train_dqn("Pendulum-v1", {}, total_steps=10)
    assert main(["gym", "--env", "Pendulum-v1", "--algo", "dqn", "--out", str(tmp_path / "d")]) == 2
    assert "use --algo ppo" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before the run directory was made


def test_dqn_learns_cartpole_a_little(tmp_path):
    """3,000 steps of Double + dueling DQN: the greedy policy already beats a random one (about 22)."""
    from minigpt.gym.dqn import train_dqn

    result = train_dqn("CartPole-v1", {"double": True, "dueling": True, "learning_starts": 500, "target_update_interval": 100,
                                       "exploration_fraction": 0.3, "learning_rate": 1e-3, "eval_episodes": 5}, total_steps=3000, seed=0)
    assert result["eval"]["mean_return"] > 40
