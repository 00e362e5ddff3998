"""Masked-LM pretraining on real text: held-out masked-token accuracy against a unigram baseline.

For each corpus (TinyStories, and the Tang poems read as plain text) the `minigpt mlm` recipe
pretrains a `--preset` encoder for `--steps` steps from scratch (its own tokenizer, with
`<|mask|>`); the held-out blocks (the last 5 % of the token stream, masked with the run's seeded
rule) are scored by the trained encoder and by the unigram baseline, which always predicts the
most frequent non-special token of the training stream. The table gives the accuracy at the
positions replaced by `<|mask|>` (the honest figure) and at all selected positions (BERT's, where
10 % of the positions show the answer). Everything runs in this process, one step after another.

    python benchmarks/bench_mlm.py                      # tiny preset, 300 steps per corpus
    python benchmarks/bench_mlm.py --steps 1000 --preset small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tang_text(out: Path, poems: int) -> Path:
    """The first `poems` Tang poems as plain text, one poem per line (title, author, couplets)."""
    lines = []
    with open(DATA / "chinese-poetry" / "tang.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("paragraphs"):
                lines.append(f"{rec['title']} {rec['author']} " + "".join(rec["paragraphs"]))
            if len(lines) >= poems:
                break
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def score(run: Path, corpus: Path, block_size: int, seed: int, cache: Path) -> dict[str, float]:
    """Held-out accuracies of the trained encoder and of the unigram baseline (always the
    training stream's most frequent non-special token), on the masked positions the run was
    scored on: all selected positions (as BERT reports them; 10 % of them show the answer), and
    only those replaced by `<|mask|>` (the model sees nothing of the answer there)."""
    import numpy as np
    import torch

    from minigpt.data.mlm import MaskedBlocks
    from minigpt.model.encoder import MiniGPTForMaskedLM
    from minigpt.data.prepare import load_pretrain_data
    from minigpt.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, load_tokenizer

    tok = load_tokenizer(run / "tokenizer")
    model = MiniGPTForMaskedLM.from_pretrained(run).eval()
    train, val = load_pretrain_data([str(corpus)], tok, block_size, "text", 0.05, str(cache))
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    specials = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] + [mask_id]
    counts = np.bincount(np.asarray(train.tokens[: len(train) * block_size], dtype=np.int64), minlength=len(tok))
    counts[specials] = 0
    top = int(counts.argmax())
    masked = MaskedBlocks(val, mask_id, len(tok), 0.15, specials, seed + 1)
    n = {"all": 0, "mask": 0}
    model_hits = {"all": 0, "mask": 0}
    base_hits = {"all": 0, "mask": 0}
    with torch.no_grad():
        for start in range(0, len(masked), 32):
            items = [masked[i] for i in range(start, min(start + 32, len(masked)))]
            ids = torch.stack([x["input_ids"] for x in items])
            labels = torch.stack([x["labels"] for x in items])
            pred = model(ids).logits.argmax(-1)
            for kind, where in (("all", labels != -100), ("mask", (labels != -100) & (ids == mask_id))):
                n[kind] += int(where.sum())
                model_hits[kind] += int((pred[where] == labels[where]).sum())
                base_hits[kind] += int((labels[where] == top).sum())
    return {f"{who}_{kind}": hits[kind] / max(n[kind], 1) for who, hits in (("model", model_hits), ("unigram", base_hits)) for kind in n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--tang_poems", type=int, default=6000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="runs/bench_mlm")
    a = p.parse_args()

    from minigpt.recipes.mlm import mlm
    from minigpt.model.options import ModelConfig
    from minigpt.train.config import TrainConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    corpora = {
        "TinyStories": DATA / "tinystories" / "tinystories_first2MiB.txt",
        "Tang poems": tang_text(out / "tang.txt", a.tang_poems),
    }
    rows = []
    for name, path in corpora.items():
        run = out / name.split()[0].lower()
        t0 = time.time()
        m = mlm(
            data=str(path), out=str(run), model=ModelConfig(preset=a.preset, vocab_size=a.vocab), block_size=a.block,
            cache_dir=str(out / "cache"), overwrite=True,
            train=TrainConfig(max_steps=a.steps, batch_size=a.batch, lr=5e-4, warmup_steps=min(100, a.steps // 10), weight_decay=0.01,
                              eval_interval=0, save_interval=0, seed=a.seed, progress=False, tensorboard=False),
        )
        seconds = time.time() - t0
        s = score(run, path, a.block, a.seed, out / "cache")
        rows.append((name, s, m["val_loss"], seconds))
    print(f"\nMLM, preset {a.preset}, vocab {a.vocab}, {a.steps} steps x {a.batch} blocks of {a.block} tokens, 15 % masked (80/10/10), seed {a.seed}")
    print("| corpus | accuracy at <|mask|> positions: encoder | unigram | ratio | at all selected positions: encoder | unigram | held-out loss (nats) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s, loss, sec in rows:
        ratio = s["model_mask"] / max(s["unigram_mask"], 1e-9)
        print(f"| {name} | {s['model_mask']:.1%} | {s['unigram_mask']:.1%} | {ratio:.2f}x | {s['model_all']:.1%} | {s['unigram_all']:.1%} | {loss:.3f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
