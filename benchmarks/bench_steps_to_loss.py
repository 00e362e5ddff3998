"""Steps to AdamW's loss: how many optimizer steps a variant needs to reach the validation loss
AdamW ends with, on the quickstart's pretraining stage (speed-independent: fixed steps).

It pretrains the quickstart's `tiny` model on the quickstart's corpus (block 256, batch 8,
lr 3e-3, warmup 50, seed 1337, as `minigpt quickstart` does) for `--steps` steps with AdamW and
a cosine schedule (the quickstart's optimizer until it switched to Muon + WSD, the `muon+wsd`
variant here), then with the variant for the same steps (the first evaluation at or below
AdamW's final validation loss is reported) and for half the steps (its final loss against
AdamW's).

    minigpt quickstart --out runs/quickstart            # once: writes the corpus and tokenizer
    python benchmarks/bench_steps_to_loss.py --run runs/quickstart --variant muon+wsd
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_learning import VARIANTS


def pretrain(run: Path, out: Path, steps: int, options: list[str], eval_interval: int) -> list[dict]:
    """One pretraining run on the quickstart's corpus; returns its evaluation rows."""
    from minigpt.cli import main as cli

    code = cli(["pretrain", "--data", str(run / "data" / "pretrain_corpus.jsonl"), "--tokenizer", str(run / "pretrain" / "tokenizer"),
                "--out", str(out), "--cache_dir", str(out.parent / "cache"), "--model.preset", "tiny", "--model.vocab_size", "2048",
                "--block_size", "256", "--val_fraction", "0.05", "--train.max_steps", str(steps), "--train.batch_size", "8",
                "--train.lr", "3e-3", "--train.warmup_steps", "50", "--train.seed", "1337", "--train.eval_interval", str(eval_interval),
                "--train.save_interval", "0", "--train.precision", "fp32", "--train.progress", "false", "--train.tensorboard", "false",
                *options])
    if code:
        raise SystemExit(code)
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a quickstart folder (its data/ and pretrain/tokenizer are used)")
    p.add_argument("--variant", default="muon", choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval_interval", type=int, default=25)
    a = p.parse_args()
    run = Path(a.run)
    with tempfile.TemporaryDirectory() as tmp:
        base = pretrain(run, Path(tmp) / "adamw", a.steps, [], a.eval_interval)
        target = base[-1]["val_loss"]
        full = pretrain(run, Path(tmp) / "full", a.steps, VARIANTS[a.variant], a.eval_interval)
        half = pretrain(run, Path(tmp) / "half", a.steps // 2, VARIANTS[a.variant], a.eval_interval)
    reached = next((r["step"] for r in full if r["val_loss"] <= target), None)
    print(f"\nAdamW, {a.steps} steps: final val loss {target:.4f} nats/token ({base[-1]['val_bpb']:.3f} bits/byte)")
    print(f"{a.variant}, {a.steps} steps: final {full[-1]['val_loss']:.4f}; first evaluation at or below AdamW's final: "
          + (f"step {reached} ({reached / a.steps:.2f}× AdamW's steps)" if reached else "never"))
    print(f"{a.variant}, {a.steps // 2} steps (its own schedule): final {half[-1]['val_loss']:.4f} "
          f"({'at or below' if half[-1]['val_loss'] <= target else 'above'} AdamW's final)")
    print("evaluations (step: AdamW / variant):", ", ".join(f"{b['step']}: {b['val_loss']:.3f} / {f['val_loss']:.3f}" for b, f in zip(base, full)))


if __name__ == "__main__":
    main()
