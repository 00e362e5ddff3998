"""Learning per second: validation bits per byte of training variants at equal wall clock.

Each variant runs `minigpt pretrain` with the shakespeare preset (72 s of training on
tinyshakespeare by default) plus its own options, for every seed, one run at a time; the
table gives each run's steps and val bits per byte, each variant's mean, and its ratio to the
first variant (the baseline) measured in the same invocation.

    python benchmarks/bench_learning.py                                   # adamw vs the preset, seeds 1 2 3
    python benchmarks/bench_learning.py --variants preset preset+relu2 preset+softcap15 --seeds 1 2
    python benchmarks/bench_learning.py --variants preset preset+documents --steps 500 --data runs/quickstart/data/pretrain_corpus.jsonl

A variant is a name from VARIANTS below. Run it on a quiet machine: a second process on the
same cores changes how many steps fit in the budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "shakespeare.yaml"

#: The three training knobs at AdamW's values (the preset's own defaults are the winners, so a
#: baseline has to say what it is).
ADAMW = ["--train.optimizer", "adamw", "--train.schedule", "cosine", "--model.qk_norm", "false"]

#: Variant name -> options appended to the preset (later options win). The `preset` is the
#: winner (Muon + WSD + QK-norm); each `preset-X` drops one of its pieces, each `preset+X` adds
#: one candidate, so every row is one option's effect at equal wall clock.
VARIANTS = {
    "adamw": ADAMW,
    "preset": [],
    "preset-muon": ["--train.optimizer", "adamw"],
    "preset-wsd": ["--train.schedule", "cosine"],
    "preset-qk-norm": ["--model.qk_norm", "false"],
    "preset+relu2": ["--model.hidden_act", "relu2"],
    "preset+softcap15": ["--model.final_logit_softcapping", "15"],
    "preset+untied": ["--model.tie_word_embeddings", "false"],
    "preset+zero-init": ["--model.zero_init_residual", "true"],
    "preset+documents": ["--packing", "documents"],  # on a corpus of short documents (--data)
    "preset+seq-warmup": ["--train.seq_len_warmup_steps", "60"],
    "preset+batch-warmup": ["--train.batch_size_warmup_steps", "60"],
    "muon": ADAMW + ["--train.optimizer", "muon"],
    "wsd": ADAMW + ["--train.schedule", "wsd"],
    "qk-norm": ADAMW + ["--model.qk_norm", "true"],
    "muon+wsd": ADAMW + ["--train.optimizer", "muon", "--train.schedule", "wsd"],
    "muon+wsd+qk-norm": ADAMW + ["--train.optimizer", "muon", "--train.schedule", "wsd", "--model.qk_norm", "true"],
}


def run(data: str, config: str, options: list[str], seed: int, budget: float, steps: int = 0) -> dict:
    """One pretraining run of `budget` training seconds, or of `steps` steps when given (the
    budget then only a safety cap of ten times itself); returns its steps, final val bits per
    byte, wall seconds and its evaluations as a curve `[(training seconds, val bits per byte)]`
    (the seconds of the evaluations between steps taken off)."""
    from minigpt.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.time()
        code = cli(["pretrain", "--config", config, "--data", data, "--out", str(out), "--cache_dir", str(Path(tmp) / "cache"),
                    "--train.max_time", str(budget * 10 if steps else budget), "--train.max_steps", str(steps),
                    "--train.seed", str(seed), "--train.progress", "false",
                    "--train.tensorboard", "false", *options])
        if code:
            raise SystemExit(code)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "val_bpb" in r]
        return {"steps": evals[-1]["step"], "val_bpb": evals[-1]["val_bpb"], "wall": time.time() - t0,
                "curve": [(r["time_s"] - r.get("eval_time_s", 0.0), r["val_bpb"]) for r in evals]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--config", default=str(CONFIG), help="pretrain YAML preset")
    p.add_argument("--variants", nargs="+", default=["adamw", "preset"], choices=sorted(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--budget", type=float, default=72.0, help="training seconds per run")
    p.add_argument("--steps", type=int, default=0,
                   help="run a fixed number of steps instead of the time budget: a comparison that does not depend on the "
                        "machine's speed, fair for variants whose steps cost the same (packing, sequence-length warmup)")
    a = p.parse_args()
    results: dict[str, list[dict]] = {v: [] for v in a.variants}
    for seed in a.seeds:  # seed-major: a drift in the machine's speed touches every variant alike
        for variant in a.variants:
            r = run(a.data, a.config, VARIANTS[variant], seed, a.budget, a.steps)
            results[variant].append(r)
            print(f"{variant} seed {seed}: {r['steps']} steps, val {r['val_bpb']:.3f} bits/byte ({r['wall']:.0f} s)", flush=True)
    base = statistics.mean(r["val_bpb"] for r in results[a.variants[0]])
    print(f"\n{'variant':<18}{'seeds':>6}{'steps (mean)':>14}{'val bpb per seed':>28}{'mean':>8}{'ratio':>7}")
    for variant, rs in results.items():
        bpbs = [r["val_bpb"] for r in rs]
        mean = statistics.mean(bpbs)
        print(f"{variant:<18}{len(rs):>6}{statistics.mean(r['steps'] for r in rs):>14.0f}"
              f"{' '.join(f'{b:.3f}' for b in bpbs):>28}{mean:>8.3f}{mean / base:>7.3f}")


if __name__ == "__main__":
    main()
