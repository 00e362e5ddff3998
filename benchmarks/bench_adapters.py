"""Adapter methods side by side on Alpaca EN SFT: full, LoRA, Houlsby, Pfeiffer, IA³ (issue 18 §4).

Each method fine-tunes the same pretrained `tiny` base (`benchmarks/bench_eval.py`'s `base`) for
`--steps` steps × 8 packed blocks of 512 tokens on the first 20,000 Alpaca EN training records,
then is scored on 500 held-out records (assistant-token loss, nats/token; lower is better).
Printed: trainable parameters, held-out loss, seconds.

    python benchmarks/bench_adapters.py --work /work/runs/eval_bench --steps 150
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_continual import heldout_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/work/runs/eval_bench", help="bench_eval.py's output: base/ and data/")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--methods", default="full,lora,houlsby,pfeiffer,ia3")
    a = p.parse_args()
    from minigpt.model.options import AdapterOptions
    from minigpt.model.options import LoraOptions
    from minigpt.recipes.sft import sft
    from minigpt.train.config import TrainConfig

    work = Path(a.work)
    base, held = work / "base", work / "data" / "en_heldout.jsonl"
    settings = {
        "full": ({}, 1e-3),
        "lora": (dict(lora=LoraOptions(rank=8, alpha=16)), 3e-3),
        "houlsby": (dict(adapter=AdapterOptions(method="houlsby", reduction_factor=16)), 3e-3),
        "pfeiffer": (dict(adapter=AdapterOptions(method="pfeiffer", reduction_factor=16)), 3e-3),
        "ia3": (dict(adapter=AdapterOptions(method="ia3")), 3e-2),
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "en_first20k.jsonl"
        with open(work / "data" / "en_train.jsonl", encoding="utf-8") as src:
            data.write_text("".join(line for _, line in zip(range(20_000), src)), encoding="utf-8")
        start = heldout_loss(base, held, 512, 500)
        print(f"base: held-out EN {start:.4f} nats/token", flush=True)
        for name in a.methods.split(","):
            options, lr = settings[name]
            train = TrainConfig(max_steps=a.steps, batch_size=8, lr=lr, warmup_steps=max(1, a.steps // 10), weight_decay=0.0,
                                eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, progress=False, seed=1337,
                                tensorboard=False)
            out = tmp / name
            t0 = time.time()
            sft(model=str(base), data=[str(data)], out=str(out), max_length=512, val_fraction=0.0, train=train, **options)
            seconds = time.time() - t0
            from minigpt.model.loading import load_model_dir

            model, _ = load_model_dir(out, adapters=True)
            trainable = sum(p.numel() for n, p in model.named_parameters()
                            if name == "full" or any(k in n for k in ("lora_", "ia3_", ".adapter.adapter_")))
            rows[name] = (trainable, heldout_loss(out, held, 512, 500), seconds, lr)
            print(f"[{name}] trainable {trainable:,}  held-out {rows[name][1]:.4f}  ({seconds:.0f} s)", flush=True)
    print(f"\n{a.steps} SFT steps × 8 packed blocks of 512 on Alpaca EN (first 20,000 records) from the tiny base; "
          f"held-out 500 records, assistant-token loss (base: {start:.4f})")
    print(f"{'method':<10}{'trainable':>12}{'lr':>8}{'held-out':>10}{'seconds':>9}")
    for name, (trainable, loss, seconds, lr) in rows.items():
        print(f"{name:<10}{trainable:>12,}{lr:>8g}{loss:>10.4f}{seconds:>9.0f}")


if __name__ == "__main__":
    main()
