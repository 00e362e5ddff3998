"""Pretraining quality at equal wall time: validation bits per byte after 72 s and 5 min.

The anchor is nanoGPT's documented CPU baseline (char-level, 4 layers x 128, block 64, batch 12,
2000 iterations): val loss 1.886 nats/char = 2.72 bits per byte in 72 s on this machine. The
text is ASCII, so a character is a byte and bits per byte compare across tokenizers.

    python benchmarks/bench_pretrain.py                       # tinyshakespeare, 72 s and 300 s
    python benchmarks/bench_pretrain.py --data ../shared/data/tinystories/tinystories_first2MiB.txt \
        --config configs/pretrain/tinystories.yaml --budgets 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

NANOGPT_BPB_72S = 2.72
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "shakespeare.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--config", default=str(CONFIG), help="pretrain YAML preset")
    p.add_argument("--budgets", type=float, nargs="+", default=[72, 300], help="training seconds per run")
    a = p.parse_args()
    from minigpt.cli import main as cli

    rows = []
    for budget in a.budgets:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            t0 = time.time()
            code = cli([
                "pretrain", "--config", a.config, "--data", a.data, "--out", str(out),
                "--cache_dir", str(Path(tmp) / "cache"), "--train.max_time", str(budget), "--train.progress", "false",
            ])
            wall = time.time() - t0
            if code:
                raise SystemExit(code)
            evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            last = [r for r in evals if "val_bpb" in r][-1]
            rows.append((budget, last["step"], last["val_bpb"], wall))
    shakespeare = "shakespeare" in a.data
    head = f"\n{'budget s':>9}{'steps':>7}{'val bpb':>9}{'wall s (all)':>14}"
    print(head + (f"{'nanoGPT@72s':>13}{'ratio':>7}" if shakespeare else ""))
    for budget, steps, bpb, wall in rows:
        line = f"{budget:>9.0f}{steps:>7}{bpb:>9.3f}{wall:>14.0f}"
        print(line + (f"{NANOGPT_BPB_72S:>13.2f}{bpb / NANOGPT_BPB_72S:>7.2f}" if shakespeare else ""))


if __name__ == "__main__":
    main()
