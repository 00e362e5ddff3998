"""How long a user waits before a command answers: `--help`, a command's `--help`, and a
mistyped option, against the reference every command paid before it parsed its options (importing
torch and transformers' Auto classes), measured in the same run.

    python benchmarks/bench_startup.py [--runs 5]

Each command runs `--runs` times in a fresh process (warm file cache after a first untimed
run); the table gives min / median / max wall seconds and the median's ratio to the reference's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("reference: import torch + transformers Auto", [sys.executable, "-c", "import torch, transformers; transformers.AutoModelForCausalLM"]),
    ("minigpt --help", [sys.executable, "-m", "minigpt.cli", "--help"]),
    ("minigpt sft --help", [sys.executable, "-m", "minigpt.cli", "sft", "--help"]),
    ("minigpt generate --promt x (a typo)", [sys.executable, "-m", "minigpt.cli", "generate", "--model", "m", "--promt", "x"]),
]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, cmd in CASES:
        wall(cmd)  # warm the file cache
        times = sorted(wall(cmd) for _ in range(args.runs))
        rows.append((name, times))
    reference = statistics.median(rows[0][1])
    print(f"| command | min | median | max | median / reference |  ({args.runs} runs each)")
    print("|---|---|---|---|---|")
    for name, times in rows:
        median = statistics.median(times)
        print(f"| {name} | {times[0]:.2f} s | {median:.2f} s | {times[-1]:.2f} s | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
