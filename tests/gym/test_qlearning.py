"""Tabular Q-learning (`minigpt.gym.qlearning`): one update worked by hand, FrozenLake solved,
continuous states refused."""

from __future__ import annotations

import pytest

pytest.importorskip("gymnasium")

from minigpt.cli import main  # noqa: E402


def test_q_learning_update_on_a_hand_worked_two_state_mdp():
    """States 0 and 1, actions 0 and 1; α = 0.5, γ = 0.9."""
    import numpy as np

    from minigpt.gym.qlearning import linear_schedule, q_learning_update

    q = np.array([[0.0, 1.0], [2.0, 4.0]])
    # From state 0, action 0, reward 1, to state 1: target 1 + 0.9·max(2, 4) = 4.6; δ = 4.6 − 0 = 4.6.
    assert q_learning_update(q, 0, 0, 1.0, 1, False, 0.5, 0.9) == pytest.approx(4.6)
    assert q[0, 0] == pytest.approx(2.3)
    # Terminal: no bootstrap. From state 1, action 1, reward −1: δ = −1 − 4 = −5; Q = 4 − 2.5 = 1.5.
    assert q_learning_update(q, 1, 1, -1.0, 0, True, 0.5, 0.9) == pytest.approx(-5.0)
    assert q[1, 1] == pytest.approx(1.5) and q[0, 1] == 1.0 and q[1, 0] == 2.0  # nothing else moved
    assert [linear_schedule(1.0, 0.1, 0.5, s, 100) for s in (0, 25, 50, 99)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_q_learning_solves_deterministic_frozenlake_and_refuses_continuous_states(tmp_path, capsys):
    from minigpt.gym.qlearning import train_qlearning

    result = train_qlearning("FrozenLake-v1", {"eval_episodes": 20}, total_steps=30_000, seed=0, env_kwargs={"is_slippery": False})
    assert result["eval"]["mean_return"] == 1.0  # every greedy episode reaches the goal
    assert main(["gym", "--env", "CartPole-v1", "--algo", "qlearning", "--out", str(tmp_path / "q")]) == 2
    assert "needs Discrete observations and actions" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
