"""bf16 against fp32 on this machine: what `precision="auto"` decides, and why.

Measures, in one run, a dense matmul in fp32 and in bf16 and one training step of a MiniGPT
preset (forward, cross-entropy, backward, AdamW) in fp32 and under bf16 autocast, then prints
each pair with its ratio and the precision `minigpt.train.distributed.pick_precision("auto")`
picks here. On CPUs without native bf16 (AVX2 only) oneDNN emulates bf16 and the ratio is far
below 1; on AVX-512 / AMX CPUs and GPUs it is above 1.

    python benchmarks/bench_precision.py                    # tiny preset, 16 x 256 tokens
    python benchmarks/bench_precision.py --preset small --batch 4 --seq 512
"""

from __future__ import annotations

import argparse
import time

import torch

from _harness import matmul_peak


def step_seconds(preset: str, batch: int, seq: int, precision: str, steps: int) -> float:
    """Median seconds of one training step of `preset` on `(batch, seq)` random tokens."""
    from minigpt import MiniGPT, MiniGPTConfig
    from minigpt.model import PRESETS

    torch.manual_seed(0)
    model = MiniGPT(MiniGPTConfig(vocab_size=6400, **PRESETS[preset])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 6400, (batch, seq))
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per precision (median reported)")
    ap.add_argument("--n", type=int, default=1024, help="matmul size n (n x n @ n x n)")
    a = ap.parse_args()
    from minigpt.train.distributed import pick_precision

    fp32 = matmul_peak("float32", n=a.n)
    bf16 = matmul_peak("bfloat16", n=a.n)
    s32 = step_seconds(a.preset, a.batch, a.seq, "fp32", a.steps)
    s16 = step_seconds(a.preset, a.batch, a.seq, "bf16", a.steps)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"{'what':<34}{'fp32':>12}{'bf16':>12}{'bf16 speed / fp32':>20}")
    print(f"{f'matmul {a.n}^3, TFLOP/s':<34}{fp32 / 1e12:>12.4f}{bf16 / 1e12:>12.4f}{bf16 / fp32:>19.3f}x")
    print(f"{f'{a.preset} step {a.batch}x{a.seq}, s':<34}{s32:>12.3f}{s16:>12.3f}{s32 / s16:>19.3f}x")
    print(f"precision 'auto' picks here: {pick_precision('auto', torch.device('cpu'))}")


if __name__ == "__main__":
    main()
