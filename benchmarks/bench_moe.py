"""Dense against mixture of experts at equal wall time and equal active parameters (issue 18 §1).

Both runs pretrain from scratch on the same TinyStories text with the same tokenizer, block size,
batch and schedule. The dense model is the `small` preset (SwiGLU of width 1408); the MoE model
replaces each block's feed-forward by E experts of width 1408/K with top-K routing (default
E = 8, K = 2: each token passes through 2 × 704 = 1408 hidden units, the dense width, so the
active parameters per token are the dense model's plus the router's). The dense
run takes `--steps` steps; the MoE run then trains for the same number of seconds
(`--train.max_time`), so the comparison is quality per unit of compute time on this host.

Printed: steps, tokens/s (mean of the logged steps), total and active parameters, final
validation bits per byte, and the MoE/dense ratios.

    python benchmarks/bench_moe.py --steps 80
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "tinystories_first2MiB.txt"


def run(name: str, data: str, out: Path, cache: Path, tokenizer: Path | None, max_steps: int, max_time: float | None, **arch) -> dict:
    import minigpt  # noqa: F401
    from transformers import AutoModelForCausalLM

    from minigpt.model import count_active_parameters, count_parameters
    from minigpt.model.options import ModelConfig
    from minigpt.recipes.pretrain import pretrain
    from minigpt.train.config import TrainConfig

    train = TrainConfig(
        max_steps=max_steps, max_time=max_time, batch_size=8, lr=1e-3, warmup_steps=10, eval_interval=0, eval_batches=40,
        save_interval=0, progress=False, tensorboard=False, log_interval=5, precision="fp32",
    )
    metrics = pretrain(
        data=data, out=str(out), cache_dir=str(cache), model=ModelConfig(preset="small", **arch), block_size=256,
        tokenizer=str(tokenizer) if tokenizer else None, train=train,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/tokens_per_s" in r]
    model = AutoModelForCausalLM.from_pretrained(out)
    return {
        "name": name,
        "steps": metrics["steps"],
        "tokens_per_s": statistics.mean(r["train/tokens_per_s"] for r in train_rows[1:] or train_rows),
        "val_bpb": metrics["val_bpb"],
        "params": count_parameters(model),
        "active": count_active_parameters(model),
        "train_seconds": metrics["train_seconds"],
        "load_max": {k: v for k, v in train_rows[-1].items() if "moe_load_max" in k},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--steps", type=int, default=80, help="dense steps; the MoE run gets the same seconds")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2)
    a = p.parse_args()
    dense_width = 1408
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense = run("dense small", a.data, tmp / "dense", tmp / "cache", None, a.steps, None)
        seconds = dense["train_seconds"]
        width = dense_width // a.top_k
        moe = run(
            f"MoE {a.experts}x{width} top-{a.top_k}", a.data, tmp / "moe", tmp / "cache", tmp / "dense" / "tokenizer",
            100 * a.steps, seconds, num_local_experts=a.experts, num_experts_per_tok=a.top_k, intermediate_size=width,
        )
    print(f"\nequal wall time: the dense run's {a.steps} steps trained in {seconds:.0f} s; the MoE run was capped at that "
          f"({moe['train_seconds']:.0f} s, including its final evaluation)")
    print(f"{'model':<22}{'params M':>10}{'active M':>10}{'steps':>7}{'tokens/s':>10}{'val bpb':>9}")
    for r in (dense, moe):
        print(f"{r['name']:<22}{r['params'] / 1e6:>10.2f}{r['active'] / 1e6:>10.2f}{r['steps']:>7}{r['tokens_per_s']:>10.0f}{r['val_bpb']:>9.4f}")
    print(f"MoE / dense: tokens/s {moe['tokens_per_s'] / dense['tokens_per_s']:.2f}x, val bpb {moe['val_bpb'] / dense['val_bpb']:.3f}x")
    print("MoE busiest-expert share × E per layer at the last step (1 = even):",
          ", ".join(f"{v:.2f}" for v in moe["load_max"].values()))


if __name__ == "__main__":
    main()
