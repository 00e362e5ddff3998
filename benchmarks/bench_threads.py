"""Which torch thread count is fastest on this machine, per model preset, for batch-1 decoding
and for a training step: the measurements behind `--threads auto` (minigpt.threads).

Each (preset, threads) cell runs in its own subprocess (`torch.set_num_threads` before any
work), so thread pools never carry over. Decoding: 200 greedy tokens at batch 1 from a random
model through the fast engine (fp32), tokens per second. Training: forward + backward + AdamW
on `--batch` rows of 256 tokens, steps per second (after 2 warm-up steps).

    python benchmarks/bench_threads.py                 # tiny and small, 1..cores threads
    python benchmarks/bench_threads.py --presets tiny --busy 1   # with one CPU-bound neighbour

`--busy N` starts N busy-looping processes first, to see what a loaded machine prefers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

CELL = r"""
import json, sys, time
import torch
threads, preset, task, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
cfg = MiniGPTConfig.from_preset(preset, vocab_size=6400, max_position_embeddings=512)
model = MiniGPTForCausalLM(cfg)
if task == "decode":
    from minigpt.inference import GenerationEngine
    model.eval()
    engine = GenerationEngine(model, eos_token_id=0, pad_token_id=0)
    engine.generate([[5, 6, 7]], max_new_tokens=20, temperature=0, stop_on_eos=False)
    start = time.perf_counter()
    engine.generate([[5, 6, 7]], max_new_tokens=200, temperature=0, stop_on_eos=False)
    print(json.dumps({"rate": 200 / (time.perf_counter() - start)}))
else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 6400, (batch, 256))
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for _ in range(2):
        step()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < 5:
        step()
        n += 1
    print(json.dumps({"rate": n / (time.perf_counter() - start)}))
"""


def busy_loop() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--max_threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=4, help="training rows of 256 tokens per step")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound neighbour processes to run meanwhile")
    args = parser.parse_args()
    neighbours = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for p in neighbours:
        p.start()
    try:
        rows = []
        for preset in args.presets.split(","):
            for task, unit in (("decode", "tokens/s"), ("train", "steps/s")):
                rates = {}
                for threads in range(1, args.max_threads + 1):
                    r = subprocess.run([sys.executable, "-c", CELL, str(threads), preset, task, str(args.batch)],
                                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                    if r.returncode != 0:
                        raise SystemExit(r.stderr[-2000:])
                    rates[threads] = json.loads(r.stdout.strip().splitlines()[-1])["rate"]
                best = max(rates, key=rates.get)
                rows.append((preset, task, unit, rates, best))
    finally:
        for p in neighbours:
            p.terminate()
    cores = len(os.sched_getaffinity(0))
    print(f"host: {cores} usable cores, {args.busy} busy neighbour(s); cells: one subprocess each")
    header = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in range(1, args.max_threads + 1))
    print(f"| preset | task | {header} | fastest |")
    print("|---|---|" + "---|" * args.max_threads + "---|")
    for preset, task, unit, rates, best in rows:
        cells = " | ".join(f"{rates[t]:.2f} {unit} ({rates[t] / rates[1]:.2f}×)" for t in sorted(rates))
        print(f"| {preset} | {task} | {cells} | {best} |")


if __name__ == "__main__":
    main()
