"""What a `minigpt gym` run does around its algorithm's loop, as Stable-Baselines3's logger and
callbacks do: a progress line, periodic deterministic evaluation that keeps the best policy
(SB3's `EvalCallback`), and a checkpoint on Ctrl-C / SIGTERM that `--resume` continues.

A checkpoint (`OUT/checkpoint.pt`, written atomically) holds everything the loop needs to go on
exactly where it stopped: the networks, the optimizer, the replay buffer, the environments
themselves (pickled mid-episode, with their random generators), the torch / numpy / Python
random states, the step counters and the episode returns so far. On an environment that
pickles (classic control, toy text) a resumed run therefore ends with the same weights as an
uninterrupted one. The file is a pickle: resume only runs of your own.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from minigpt.errors import UserError
from minigpt.gym.common import evaluate_policy
from minigpt.train.errors import TrainingInterrupted

#: The checkpoint's file name inside OUT.
CHECKPOINT = "checkpoint.pt"


class GymSession:
    """The run around one `train_*` loop.

    The loop calls `tick(step, episodes)` between two units of work (an update, or an
    environment step for the step-wise algorithms), and `take_restored()` once its objects are
    built, to continue a checkpoint.

    Args:
        out_dir: the run directory (None: no checkpoint, no best policy, no progress line).
        total_steps: the run's environment steps, for the progress line's ETA.
        state: `() -> dict` of the loop's own objects for a checkpoint (picklable).
        policy: `() -> nn.Module` with `act_deterministic`, for periodic evaluation.
        env_id / env_kwargs / seed: the environment, for evaluation (episode i is reset with
            seed `seed + 20_000 + i`, apart from the final evaluation's seeds).
        eval_every: environment steps between evaluations (0 = none).
        eval_episodes: episodes per periodic evaluation.
        progress_every: seconds between progress lines (0 = none).
        resume: continue `OUT/checkpoint.pt`.
        returns: the run's list of `(step, return)` of finished episodes (restored on resume).

    Raises:
        UserError: `resume` without a checkpoint in OUT, or one that cannot be read.
    """

    def __init__(self, out_dir: str | Path | None, total_steps: int, state: Callable[[], dict] | None, policy: Callable[[], Any] | None,
                 env_id: str, env_kwargs: dict | None, seed: int, eval_every: int = 0, eval_episodes: int = 10,
                 progress_every: float = 5.0, resume: bool = False, returns: list | None = None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.total_steps, self.state, self.policy = total_steps, state, policy
        self.env_id, self.env_kwargs, self.seed = env_id, env_kwargs, seed
        self.eval_every, self.eval_episodes = int(eval_every), int(eval_episodes)
        self.progress_every = progress_every if self.out_dir is not None else 0
        self.returns = returns if returns is not None else []
        self.best: dict[str, Any] | None = None
        self.evaluations: list[dict[str, Any]] = []
        self.next_eval = self.eval_every
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._started = time.time()
        self._start_step = 0
        self._last_print = 0.0
        self._payload: dict | None = self._load() if resume else None

    # ------------------------------------------------------------------ signals

    def listen(self) -> None:
        """Catch SIGINT and SIGTERM (main thread only): the next `tick` saves and stops."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def stop_listening(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers they had."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second Ctrl-C: stop at once, without a checkpoint
            raise KeyboardInterrupt
        self._signal = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this update "
              "(press Ctrl-C again to stop without one)", flush=True)

    # ------------------------------------------------------------------ the loop's calls

    def tick(self, step: int, episodes: int) -> None:
        """Between two units of work at environment step `step`: a progress line when due, an
        evaluation when due, and on a pending signal a checkpoint then `TrainingInterrupted`."""
        now = time.time()
        if self.progress_every and now - self._last_print >= self.progress_every:
            self._last_print = now
            print(self.progress_line(step, episodes, now), flush=True)
        if self.eval_every and step >= self.next_eval:
            while self.next_eval <= step:
                self.next_eval += self.eval_every
            self.evaluate(step)
        if self._signal is not None:
            path = self.save(step, episodes)
            raise TrainingInterrupted(self._signal, step, path)

    def progress_line(self, step: int, episodes: int, now: float | None = None) -> str:
        """`step N/T (p%) | episodes E | mean return (last 100) R | S steps/s | ETA`."""
        now = time.time() if now is None else now
        rate = (step - self._start_step) / max(now - self._started, 1e-9)
        recent = [r for _, r in self.returns[-100:]]
        mean = f"{np.mean(recent):.2f}" if recent else "-"
        left = max(self.total_steps - step, 0) / rate if rate > 0 else math.inf
        eta = "-" if not math.isfinite(left) else time.strftime("%H:%M:%S", time.gmtime(left))
        best = f" | best eval {self.best['mean_return']:.2f}" if self.best else ""
        return (f"step {step:,}/{self.total_steps:,} ({100 * step / self.total_steps:.0f}%) | episodes {episodes:,} | "
                f"mean return (last {len(recent)}) {mean} | {rate:,.0f} steps/s | ETA {eta}{best}")

    def evaluate(self, step: int) -> dict[str, Any]:
        """Deterministic episodes of the current policy; the best so far is kept in OUT/best/."""
        policy = self.policy()
        was_training = policy.training
        policy.eval()
        try:
            result = evaluate_policy(policy.act_deterministic, self.env_id, self.env_kwargs, self.eval_episodes, self.seed + 20_000)
        finally:
            policy.train(was_training)
        entry = {"step": step, "mean_return": result["mean_return"], "std_return": result["std_return"]}
        self.evaluations.append(entry)
        if self.best is None or result["mean_return"] > self.best["mean_return"]:
            self.best = entry
            self._save_best(policy, entry)
        if self.progress_every:
            print(f"eval at step {step:,}: {result['mean_return']:.2f} ± {result['std_return']:.2f} over "
                  f"{self.eval_episodes} episodes (best {self.best['mean_return']:.2f} at step {self.best['step']:,})", flush=True)
        return entry

    def _save_best(self, policy, entry: dict) -> None:
        if self.out_dir is None:
            return
        from safetensors.torch import save_file

        from minigpt.train.checkpoint import atomic_write_text

        best = self.out_dir / "best"
        best.mkdir(parents=True, exist_ok=True)
        tmp = best / ".policy.safetensors.tmp"
        save_file({k: v.detach().contiguous() for k, v in policy.state_dict().items()}, str(tmp))
        os.replace(tmp, best / "policy.safetensors")
        atomic_write_text(best / "eval.json", json.dumps(entry, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def save(self, step: int, episodes: int) -> Path | None:
        """Write OUT/checkpoint.pt (temp file + rename); returns its path (None without OUT)."""
        if self.out_dir is None:
            return None
        payload = {
            "step": step, "episodes": episodes, "loop": self.state(), "returns": list(self.returns),
            "best": self.best, "evaluations": self.evaluations, "next_eval": self.next_eval,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        path = self.out_dir / CHECKPOINT
        tmp = path.with_name(f".{CHECKPOINT}.tmp-{os.getpid()}")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _load(self) -> dict:
        path = None if self.out_dir is None else self.out_dir / CHECKPOINT
        if path is None or not path.is_file():
            raise UserError(f"--resume: {self.out_dir} holds no {CHECKPOINT} (a gym run writes one when Ctrl-C or "
                            "SIGTERM stops it); start without --resume")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a damaged or foreign file
            raise UserError(f"--resume: cannot read {path}: {e}") from None
        self.returns[:] = payload["returns"]
        self.best, self.evaluations, self.next_eval = payload["best"], payload["evaluations"], payload["next_eval"]
        self._start_step = payload["step"]
        print(f"resumed from {path} at step {payload['step']:,} ({payload['episodes']:,} episodes)", flush=True)
        return payload

    @property
    def resume_step(self) -> int | None:
        """The step the checkpoint being continued was written at (None for a fresh run)."""
        return None if self._payload is None else int(self._payload["step"])

    def take_restored(self) -> dict | None:
        """The loop's objects saved in the checkpoint being continued (None for a fresh run),
        with the random states of that moment restored: call it after building the loop's
        objects (which draws random numbers), then load the returned state into them."""
        if self._payload is None:
            return None
        rng = self._payload["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        loop, self._payload = self._payload["loop"], None
        return loop

    def attach_rollouts(self, policy, optimizer, collector, pos: dict):
        """For the on-policy algorithms over vector environments (PPO, A2C): checkpoint the
        policy, its optimizer, the `RolloutCollector` (environments, current observations, step
        count) and `pos["update"]`, and continue them from the checkpoint being resumed.
        Returns the environments the loop steps (the restored ones after a resume)."""
        self.policy = lambda: policy
        self.state = lambda: {"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "update": pos["update"],
                              "envs": collector.envs, "obs": collector.obs, "steps": collector.steps}
        loop = self.take_restored()
        if loop is not None:
            collector.envs.close()
            policy.load_state_dict(loop["policy"])
            optimizer.load_state_dict(loop["optimizer"])
            collector.envs, collector.obs, collector.steps, pos["update"] = loop["envs"], loop["obs"], loop["steps"], loop["update"]
        return collector.envs

    def finished(self) -> None:
        """The run completed: its checkpoint is no longer needed."""
        if self.out_dir is not None:
            (self.out_dir / CHECKPOINT).unlink(missing_ok=True)


def open_session(out_dir: str | Path | None, tensorboard: bool, total_steps: int, env_id: str, env_kwargs: dict | None,
                 seed: int, eval_every: int = 0, eval_episodes: int = 10, progress: float = 5.0, resume: bool = False):
    """`(session, recorder)` for a `train_*` loop: the `GymSession` (its `state` and `policy`
    callables are set by the loop once its objects exist) and the `RunRecorder` sharing its
    list of episode returns, keeping a resumed run's metrics up to the checkpoint."""
    from minigpt.gym.common import RunRecorder

    session = GymSession(out_dir, total_steps, None, None, env_id, env_kwargs, seed, eval_every, eval_episodes, progress, resume)
    recorder = RunRecorder(out_dir, tensorboard, session.resume_step)
    recorder.episode_returns = session.returns
    return session, recorder


__all__ = ["CHECKPOINT", "GymSession", "open_session"]
