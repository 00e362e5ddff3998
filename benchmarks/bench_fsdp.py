"""Memory per rank, FSDP2 against DDP, on 2 processes (issue 18 §5).

Each setting is one `torchrun --nproc_per_node 2` launch of this script in worker mode: a
randomly initialised preset (default `base`), `--steps` optimizer steps of the training loop
(`minigpt.train.loop.Trainer`, AdamW, fp32) on random token blocks, with `--train.fsdp` on or
off. Every rank reports its peak memory at the end of the last step (before the final save,
which gathers the full weights on rank 0): on CUDA `torch.cuda.max_memory_allocated`, on CPU
the process's peak resident set (`ru_maxrss`, which also counts the Python/torch runtime and
the full-size model each rank builds before sharding), and how much it grew during training. Also printed: the losses
of both (equal up to float rounding: sharding does not change the math) and seconds per step.

    python benchmarks/bench_fsdp.py --preset base --steps 2          # CPU (gloo) or GPUs (nccl)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
    from minigpt.objectives.lm import CausalLMObjective
    from minigpt.train.config import TrainConfig
    from minigpt.train.loop import Trainer

    class Blocks:
        def __init__(self, n: int, t: int):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 6400, (n, t + 1), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i, :-1], "targets": self.ids[i, 1:]}

    torch.manual_seed(0)
    model = MiniGPTForCausalLM(MiniGPTConfig.from_preset(args.preset, vocab_size=6400))
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=1e-4, warmup_steps=0, precision="fp32", device="auto",
                      eval_interval=0, save_interval=0, progress=False, tensorboard=False, fsdp=args.fsdp, log_interval=1)
    from _harness import peak_memory_bytes
    from minigpt.train.callbacks import Callback


    class PeakAtStepEnd(Callback):
        """The high-water mark at the end of the last training step: before the final save,
        which gathers the full weights on rank 0."""

        def on_step_end(self, trainer, metrics) -> None:
            self.peak = peak_memory_bytes()

    probe = PeakAtStepEnd()
    trainer = Trainer(model, CausalLMObjective(), Blocks(64, args.seq), cfg, args.out, callbacks=[probe])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ready = peak_memory_bytes()  # the model built (full size on every rank) and, with FSDP, sharded
    t0 = time.perf_counter()
    trainer.fit()
    seconds = (time.perf_counter() - t0) / args.steps
    peaks = [None] * trainer.world_size
    dist.all_gather_object(peaks, (ready, probe.peak))
    if trainer.rank == 0:
        Path(args.out, "bench.json").write_text(json.dumps({"peaks": peaks, "losses": [h["loss"] for h in trainer.history],
                                                            "seconds": seconds, "cuda": torch.cuda.is_available()}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = {}
    for name, flag in (("DDP", []), ("FSDP2", ["--fsdp"])):
        out = tempfile.mkdtemp(prefix=f"bench_fsdp_{name}_")
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(args.nproc), __file__, "--worker", "--out", out,
               "--preset", args.preset, "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq), *flag]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.nproc))})
        rows[name] = json.loads(Path(out, "bench.json").read_text())
        shutil.rmtree(out, ignore_errors=True)
    kind = "peak CUDA memory allocated" if rows["DDP"]["cuda"] else "peak resident memory (ru_maxrss)"
    print(f"\n{args.preset}, {args.nproc} ranks × batch {args.batch} × {args.seq} tokens, {args.steps} steps; {kind} per rank, MiB")
    print("peak = high-water mark at the end of the last step; growth = peak − the mark once the model was built (and sharded)")
    print(f"{'setting':<8}{'peak r0':>9}{'peak r1':>9}{'growth r0':>11}{'growth r1':>11}{'s/step':>9}  losses")
    for name, r in rows.items():
        (b0, p0), (b1, p1) = r["peaks"][0], r["peaks"][-1]
        print(f"{name:<8}{p0 / 2**20:>9.0f}{p1 / 2**20:>9.0f}{(p0 - b0) / 2**20:>11.0f}{(p1 - b1) / 2**20:>11.0f}{r['seconds']:>9.2f}  "
              f"{[round(x, 5) for x in r['losses']]}")
    (db, dp), (fb, fp) = rows["DDP"]["peaks"][0], rows["FSDP2"]["peaks"][0]
    print(f"FSDP2 / DDP, rank 0: peak {fp / dp:.2f}×, growth during training {(fp - fb) / (dp - db):.2f}×")


if __name__ == "__main__":
    sys.exit(main())
