"""Forgetting when fine-tuning EN → ZH: none / EWC / replay / both / KL to base (issue 18 §3).

Stage 1 is an SFT model on Alpaca EN (`benchmarks/bench_eval.py` trains one: `sft_en`, the
`tiny` base after 300 SFT steps). Stage 2 continues it with `minigpt sft` on Alpaca ZH for
`--steps` steps, once per setting:

- none: plain SFT on ZH;
- EWC: `--ewc_lambda λ`, the diagonal Fisher of stage 1 estimated on `--fisher_rows` EN
  sequences (`--ewc_data`) and saved beside the stage-1 model;
- replay: `--replay_data EN --replay_ratio 0.2`;
- EWC + replay;
- KL to base: `--kl_to_base β`.

Each stage-2 model is scored on the held-out sets (assistant-token loss, nats/token): EN (what
it may forget) and ZH (what it learns). Printed: a table with the EN loss increase over stage 1
(forgetting) and the ZH loss decrease (gain), and forgetting relative to plain SFT.

    python benchmarks/bench_continual.py --work /work/runs/eval_bench --steps 150
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def heldout_loss(model_dir: Path, data: Path, max_length: int, limit: int) -> float:
    """Assistant-token cross-entropy (nats/token) of a model (or adapter directory) on the first
    `limit` records: the SFT recipe's own data path (`SFTDataset`, padded batches) and objective
    (`SFTObjective` in eval mode), so the figure is the one `minigpt sft` reports as `val_loss`.
    (`minigpt.evaluation.reference_nll` renders and truncates prompts its own way and gave
    4.7082 against this 4.7053 on the stage-1 model.)"""
    import torch
    from torch.utils.data import DataLoader

    from minigpt.data.sft import PaddedSFTDataset, SFTDataset, collate_padded
    from minigpt.model.loading import load_model_dir
    from minigpt.objectives.sft import SFTObjective

    model, tok = load_model_dir(model_dir, adapters=True)
    model.eval()
    examples = SFTDataset(str(data), tok, max_length=max_length).examples[:limit]
    loader = DataLoader(PaddedSFTDataset(examples), batch_size=16, collate_fn=lambda b: collate_padded(b, pad_id=tok.pad_token_id))
    total, units = 0.0, 0
    objective = SFTObjective()
    with torch.no_grad():
        for batch in loader:
            out = objective.compute_loss(model, batch)
            total += float(out.loss_sum)
            units += out.num_units
    return total / units


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/work/runs/eval_bench", help="bench_eval.py's output: sft_en/ and data/")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--ewc_lambda", type=float, default=1000.0)
    p.add_argument("--kl_to_base", type=float, default=0.5)
    p.add_argument("--fisher_rows", type=int, default=64)
    p.add_argument("--heldout", type=int, default=500)
    p.add_argument("--settings", default="none,ewc,replay,ewc+replay,kl")
    a = p.parse_args()
    from minigpt.recipes.sft import sft
    from minigpt.train.config import TrainConfig

    work = Path(a.work)
    data = work / "data"
    en_train, zh_train = data / "en_train.jsonl", data / "zh_train.jsonl"
    en_held, zh_held = data / "en_heldout.jsonl", data / "zh_heldout.jsonl"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stage1 = tmp / "stage1"
        stage1.mkdir()
        for f in (work / "sft_en").iterdir():  # the model alone (no checkpoints, no run marker)
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, stage1 / f.name)
        (stage1 / "ewc_fisher.safetensors").unlink(missing_ok=True)
        # The earlier task's data for the Fisher and for replay: the first 20,000 EN records.
        en_subset = tmp / "en_first20k.jsonl"
        with open(en_train, encoding="utf-8") as src:
            en_subset.write_text("".join(line for _, line in zip(range(20_000), src)), encoding="utf-8")
        en_train = en_subset
        base_en, base_zh = heldout_loss(stage1, en_held, 512, a.heldout), heldout_loss(stage1, zh_held, 512, a.heldout)
        print(f"stage 1 (SFT EN): held-out EN {base_en:.4f}, ZH {base_zh:.4f} nats/token", flush=True)
        options = {
            "none": {},
            "ewc": dict(ewc_lambda=a.ewc_lambda, ewc_data=str(en_train), fisher_rows=a.fisher_rows),
            "replay": dict(replay_data=str(en_train), replay_ratio=0.2),
            "ewc+replay": dict(ewc_lambda=a.ewc_lambda, ewc_data=str(en_train), fisher_rows=a.fisher_rows,
                               replay_data=str(en_train), replay_ratio=0.2),
            "kl": dict(kl_to_base=a.kl_to_base),
        }
        for name in a.settings.split(","):
            train = TrainConfig(max_steps=a.steps, batch_size=8, lr=1e-3, warmup_steps=max(1, a.steps // 10), weight_decay=0.0,
                                eval_interval=0, eval_batches=0, save_interval=0, keep_last=1, progress=False, seed=1337,
                                tensorboard=False)
            t0 = time.time()
            out = tmp / name.replace("+", "_")
            sft(model=str(stage1), data=[str(zh_train)], out=str(out), max_length=512, val_fraction=0.0, train=train, **options[name])
            seconds = time.time() - t0
            rows[name] = (heldout_loss(out, en_held, 512, a.heldout), heldout_loss(out, zh_held, 512, a.heldout), seconds)
            print(f"[{name}] EN {rows[name][0]:.4f}  ZH {rows[name][1]:.4f}  ({seconds:.0f} s)", flush=True)
    plain = rows.get("none", (None,))[0]
    print(f"\nstage 2: {a.steps} SFT steps × 8 packed blocks of 512 on Alpaca ZH from the SFT-EN model; held-out "
          f"{a.heldout} records each; EWC λ = {a.ewc_lambda:g} (Fisher of {a.fisher_rows} EN sequences), replay 0.2, KL β = {a.kl_to_base:g}")
    print(f"{'setting':<12}{'EN loss':>9}{'forgetting':>12}{'vs none':>9}{'ZH loss':>9}{'ZH gain':>9}{'seconds':>9}")
    print(f"{'stage 1':<12}{base_en:>9.4f}{'':>12}{'':>9}{base_zh:>9.4f}")
    for name, (en, zh, seconds) in rows.items():
        forgetting = en - base_en
        ratio = forgetting / (plain - base_en) if plain is not None and plain != base_en else float("nan")
        print(f"{name:<12}{en:>9.4f}{forgetting:>+12.4f}{ratio:>9.2f}{zh:>9.4f}{base_zh - zh:>+9.4f}{seconds:>9.0f}")
    print(json.dumps({"stage1": [base_en, base_zh], **{k: list(v) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
