"""Classic RL against Stable-Baselines3, side by side in one process: the same environment, step
budget and seeds for both.

For each algorithm and seed: wall-clock seconds of the training loop (SB3's `learn()`; ours
without building the environments and without the final evaluation), the first environment step at which
the mean return of the last 10 training episodes reaches the threshold, and the mean return of
10 deterministic evaluation episodes after training. minigpt runs the presets of
`configs/gym/`; SB3 runs RL Zoo's tuned settings for the same environment where they exist
(PPO, DQN) and its defaults otherwise (A2C), with the same hyper-parameters as our preset.
SB3's DQN is plain DQN (it has no Double or dueling option); ours is Double + dueling.
REINFORCE and tabular Q-learning have no SB3 counterpart and are reported alone.

    python benchmarks/bench_gym.py                              # CartPole-v1: ppo dqn a2c reinforce; seeds 0 1 2
    python benchmarks/bench_gym.py --algos ppo --env LunarLander-v3   # needs gymnasium[box2d]
    python benchmarks/bench_gym.py --algos ppo --seeds 0 1 2 3 4
    python benchmarks/bench_gym.py --algos --qlearning          # FrozenLake Q-learning only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "gym"

# (algo, env) -> (our preset in configs/gym/, threshold on the training curve, SB3's settings or None)
RUNS: dict[tuple[str, str], tuple[str, float, dict | None]] = {
    ("ppo", "CartPole-v1"): ("ppo_cartpole.yaml", 475.0, {  # RL Zoo
        "n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0,
        "learning_rate": "linear:1e-3", "clip_range": "linear:0.2"}),
    ("dqn", "CartPole-v1"): ("dqn_cartpole.yaml", 195.0, {  # RL Zoo
        "n_envs": 1, "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99,
        "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]}}),
    ("a2c", "CartPole-v1"): ("a2c_cartpole.yaml", 195.0, {"n_envs": 8}),  # SB3 defaults
    ("reinforce", "CartPole-v1"): ("reinforce_cartpole.yaml", 195.0, None),
    ("ppo", "LunarLander-v3"): ("ppo_lunarlander.yaml", 200.0, {  # RL Zoo (LunarLander-v2 there)
        "n_envs": 16, "n_steps": 1024, "batch_size": 64, "gae_lambda": 0.98, "gamma": 0.999, "n_epochs": 4, "ent_coef": 0.01}),
}


def steps_to(curve: list[tuple[int, float]], threshold: float, window: int = 10) -> int | None:
    """First step at which the mean of the last `window` episode returns reaches `threshold`."""
    for i in range(window - 1, len(curve)):
        if sum(r for _, r in curve[i - window + 1 : i + 1]) / window >= threshold:
            return curve[i][0]
    return None


def run_minigpt(algo: str, preset: str, seed: int, total_steps: int | None = None) -> dict:
    from minigpt.gym import train_a2c, train_dqn, train_ppo, train_qlearning, train_reinforce

    cfg = yaml.safe_load((CONFIGS / preset).read_text())
    train = {"ppo": train_ppo, "dqn": train_dqn, "a2c": train_a2c, "reinforce": train_reinforce, "qlearning": train_qlearning}[algo]
    kwargs = json.loads(cfg["env_kwargs"]) if cfg.get("env_kwargs") else None
    steps = total_steps or cfg["total_steps"]
    r = train(cfg["env"], cfg.get(algo, {}), steps, seed, kwargs, tensorboard=False)
    # r["seconds"]: the training loop, without building the environments or the final evaluation,
    # as SB3's `learn()` is timed below
    return {"env": cfg["env"], "seconds": r["seconds"], "curve": r["episode_returns"], "eval": r["eval"]["mean_return"], "steps": steps}


def _returns_callback():
    """An SB3 callback that records (timestep, episode return) from its Monitor wrapper."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Returns(BaseCallback):
        def __init__(self):
            super().__init__()
            self.curve: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.curve.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    return Returns()


def run_sb3(algo: str, env_id: str, seed: int, total_steps: int, settings: dict) -> dict:
    import gymnasium
    import numpy as np
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    kw = dict(settings)
    env = make_vec_env(env_id, n_envs=kw.pop("n_envs"), seed=seed)
    for name, value in list(kw.items()):  # "linear:X": SB3's schedule from X down to 0
        if isinstance(value, str) and value.startswith("linear:"):
            start = float(value.split(":")[1])
            kw[name] = lambda f, s=start: s * f
    model = {"ppo": PPO, "dqn": DQN, "a2c": A2C}[algo]("MlpPolicy", env, seed=seed, device="cpu", **kw)
    cb = _returns_callback()
    t0 = time.time()
    model.learn(total_steps, callback=cb)
    seconds = time.time() - t0
    ev = gymnasium.make(env_id)
    returns = []
    for i in range(10):
        obs, _ = ev.reset(seed=seed + 10_000 + i)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = ev.step(int(np.asarray(action)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return {"seconds": seconds, "curve": cb.curve, "eval": float(np.mean(returns))}


def _fmt(k: int | None) -> str:
    return f"{k:,}" if k is not None else "not reached"


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", nargs="*", default=["ppo", "dqn", "a2c", "reinforce"])
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--total_steps", type=int, default=None, help="override the presets' step budgets")
    p.add_argument("--qlearning", action="store_true", help="also FrozenLake Q-learning (deterministic and slippery; minigpt only)")
    a = p.parse_args()
    rows = []
    for algo in a.algos:
        if (algo, a.env) not in RUNS:
            raise SystemExit(f"no benchmark for {algo} on {a.env}; known: {sorted(RUNS)}")
        preset, threshold, sb3 = RUNS[(algo, a.env)]
        for seed in a.seeds:
            ours = run_minigpt(algo, preset, seed, a.total_steps)
            theirs = run_sb3(algo, a.env, seed, ours["steps"], sb3) if sb3 is not None else None
            row = {"algo": algo, "seed": seed, "steps": ours["steps"], "threshold": threshold, "ours": ours, "sb3": theirs}
            rows.append(row)
            print("row", algo, seed, f"minigpt {ours['seconds']:.0f}s eval {ours['eval']:.1f} to {threshold:g}: {_fmt(steps_to(ours['curve'], threshold))}",
                  "" if theirs is None else f"| SB3 {theirs['seconds']:.0f}s eval {theirs['eval']:.1f} to {threshold:g}: {_fmt(steps_to(theirs['curve'], threshold))}",
                  flush=True)
    if rows:
        print(f"\n{a.env}; threshold: mean of the last 10 training episodes; eval: mean of 10 deterministic episodes after training")
        print("| algorithm | seed | env steps | threshold | minigpt s | minigpt steps to threshold | minigpt eval | SB3 s | SB3 steps to threshold | SB3 eval | time ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            o, s, th = r["ours"], r["sb3"], r["threshold"]
            sb3_cells = "| - | - | - | -" if s is None else f"| {s['seconds']:.0f} | {_fmt(steps_to(s['curve'], th))} | {s['eval']:.1f} | {o['seconds'] / s['seconds']:.2f}x"
            print(f"| {r['algo']} | {r['seed']} | {r['steps']:,} | {th:g} | {o['seconds']:.0f} | {_fmt(steps_to(o['curve'], th))} | {o['eval']:.1f} {sb3_cells} |")
        for algo in a.algos:
            mine = [r for r in rows if r["algo"] == algo]
            o_s = statistics.mean(r["ours"]["seconds"] for r in mine)
            line = f"| {algo} | mean ± std | | | {o_s:.0f} | | {_mean_std([r['ours']['eval'] for r in mine])} "
            if mine[0]["sb3"] is None:
                print(line + "| - | - | - | - |")
            else:
                s_s = statistics.mean(r["sb3"]["seconds"] for r in mine)
                print(line + f"| {s_s:.0f} | | {_mean_std([r['sb3']['eval'] for r in mine])} | {o_s / s_s:.2f}x |")
    if a.qlearning:
        print("\n| FrozenLake-v1 Q-learning | seed | env steps | seconds | greedy success rate |")
        print("| --- | --- | --- | --- | --- |")
        for preset in ("qlearning_frozenlake.yaml", "qlearning_frozenlake_slippery.yaml"):
            for seed in a.seeds:
                r = run_minigpt("qlearning", preset, seed)
                print(f"| {preset.removesuffix('.yaml')} | {seed} | {r['steps']:,} | {r['seconds']:.0f} | {r['eval']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
