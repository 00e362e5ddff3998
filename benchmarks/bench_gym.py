"""Classic RL against Stable-Baselines3, side by side in one process: the same environment, step
budget and seeds for both.

For each algorithm and seed: wall-clock seconds of training, the first environment step at which
the mean return of the last 10 training episodes reaches the threshold, and the mean return of
10 deterministic evaluation episodes after training. minigpt runs the presets of
`configs/gym/`; SB3 runs RL Zoo's tuned settings for the same environment where they exist
(PPO, DQN) and its defaults otherwise (A2C). SB3's DQN is plain DQN (it has no Double or
dueling option); ours is Double + dueling. Tabular Q-learning (FrozenLake) has no SB3
counterpart and is reported alone.

    python benchmarks/bench_gym.py                          # ppo, dqn, a2c on CartPole-v1; seeds 0 1 2
    python benchmarks/bench_gym.py --algos ppo --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "gym"
THRESHOLD = {"CartPole-v1": 475.0, "FrozenLake-v1": 0.7}


def steps_to(curve: list[tuple[int, float]], threshold: float, window: int = 10) -> int | None:
    """First step at which the mean of the last `window` episode returns reaches `threshold`."""
    for i in range(window - 1, len(curve)):
        if sum(r for _, r in curve[i - window + 1 : i + 1]) / window >= threshold:
            return curve[i][0]
    return None


def run_minigpt(algo: str, preset: str, seed: int, total_steps: int | None) -> dict:
    from minigpt.gym import train_a2c, train_dqn, train_ppo, train_qlearning

    cfg = yaml.safe_load((CONFIGS / preset).read_text())
    train = {"ppo": train_ppo, "dqn": train_dqn, "a2c": train_a2c, "qlearning": train_qlearning}[algo]
    import json

    kwargs = json.loads(cfg["env_kwargs"]) if cfg.get("env_kwargs") else None
    t0 = time.time()
    r = train(cfg["env"], cfg.get(algo, {}), total_steps or cfg["total_steps"], seed, kwargs)
    return {"env": cfg["env"], "seconds": time.time() - t0, "curve": r["episode_returns"], "eval": r["eval"]["mean_return"],
            "steps": total_steps or cfg["total_steps"]}


class _Returns:
    """An SB3 callback that records (timestep, episode return) from its Monitor wrapper."""

    @staticmethod
    def make():
        from stable_baselines3.common.callbacks import BaseCallback

        class Cb(BaseCallback):
            def __init__(self):
                super().__init__()
                self.curve: list[tuple[int, float]] = []

            def _on_step(self) -> bool:
                for info in self.locals.get("infos", []):
                    if "episode" in info:
                        self.curve.append((self.num_timesteps, float(info["episode"]["r"])))
                return True

        return Cb()


def run_sb3(algo: str, env_id: str, seed: int, total_steps: int) -> dict:
    import gymnasium
    import numpy as np
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    if algo == "ppo":  # RL Zoo, CartPole-v1
        env = make_vec_env(env_id, n_envs=8, seed=seed)
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                    learning_rate=lambda f: 1e-3 * f, clip_range=lambda f: 0.2 * f, seed=seed, device="cpu")
    elif algo == "dqn":  # RL Zoo, CartPole-v1
        env = make_vec_env(env_id, n_envs=1, seed=seed)
        model = DQN("MlpPolicy", env, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs={"net_arch": [256, 256]}, seed=seed, device="cpu")
    else:  # SB3 defaults, 8 environments
        env = make_vec_env(env_id, n_envs=8, seed=seed)
        model = A2C("MlpPolicy", env, seed=seed, device="cpu")
    cb = _Returns.make()
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", nargs="+", default=["ppo", "dqn", "a2c"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--a2c_steps", type=int, default=100_000)
    p.add_argument("--qlearning", action="store_true", help="also FrozenLake Q-learning (deterministic and slippery; minigpt only)")
    a = p.parse_args()
    presets = {"ppo": "ppo_cartpole.yaml", "dqn": "dqn_cartpole.yaml", "a2c": None}
    rows = []
    for algo in a.algos:
        for seed in a.seeds:
            if algo == "a2c":
                from minigpt.gym import train_a2c

                t0 = time.time()
                r = train_a2c("CartPole-v1", {}, a.a2c_steps, seed)
                ours = {"env": "CartPole-v1", "seconds": time.time() - t0, "curve": r["episode_returns"], "eval": r["eval"]["mean_return"], "steps": a.a2c_steps}
            else:
                ours = run_minigpt(algo, presets[algo], seed, None)
            theirs = run_sb3(algo, ours["env"], seed, ours["steps"])
            th = THRESHOLD[ours["env"]]
            row = (algo, seed, ours["steps"], ours["seconds"], steps_to(ours["curve"], th), ours["eval"], theirs["seconds"], steps_to(theirs["curve"], th), theirs["eval"])
            rows.append(row)
            print("row", row, flush=True)
    print(f"\nCartPole-v1, threshold {THRESHOLD['CartPole-v1']:.0f} (mean of the last 10 training episodes); eval = mean of 10 deterministic episodes")
    print("| algorithm | seed | env steps | minigpt s | minigpt steps to threshold | minigpt eval | SB3 s | SB3 steps to threshold | SB3 eval | time ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for algo, seed, steps, s1, k1, e1, s2, k2, e2 in rows:
        print(f"| {algo} | {seed} | {steps:,} | {s1:.0f} | {k1 if k1 is not None else 'not reached'} | {e1:.1f} | {s2:.0f} | {k2 if k2 is not None else 'not reached'} | {e2:.1f} | {s1 / s2:.2f}x |")
    for algo in a.algos:
        mine = [r for r in rows if r[0] == algo]
        if len(mine) > 1:
            print(f"| {algo} | mean ± std | | {statistics.mean(r[3] for r in mine):.0f} | | {statistics.mean(r[5] for r in mine):.1f} ± {statistics.stdev(r[5] for r in mine):.1f} "
                  f"| {statistics.mean(r[6] for r in mine):.0f} | | {statistics.mean(r[8] for r in mine):.1f} ± {statistics.stdev(r[8] for r in mine):.1f} "
                  f"| {statistics.mean(r[3] for r in mine) / statistics.mean(r[6] for r in mine):.2f}x |")
    if a.qlearning:
        print("\n| FrozenLake-v1 Q-learning | seed | env steps | seconds | greedy success rate |")
        print("| --- | --- | --- | --- | --- |")
        for preset in ("qlearning_frozenlake.yaml", "qlearning_frozenlake_slippery.yaml"):
            for seed in a.seeds:
                r = run_minigpt("qlearning", preset, seed, None)
                print(f"| {preset.removesuffix('.yaml')} | {seed} | {r['steps']:,} | {r['seconds']:.0f} | {r['eval']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
