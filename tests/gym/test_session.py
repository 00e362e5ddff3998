"""`minigpt gym` behaves like the other training commands: a progress line, Ctrl-C / SIGTERM
save a checkpoint that `--resume` continues to the same weights as an uninterrupted run,
periodic evaluation keeps the best policy, and an environment whose extra is missing is one
line."""

from __future__ import annotations

import json
import signal

import pytest
import torch

pytest.importorskip("gymnasium")

from minigpt.cli import main  # noqa: E402
from minigpt.gym.common import RunRecorder  # noqa: E402
from minigpt.train.errors import TrainingInterrupted  # noqa: E402

SMALL = {
    "ppo": ("CartPole-v1", {"num_envs": 2, "num_steps": 32, "num_epochs": 2, "eval_episodes": 2}, 640),
    "a2c": ("CartPole-v1", {"num_envs": 2, "num_steps": 8, "eval_episodes": 2}, 640),
    "reinforce": ("CartPole-v1", {"episodes_per_update": 2, "eval_episodes": 2}, 600),
    "dqn": ("CartPole-v1", {"learning_starts": 50, "buffer_size": 500, "train_freq": 4, "target_update_interval": 50,
                            "eval_episodes": 2}, 600),
    "qlearning": ("FrozenLake-v1", {"eval_episodes": 5}, 3000),
}


def interrupt_at_episode(monkeypatch, n: int, sig: int = signal.SIGINT) -> None:
    """Deliver a real signal to this process when the n-th episode ends (in the main thread,
    so the run's own handler receives it exactly as from a terminal)."""
    real = RunRecorder.episode

    def episode(self, step, episode_return, **values):
        real(self, step, episode_return, **values)
        if len(self.episode_returns) == n:
            signal.raise_signal(sig)

    monkeypatch.setattr(RunRecorder, "episode", episode)


def train(algo: str, out, resume: bool = False, **kw):
    from minigpt.gym import train_a2c, train_dqn, train_ppo, train_qlearning, train_reinforce

    env, config, steps = SMALL[algo]
    fn = {"ppo": train_ppo, "a2c": train_a2c, "reinforce": train_reinforce, "dqn": train_dqn, "qlearning": train_qlearning}[algo]
    return fn(env, dict(config), steps, 3, None, out, False, resume=resume, progress=0, **kw)


@pytest.mark.parametrize("algo", list(SMALL))
def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(algo, tmp_path, monkeypatch):
    whole = train(algo, tmp_path / "whole")
    with monkeypatch.context() as m:
        interrupt_at_episode(m, 4, signal.SIGTERM if algo == "dqn" else signal.SIGINT)
        with pytest.raises(TrainingInterrupted) as stopped:
            train(algo, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and stopped.value.step < SMALL[algo][2]
    resumed = train(algo, tmp_path / "cut", resume=True)
    assert resumed["steps"] == whole["steps"]
    a, b = whole["policy"].state_dict(), resumed["policy"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{algo}: resumed weights differ"
    assert resumed["episode_returns"] == whole["episode_returns"]
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)  # the resumed run's rows follow the checkpoint's, none twice


def test_ctrl_c_through_the_cli_saves_prints_the_resume_command_and_resume_finishes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--total_steps", "3000", "--out", str(out),
            "--seed", "1", "--tensorboard", "false", "--qlearning.eval_episodes", "5"]
    with monkeypatch.context() as m:
        interrupt_at_episode(m, 10)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert "resume with: minigpt gym" in err and err.strip().endswith("--resume")
    assert main(argv + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "3000 environment steps" in printed
    assert not (out / "checkpoint.pt").exists() and (out / "policy.safetensors").is_file()
    # A changed setting is refused on resume.
    assert main(argv + ["--resume", "--total_steps", "5000"]) == 2


def test_periodic_evaluation_keeps_the_best_policy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--env_kwargs", '{"is_slippery": false}',
                 "--total_steps", "4000", "--eval_every", "500", "--out", str(out), "--tensorboard", "false",
                 "--qlearning.eval_episodes", "3", "--progress", "0.001"]) == 0
    printed = capsys.readouterr().out
    assert "steps/s" in printed and "ETA" in printed and "mean return (last" in printed
    report = json.loads((out / "eval.json").read_text())
    evaluations = report["evaluations"]
    assert [e["step"] for e in evaluations] == list(range(500, 4001, 500))
    best = max(evaluations, key=lambda e: e["mean_return"])
    assert report["best"]["mean_return"] == best["mean_return"] and report["best"]["step"] == best["step"]
    from safetensors.torch import load_file

    assert set(load_file(out / "best" / "policy.safetensors")) == {"q"}


def test_a_missing_extra_or_an_unknown_environment_is_one_line(tmp_path, capsys):
    import importlib.util

    cases = [(["--env", "CartPol-v1"], "did you mean CartPole-v1")]
    if importlib.util.find_spec("mujoco") is None:
        cases.append((["--env", "Hopper-v5"], 'pip install "gymnasium[mujoco]"'))
    for extra, wanted in cases:
        assert main(["gym", "--algo", "ppo", "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and wanted in err, err


def test_resume_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--total_steps", "100", "--out", str(tmp_path / "r"),
                 "--tensorboard", "false", "--resume"]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err
