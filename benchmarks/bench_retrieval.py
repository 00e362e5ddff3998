"""Retrieval with contrastive embeddings trained here, on held-out pairs never seen in training.

Two tasks:
- GSM8K: each test question (1,319) must find its own worked answer among all 1,319 answers.
  Trained on the 7,473 train pairs. Anchor: BM25 (`rank-bm25`, Okapi, lower-cased word tokens)
  on the same test pairs.
- Alpaca EN -> ZH: each English instruction must find its Chinese translation (same index of
  `alpaca_zh.jsonl`) among 1,000 held-out pairs (a seeded random sample of indices); trained on
  the other pairs. Anchor: chance.

Variants on GSM8K, all at the same contrastive steps, batch and tokenizer (trained on the GSM8K
train texts, with `<|mask|>`): SimCLR (in-batch negatives) and MoCo (momentum encoder + queue)
from scratch, and SimCLR starting from an encoder pretrained with `minigpt mlm`, or from a
causal model pretrained with `minigpt pretrain` (causal attention, last-token pooling), each
pretrained for `--pretrain_steps` on the same train texts. Everything runs in this process, one
run after another (results: `--out`).

    python benchmarks/bench_retrieval.py                       # tiny preset, 400 steps per run
    python benchmarks/bench_retrieval.py --steps 1000 --preset small
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def scores_of(run: Path, queries: list[str], documents: list[str], max_length: int):
    """Cosine similarities `(Q, D)` of the embedder saved in `run`."""
    from minigpt.model.encoder import MiniGPTForEmbedding
    from minigpt.objectives.config import ContrastiveConfig
    from minigpt.recipes.contrastive import embed_texts
    from minigpt.tokenizer import load_tokenizer

    model = MiniGPTForEmbedding.from_pretrained(run)
    tok = load_tokenizer(run)
    return embed_texts(model, tok, queries, max_length) @ embed_texts(model, tok, documents, max_length).T


def bm25_scores(queries: list[str], documents: list[str]):
    import numpy as np
    import torch
    from rank_bm25 import BM25Okapi

    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    index = BM25Okapi([words(d) for d in documents])
    return torch.from_numpy(np.stack([index.get_scores(words(q)) for q in queries]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400, help="contrastive steps per run")
    p.add_argument("--pretrain_steps", type=int, default=400, help="steps of the MLM and causal pretraining runs")
    p.add_argument("--batch", type=int, default=32, help="pairs per step (the in-batch negatives)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--moco_momentum", type=float, default=0.99)
    p.add_argument("--moco_queue", type=int, default=4096, help="rounded down to a multiple of 2 x --batch")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--alpaca_train", type=int, default=20000, help="Alpaca training pairs (of those not held out)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--only", default="", help="comma-separated subset of: simclr,moco,mlm,causal,alpaca")
    p.add_argument("--out", default="runs/bench_retrieval")
    a = p.parse_args()

    from minigpt.evaluation.retrieval import retrieval_metrics
    from minigpt.recipes.contrastive import contrastive
    from minigpt.recipes.mlm import mlm
    from minigpt.model.options import ModelConfig
    from minigpt.recipes.pretrain import pretrain
    from minigpt.tokenizer import train_tokenizer
    from minigpt.train.config import TrainConfig

    only = set(filter(None, a.only.split(","))) or {"simclr", "moco", "mlm", "causal", "alpaca"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def train_config(steps: int, batch: int) -> TrainConfig:
        return TrainConfig(max_steps=steps, batch_size=batch, lr=a.lr, warmup_steps=max(1, steps // 10), weight_decay=0.01,
                           eval_interval=0, save_interval=0, seed=a.seed, progress=False, tensorboard=False)

    rows: list[tuple] = []

    # ---------------------------------------------------------------- GSM8K question -> answer
    gsm_train = read_jsonl(DATA / "gsm8k" / "train.jsonl")
    gsm_test = read_jsonl(DATA / "gsm8k" / "test.jsonl")
    pairs_file = write_jsonl(out / "gsm8k_train.jsonl", gsm_train)
    texts_file = out / "gsm8k_train.txt"  # one document per train question + answer, for pretraining
    texts_file.write_text("\n\n".join(f"{r['question']}\n{r['answer']}" for r in gsm_train), encoding="utf-8")
    tok_dir = out / "gsm8k_tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer(iter([r["question"] + "\n" + r["answer"] for r in gsm_train]), vocab_size=a.vocab, out_dir=tok_dir, mask_token=True)
    queries = [r["question"] for r in gsm_test]
    answers = [r["answer"] for r in gsm_test]
    t0 = time.time()
    rows.append(("GSM8K q->a (1,319)", "BM25 (rank-bm25)", "-", retrieval_metrics(bm25_scores(queries, answers)), time.time() - t0))

    model = ModelConfig(preset=a.preset, vocab_size=a.vocab)
    init_runs: dict[str, tuple[str, float]] = {}
    if "mlm" in only:
        t0 = time.time()
        mlm(data=str(texts_file), out=str(out / "mlm"), model=model, tokenizer=str(tok_dir), block_size=a.max_length, cache_dir=str(out / "cache"),
            overwrite=True, val_fraction=0.0, train=train_config(a.pretrain_steps, 16))
        init_runs["mlm"] = (str(out / "mlm"), time.time() - t0)
    if "causal" in only:
        t0 = time.time()
        pretrain(data=str(texts_file), out=str(out / "causal"), model=model, tokenizer=str(tok_dir), block_size=a.max_length,
                 cache_dir=str(out / "cache"), overwrite=True, val_fraction=0.0, train=train_config(a.pretrain_steps, 16))
        init_runs["causal"] = (str(out / "causal"), time.time() - t0)

    queue = max(2 * a.batch, a.moco_queue // (2 * a.batch) * (2 * a.batch))  # whole updates: both sides of each pair are queued
    variants = [
        ("simclr", "SimCLR, from scratch", {}),
        ("moco", f"MoCo (queue {queue:,}, m {a.moco_momentum}), from scratch", {"use_momentum_encoder": True, "queue_size": queue, "momentum": a.moco_momentum}),
        ("mlm", f"SimCLR, from the MLM encoder ({a.pretrain_steps} steps)", {}),
        ("causal", f"SimCLR, from the causal model ({a.pretrain_steps} steps; causal attention, last-token pooling)", {}),
    ]
    for key, name, extra in variants:
        if key not in only:
            continue
        init = init_runs.get(key)
        run = out / f"gsm8k_{key}"
        t0 = time.time()
        contrastive(
            data=str(pairs_file), out=str(run), fields="question,answer", model=ModelConfig(preset=a.preset, vocab_size=a.vocab, init_from=init[0] if init else None),
            tokenizer=None if init else str(tok_dir), contrastive=ContrastiveConfig(temperature=a.temperature), max_length=a.max_length, val_fraction=0.0,
            overwrite=True, train=train_config(a.steps, a.batch), **extra,
        )
        seconds = time.time() - t0 + (init[1] if init else 0.0)
        rows.append(("GSM8K q->a (1,319)", name, a.steps, retrieval_metrics(scores_of(run, queries, answers, a.max_length)), seconds))

    # ---------------------------------------------------------------- Alpaca EN -> ZH
    if "alpaca" in only:
        en = read_jsonl(DATA / "alpaca" / "alpaca_en.jsonl.gz")
        zh = read_jsonl(DATA / "alpaca" / "alpaca_zh.jsonl")
        order = list(range(min(len(en), len(zh))))
        random.Random(a.seed).shuffle(order)
        held, rest = order[:1000], order[1000:]
        train_rows = [{"en": en[i]["instruction"], "zh": zh[i]["instruction"]} for i in rest[: a.alpaca_train]]
        alpaca_file = write_jsonl(out / "alpaca_train.jsonl", train_rows)
        t0 = time.time()
        run = out / "alpaca_simclr"
        contrastive(data=str(alpaca_file), out=str(run), fields="en,zh", model=model, tokenizer_vocab_size=a.vocab, contrastive=ContrastiveConfig(temperature=a.temperature),
                    max_length=a.max_length, val_fraction=0.0, overwrite=True, train=train_config(a.steps, a.batch))
        seconds = time.time() - t0
        found = retrieval_metrics(scores_of(run, [en[i]["instruction"] for i in held], [zh[i]["instruction"] for i in held], a.max_length))
        n = len(held)
        chance = {"recall@1": 1 / n, "recall@10": 10 / n, "mrr": sum(1 / r for r in range(1, n + 1)) / n}
        rows.append(("Alpaca EN->ZH (1,000)", "chance", "-", chance, 0.0))
        rows.append(("Alpaca EN->ZH (1,000)", "SimCLR, from scratch", a.steps, found, seconds))

    print(f"\nContrastive retrieval, preset {a.preset}, vocab {a.vocab}, batch {a.batch} pairs, lr {a.lr}, tau {a.temperature}, "
          f"max_length {a.max_length}, seed {a.seed}")
    print("| task | method | contrastive steps | recall@1 | recall@10 | MRR | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for task, name, steps, m, sec in rows:
        print(f"| {task} | {name} | {steps} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
