"""What every classic-RL algorithm here shares: making Gymnasium environments (with errors that
name close matches), small MLP policies, deterministic evaluation, and the run's metrics log."""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from minigpt.errors import UserError


def parse_env_kwargs(env_kwargs: str | dict | None) -> dict[str, Any]:
    """`--env_kwargs` as a dict: a JSON object string, a dict, or None.

    Raises:
        UserError: not JSON, or JSON that is not an object.
    """
    if env_kwargs is None or isinstance(env_kwargs, dict):
        return dict(env_kwargs or {})
    try:
        value = json.loads(env_kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"--env_kwargs is not JSON ({e.msg} at character {e.pos}): {env_kwargs!r}; "
                        'write a JSON object, e.g. \'{"is_slippery": false}\'') from None
    if not isinstance(value, dict):
        raise UserError(f"--env_kwargs must be a JSON object, not {type(value).__name__}: {env_kwargs!r}")
    return value


def check_env_id(env_id: str) -> None:
    """Refuse an id Gymnasium does not know, listing the closest registered ids.

    Raises:
        UserError: unknown id.
    """
    import gymnasium

    if env_id in gymnasium.registry:
        return
    close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python -c \"import gymnasium; print(list(gymnasium.registry))\"` lists them"
    raise UserError(f"unknown environment id {env_id!r}{hint}")


def make_env(env_id: str, env_kwargs: dict | None = None, **extra: Any):
    """`gymnasium.make(env_id, **env_kwargs)`, with the id checked first."""
    import gymnasium

    check_env_id(env_id)
    try:
        return gymnasium.make(env_id, **(env_kwargs or {}), **extra)
    except TypeError as e:
        raise UserError(f"{env_id}: bad --env_kwargs {env_kwargs}: {e}") from None
    except gymnasium.error.DependencyNotInstalled as e:  # e.g. MuJoCo, Box2D: the message names the pip extra
        raise UserError(f"{env_id} needs a package that is not installed: {str(e).strip()}") from None


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict | None = None):
    """`num_envs` copies in one `SyncVectorEnv` that resets a finished episode in the same step
    (the returned observation is the new episode's first; the last one is in
    `info["final_obs"]`), with episode returns recorded (`info["episode"]`)."""
    import gymnasium
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    check_env_id(env_id)
    import functools

    # partial, not a lambda: the vector env pickles (a gym checkpoint holds it, mid-episode)
    envs = gymnasium.vector.SyncVectorEnv(
        [functools.partial(make_env, env_id, env_kwargs) for _ in range(num_envs)],
        autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
    )
    return RecordEpisodeStatistics(envs)


def finished_returns(info: dict) -> list[float]:
    """Returns of the episodes that ended in this vector step (`RecordEpisodeStatistics`)."""
    ep = info.get("episode")
    if not ep:
        return []
    done = info.get("_episode", np.ones(len(ep["r"]), dtype=bool))
    return [float(r) for r, d in zip(ep["r"], done) if d]


def mlp(sizes: list[int], last_gain: float, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers of `sizes` with `activation` between them, orthogonally initialised (gain
    √2, the last `last_gain`; biases 0), as PPO implementations do (Andrychowicz et al. 2021,
    arXiv:2006.05990)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.orthogonal_(linear.weight, last_gain if i == len(sizes) - 2 else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def evaluate_policy(act: Callable[[np.ndarray], Any], env_id: str, env_kwargs: dict | None, episodes: int, seed: int) -> dict[str, Any]:
    """Run `episodes` episodes with the deterministic policy `act(observation) -> action`;
    episode i is reset with seed `seed + i`.

    Returns:
        `{"mean_return", "std_return", "episodes": [return of each]}`.
    """
    env = make_env(env_id, env_kwargs)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)), "episodes": returns}


class RunRecorder:
    """What every `train_*` keeps besides its model: the finished episodes' `(step, return)`,
    the run's clock, and (with `out_dir`) one JSON object per line in `OUT/metrics.jsonl`,
    mirrored to TensorBoard (`OUT/tensorboard`)."""

    def __init__(self, out_dir: str | Path | None, tensorboard: bool = True, resume_step: int | None = None) -> None:
        import time

        self.episode_returns: list[tuple[int, float]] = []
        self.started = time.time()
        self.path = None if out_dir is None else Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = ""
            if resume_step is not None and self.path.is_file():  # a resumed run logs the later steps again
                rows = self.path.read_text(encoding="utf-8").splitlines()
                kept = "".join(r + "\n" for r in rows if r.strip() and json.loads(r).get("step", 0) <= resume_step)
            self.path.write_text(kept, encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def episode(self, step: int, episode_return: float, **values: float) -> None:
        """An episode ended at environment step `step` with `episode_return`."""
        self.episode_returns.append((step, episode_return))
        self.log(step, episode_return=episode_return, **values)

    def log(self, step: int, **values: float) -> None:
        """One row of scalars at environment step `step` (nothing without `out_dir`)."""
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def finish(self, policy: nn.Module, env_id: str, env_kwargs: dict | None, eval_episodes: int, seed: int, steps: int) -> dict[str, Any]:
        """Stop the clock, evaluate `policy` deterministically (`eval_episodes` episodes seeded
        from `seed + 10_000`) and return `train_*`'s result: `{"policy", "eval",
        "episode_returns", "seconds", "steps"}`."""
        import time

        seconds = time.time() - self.started
        policy.eval()
        result = evaluate_policy(policy.act_deterministic, env_id, env_kwargs, eval_episodes, seed + 10_000) if eval_episodes else {}
        return {"policy": policy, "eval": result, "episode_returns": self.episode_returns, "seconds": seconds, "steps": steps}


def plot_learning_curve(rows: list[dict], out: Path, title: str) -> None:
    """Episode return against environment steps (each episode, and a moving mean) as a PNG,
    written atomically."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r["episode_return"]) for r in rows if "episode_return" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        x, y = zip(*points)
        ax.plot(x, y, ".", alpha=0.3, markersize=3, label="episode return")
        k = max(1, len(y) // 20)
        ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), label=f"mean of the last {k}")
        ax.legend()
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


def torch_seed(seed: int) -> None:
    """Seed torch and numpy (the environments are seeded through `reset`)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


__all__ = [
    "RunRecorder", "check_env_id", "evaluate_policy", "finished_returns", "make_env", "make_vector_env", "mlp",
    "parse_env_kwargs", "plot_learning_curve", "torch_seed",
]
