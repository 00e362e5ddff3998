"""Peak memory of one training step with and without activation checkpointing (issue 18 §5).

Each setting runs in a fresh subprocess: a randomly initialised preset (default `base`), one
forward + backward + AdamW step on `--batch` random sequences of `--seq` tokens, fp32 on CPU
(CUDA when available). Reported: peak resident memory of the process (CPU: `ru_maxrss`, which
includes the weights, gradients and optimizer state) or peak allocated CUDA memory, the step's
seconds, and the loss (equal in both settings: checkpointing recomputes, it does not change
the math).

    python benchmarks/bench_checkpointing.py --preset base --batch 4 --seq 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def worker(args) -> None:
    import torch

    from _harness import peak_memory_bytes

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
    from minigpt.train.loop import enable_activation_checkpointing

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(MiniGPTConfig.from_preset(args.preset, vocab_size=6400)).to(device).train()
    if args.checkpointing:
        enable_activation_checkpointing(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 6400, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t
    peak = peak_memory_bytes()
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "loss": float(loss.detach()), "device": device,
                      "params": sum(p.numel() for p in model.parameters())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = {}
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--worker", "--preset", args.preset, "--batch", str(args.batch), "--seq", str(args.seq)]
        out = subprocess.run(cmd + (["--checkpointing"] if ckpt else []), capture_output=True, text=True, check=True)
        rows[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, ck = rows[False], rows[True]
    print(f"{args.preset} ({plain['params'] / 1e6:.1f} M parameters), {args.batch} x {args.seq} tokens, fp32, {plain['device']}")
    print("| activation checkpointing | peak memory MiB | step s | loss |")
    print("|---|---|---|---|")
    for name, r in (("off", plain), ("on", ck)):
        print(f"| {name} | {r['peak_bytes'] / 2**20:.0f} | {r['seconds']:.1f} | {r['loss']:.6f} |")
    print(f"peak memory ratio on/off: {ck['peak_bytes'] / plain['peak_bytes']:.2f}; step time ratio {ck['seconds'] / plain['seconds']:.2f}")


if __name__ == "__main__":
    main()
