"""minigpt against nanoGPT on tinyshakespeare: validation bits per byte after the same seconds of
training, both run by this script, one after the other, on this machine.

nanoGPT is not part of minigpt: point `--nanogpt` at a checkout of it
(`git clone https://github.com/karpathy/nanoGPT`). The script copies the files it needs
(`train.py`, `model.py`, `configurator.py`, `config/train_shakespeare_char.py`,
`data/shakespeare_char/prepare.py`) into a temporary folder, so the checkout is never written
to, feeds `prepare.py` the same `input.txt` minigpt trains on, and runs the CPU configuration of
nanoGPT's README:

    train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
      --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
      --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

with `--eval_interval` lowered (default 50) so its validation curve has enough points. Its
training seconds are the sum of the per-iteration times it prints, where the iterations that
also ran an evaluation (or saved a checkpoint) count the median iteration time instead; its val
loss (nats per character; the text is ASCII, so per byte) at `--budget` seconds is interpolated
linearly between the two evaluations around it and divided by ln 2. nanoGPT seeds torch with a
fixed 1337, so its runs differ only by the machine's timing.

minigpt runs `minigpt pretrain` with the shakespeare preset (`configs/pretrain/shakespeare.yaml`:
`train.max_time` seconds, the step count calibrated to fit, one evaluation at the end) for each
seed; its figure is that final val bits per byte. One more minigpt run (the first seed, with an
evaluation every eighth of its steps, on the same batches as the final one) draws its curve;
those evaluations' seconds are taken off its time axis, but they count against its budget, so
that curve ends before the budget does.

    python benchmarks/bench_vs_nanogpt.py --nanogpt ~/src/nanoGPT                  # seeds 1 2 3, 72 s
    python benchmarks/bench_vs_nanogpt.py --nanogpt ~/src/nanoGPT --png docs/images/vs_nanogpt.png

Run it on a quiet machine: a second process on the same cores changes how much either side
learns in the budget.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "shakespeare.yaml"
NANOGPT_FILES = ["train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py", "data/shakespeare_char/prepare.py"]
#: nanoGPT's README, "quick start", for a CPU.
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
               "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
ITER = re.compile(r"^iter (\d+): loss [-\d.naninf]+, time ([\d.]+)ms")
EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def at_budget(curve: list[tuple[float, float]], budget: float) -> float:
    """The value of a `(seconds, value)` curve at `budget`, linear between the points around it
    (the last point when the curve stops short of it)."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if t0 <= budget <= t1:
            return v0 + (v1 - v0) * (budget - t0) / (t1 - t0) if t1 > t0 else v1
    return curve[-1][1]


def nanogpt_run(checkout: Path, data: Path, budget: float, eval_interval: int) -> dict:
    """One nanoGPT run in a temporary copy; returns its curve `[(train seconds, val bits/char)]`,
    its iterations at `budget` and its val bits/char there."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in NANOGPT_FILES:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkout / name, work / name)
        prep = work / "data" / "shakespeare_char"
        shutil.copy(data, prep / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=prep, check=True, stdout=subprocess.DEVNULL)
        cmd = [sys.executable, "-u", "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU,
               f"--eval_interval={eval_interval}", f"--out_dir={work / 'out'}"]
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        plain, special, curve, iters_at_budget, tail = [], 0, [], None, []

        def seconds() -> float:  # training seconds of the iterations printed so far
            return sum(plain) + special * (statistics.median(plain) if plain else 0.0)

        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            if m := ITER.match(line):
                i, dt = int(m.group(1)), float(m.group(2)) / 1000
                if i % eval_interval:  # an ordinary iteration
                    plain.append(dt)
                else:  # this one also evaluated (and maybe saved a checkpoint): count a typical one
                    special += 1
                if iters_at_budget is None and seconds() >= budget:
                    iters_at_budget = i + 1
            elif m := EVAL.match(line):  # printed before iteration `step` runs
                curve.append((seconds(), float(m.group(3)) / math.log(2)))
                if curve[-1][0] > budget:
                    break
        proc.terminate()
        proc.wait()
        if len(curve) < 2:
            raise SystemExit("nanoGPT printed no evaluations; its last lines:\n" + "".join(tail))
    return {"curve": curve, "iters": iters_at_budget, "val_bpb": at_budget(curve, budget)}


def minigpt_run(data: Path, config: Path, budget: float, seed: int, curve_evals: int = 0, steps_hint: int = 0) -> dict:
    """One `minigpt pretrain` run of the preset (`bench_learning.run`); with `curve_evals`,
    evaluations every `steps_hint // curve_evals` steps draw its curve (their seconds taken off)."""
    from bench_learning import run

    extra = ["--train.eval_interval", str(max(steps_hint // curve_evals, 1))] if curve_evals else []
    return run(str(data), str(config), extra, seed, budget)


def plot(path: Path, nano: list[dict], mini_curve: list[tuple[float, float]], mini: list[dict], budget: float) -> None:
    """Bits per byte against training seconds, both projects, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for k, r in enumerate(nano):
        ax.plot(*zip(*r["curve"]), color="tab:gray", alpha=0.8, label="nanoGPT (README CPU config)" if k == 0 else None)
    if mini_curve:
        ax.plot(*zip(*mini_curve), color="tab:blue", marker=".", label="minigpt (shakespeare preset)")
    ax.scatter([budget] * len(mini), [r["val_bpb"] for r in mini], color="tab:blue", marker="x", zorder=3,
               label=f"minigpt at {budget:.0f} s (final eval, per seed)")
    ax.axvline(budget, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, budget * 1.15)
    ax.set_ylim(top=5.0)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("val bits per byte")
    ax.set_title("tinyshakespeare on this machine")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (only read)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--config", type=Path, default=CONFIG, help="minigpt's pretrain YAML preset")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="minigpt seeds (nanoGPT runs as many times)")
    p.add_argument("--budget", type=float, default=72.0, help="training seconds")
    p.add_argument("--eval_interval", type=int, default=50, help="nanoGPT's iterations between evaluations")
    p.add_argument("--png", type=Path, help="write the bits-vs-seconds plot here")
    a = p.parse_args()
    missing = [n for n in NANOGPT_FILES if not (a.nanogpt / n).is_file()]
    if missing:
        raise SystemExit(f"{a.nanogpt}: not a nanoGPT checkout (missing {', '.join(missing)})")
    if not a.data.is_file():
        raise SystemExit(f"{a.data}: no such file (pass --data input.txt)")
    started = time.time()
    nano, mini = [], []
    for k, seed in enumerate(a.seeds):
        r = nanogpt_run(a.nanogpt, a.data, a.budget, a.eval_interval)
        nano.append(r)
        print(f"nanoGPT run {k + 1}: {r['iters']} iterations in {a.budget:.0f} s, val {r['val_bpb']:.3f} bits/byte", flush=True)
        r = minigpt_run(a.data, a.config, a.budget, seed)
        mini.append(r)
        print(f"minigpt seed {seed}: {r['steps']} steps, val {r['val_bpb']:.3f} bits/byte", flush=True)
    curve = []
    if a.png:
        curve = minigpt_run(a.data, a.config, a.budget, a.seeds[0], curve_evals=8, steps_hint=mini[0]["steps"])["curve"]
        plot(a.png, nano, curve, mini, a.budget)
    n_mean, m_mean = statistics.mean(r["val_bpb"] for r in nano), statistics.mean(r["val_bpb"] for r in mini)
    print(f"\nval bits per byte after {a.budget:.0f} s of training ({len(a.seeds)} runs each, {time.time() - started:.0f} s in all)")
    print(f"{'':<10}{'per run':>26}{'mean':>8}")
    for name, runs, mean in (("nanoGPT", nano, n_mean), ("minigpt", mini, m_mean)):
        print(f"{name:<10}{' '.join(format(r['val_bpb'], '.3f') for r in runs):>26}{mean:>8.3f}")
    print(f"ratio minigpt / nanoGPT: {m_mean / n_mean:.3f}" + (f"; plot: {a.png}" if a.png else ""))


if __name__ == "__main__":
    main()
