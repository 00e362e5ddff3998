"""`minigpt gym`: classic reinforcement learning on a Gymnasium environment.

The run directory holds the policy (`policy.safetensors` + `policy.json`), `metrics.jsonl`
(episode returns and losses, by environment step), TensorBoard logs, `learning_curve.png`, and
`eval.json` (`{"mean_return", "std_return", "episodes"}` of deterministic evaluation episodes
after training, with the run's `steps` and `seconds`), and `environment.json` (the machine).
Presets per algorithm and environment: `configs/gym/*.yaml` (`--config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.gym.config import A2CConfig, DQNConfig, PPOConfig, QLearningConfig, REINFORCEConfig
from minigpt.recipes.common import refuse_existing_run

#: The algorithms `minigpt gym --algo` runs.
ALGORITHMS = ("qlearning", "dqn", "reinforce", "a2c", "ppo")


def gym(
    env: str,
    algo: str = "ppo",
    out: str = "runs/gym",
    env_kwargs: str | None = None,
    total_steps: int = 100_000,
    seed: int = 0,
    qlearning: QLearningConfig = QLearningConfig(),
    dqn: DQNConfig = DQNConfig(),
    reinforce: REINFORCEConfig = REINFORCEConfig(),
    a2c: A2CConfig = A2CConfig(),
    ppo: PPOConfig = PPOConfig(),
    double: bool | None = None,
    dueling: bool | None = None,
    tensorboard: bool = True,
    eval_every: int = 0,
    progress: float = 5.0,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train an agent on a Gymnasium environment, then evaluate it deterministically.

    Args:
        env: a Gymnasium environment id (CartPole-v1, FrozenLake-v1, Pendulum-v1, …).
        algo: the algorithm: qlearning (tabular; Discrete observations and actions), dqn
            (Discrete actions), reinforce, a2c or ppo.
        out: run directory.
        env_kwargs: keyword arguments of `gymnasium.make`, as a JSON object
            (`'{"is_slippery": false}'`).
        total_steps: environment steps to train for (over all parallel environments).
        seed: seeds the networks, the sampling and the environments.
        qlearning: tabular Q-learning's hyper-parameters (`--qlearning.*`).
        dqn: DQN's hyper-parameters (`--dqn.*`).
        reinforce: REINFORCE's hyper-parameters (`--reinforce.*`).
        a2c: A2C's hyper-parameters (`--a2c.*`).
        ppo: PPO's hyper-parameters (`--ppo.*`).
        double: shorthand for `--dqn.double` (the Double DQN target).
        dueling: shorthand for `--dqn.dueling` (the dueling head).
        tensorboard: also write TensorBoard logs (OUT/tensorboard).
        eval_every: every this many environment steps, run the algorithm's `eval_episodes`
            deterministic episodes and keep the best policy so far in OUT/best/ (as
            Stable-Baselines3's EvalCallback); 0 = only the final evaluation.
        progress: seconds between progress lines (steps, episodes, mean return of the last 100
            episodes, steps/s, ETA); 0 = none.
        resume: continue the checkpoint that Ctrl-C or SIGTERM left in `out` (OUT/checkpoint.pt),
            with the settings of `out/run.json`.
        overwrite: replace a run already in `out`.

    Returns:
        The evaluation (`eval.json`: the final policy's, plus `best` when `eval_every` > 0) and
        `seconds` and `steps`.

    Raises:
        UserError: an unknown algorithm or environment (close matches listed), `env_kwargs`
            that is not a JSON object, `total_steps` <= 0, an action space the algorithm does
            not handle.
    """
    import dataclasses

    from safetensors.torch import save_file

    from minigpt.gym.common import check_env_id, parse_env_kwargs, plot_learning_curve
    from minigpt.gym.a2c import train_a2c
    from minigpt.gym.dqn import train_dqn
    from minigpt.gym.ppo import train_ppo
    from minigpt.gym.qlearning import train_qlearning
    from minigpt.gym.reinforce import train_reinforce
    from minigpt.train.checkpoint import atomic_write_text

    if algo not in ALGORITHMS:
        raise UserError(f"--algo must be one of {', '.join(ALGORITHMS)}, not {algo!r}")
    if total_steps <= 0:
        raise UserError(f"--total_steps must be > 0, got {total_steps}")
    from minigpt.errors import check_seed

    check_seed(seed)
    if seed < 0 or seed >= 2**32:
        raise UserError(f"--seed: Gymnasium environments take seeds in [0, 2**32), got {seed}")
    kwargs = parse_env_kwargs(env_kwargs)
    check_env_id(env)
    _check_spaces(algo, env, kwargs)  # before OUT is touched
    if eval_every < 0 or progress < 0:
        raise UserError(f"--eval_every and --progress must be ≥ 0, got {eval_every} and {progress}")
    out_dir = Path(out)
    refuse_existing_run(out_dir, resume, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    if double is not None or dueling is not None:
        dqn = dataclasses.replace(dqn, **{k: v for k, v in (("double", double), ("dueling", dueling)) if v is not None})
    train, settings = {
        "qlearning": (train_qlearning, qlearning), "dqn": (train_dqn, dqn), "reinforce": (train_reinforce, reinforce),
        "a2c": (train_a2c, a2c), "ppo": (train_ppo, ppo),
    }[algo]
    record = {"stage": "gym", "algo": algo, "env": env, "env_kwargs": kwargs, "total_steps": total_steps, "seed": seed,
              algo: dataclasses.asdict(settings)}
    if resume and (out_dir / "run.json").is_file():
        saved = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
        changed = [k for k in record if saved.get(k) != record[k]]
        if changed:
            raise UserError(f"--resume with settings that differ from the run in {out_dir} ({', '.join(changed)}); "
                            "give the same options, or --overwrite to start over")
    atomic_write_text(out_dir / "run.json", json.dumps(record, indent=2) + "\n")
    import torch

    from minigpt.train.hardware import ENVIRONMENT_FILE, environment

    atomic_write_text(out_dir / ENVIRONMENT_FILE, json.dumps(environment(torch.device("cpu"), "fp32"), indent=2) + "\n")
    result = train(env, settings, total_steps, seed, kwargs, out_dir, tensorboard, eval_every=eval_every, progress=progress,
                   resume=resume)
    session = result["session"]
    policy = result["policy"]
    tmp = out_dir / ".policy.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(tmp))
    tmp.replace(out_dir / "policy.safetensors")
    atomic_write_text(out_dir / "policy.json", json.dumps({"algo": algo, "env": env, "env_kwargs": kwargs, algo: dataclasses.asdict(settings)}, indent=2) + "\n")
    rows = [{"step": s, "episode_return": r} for s, r in result["episode_returns"]]
    plot_learning_curve(rows, out_dir / "learning_curve.png", f"{algo} on {env} (seed {seed})")
    evaluation = {**result["eval"], "steps": result["steps"], "seconds": result["seconds"]}
    if session.best is not None:
        evaluation["best"] = {**session.best, "path": str(out_dir / "best" / "policy.safetensors")}
        evaluation["evaluations"] = session.evaluations
    atomic_write_text(out_dir / "eval.json", json.dumps(evaluation, indent=2) + "\n")
    session.finished()
    print(f"{algo} on {env}: {result['steps']} environment steps in {result['seconds']:.0f} s; deterministic evaluation over "
          f"{len(evaluation.get('episodes', []))} episodes: {evaluation.get('mean_return', float('nan')):.3f} ± {evaluation.get('std_return', float('nan')):.3f} -> {out_dir}")
    return {**evaluation, "seconds": result["seconds"], "steps": result["steps"]}


def _check_spaces(algo: str, env_id: str, env_kwargs: dict) -> None:
    """Refuse an environment whose spaces the algorithm cannot handle.

    Raises:
        UserError: Q-learning without Discrete observations and actions; DQN without Discrete
            actions; bad `env_kwargs` for the environment.
    """
    from gymnasium import spaces

    from minigpt.gym.common import make_env

    probe = make_env(env_id, env_kwargs)
    obs, act = probe.observation_space, probe.action_space
    probe.close()
    if algo == "qlearning" and not (isinstance(obs, spaces.Discrete) and isinstance(act, spaces.Discrete)):
        raise UserError(f"tabular Q-learning needs Discrete observations and actions; {env_id} has {obs} and {act} (use dqn or ppo)")
    if algo == "dqn" and not isinstance(act, spaces.Discrete):
        raise UserError(f"DQN needs Discrete actions; {env_id} has {act} (use --algo ppo for continuous actions)")


__all__ = ["ALGORITHMS", "gym"]
