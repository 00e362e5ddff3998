"""`minigpt quickstart`: the whole path on an embedded corpus that needs no download.

CPython's own documentation (pydoc topics plus the standard library's docstrings, read from
source with `ast`) -> a byte-level BPE tokenizer -> a pretrained `tiny` model -> samples.
Sized to finish in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from minigpt.recipes.pretrain import ModelConfig, pretrain
from minigpt.train.config import TrainConfig

SAMPLE_PROMPTS = ["Return the", "The with statement", "class Queue"]


def quickstart(
    out: str = "runs/quickstart",
    preset: str = "tiny",
    train_seconds: float = 300.0,
    vocab_size: int = 6400,
    block_size: int = 256,
    batch_size: int = 16,
    lr: float = 3e-3,
    device: str = "auto",
    seed: int = 1337,
) -> dict:
    """Tokenizer -> pretraining -> samples on the embedded CPython documentation corpus.

    Args:
        out: run directory (replaced if it exists; it ends up loadable with
            `AutoModelForCausalLM.from_pretrained`).
        preset: model size (tiny fits the 10-minute CPU budget).
        train_seconds: wall-clock budget of the pretraining steps; the step count and
            learning-rate schedule are fitted to it after the first steps.
        vocab_size: tokenizer vocabulary.
        block_size: tokens per training sequence.
        batch_size: sequences per step.
        lr: peak learning rate.
        device: auto, cpu, cuda or mps.
        seed: random seed.

    Returns the pretraining metrics plus `wall_seconds`.
    """
    from minigpt.data.corpus import python_docs_corpus

    t0 = time.time()
    docs = python_docs_corpus()
    chars = sum(len(d) for d in docs)
    print(f"[1/3] corpus: {len(docs)} documents, {chars / 1e6:.2f} M characters of CPython documentation")
    print("[2/3] tokenizer + pretraining")
    metrics = pretrain(
        data=None,
        out=out,
        model=ModelConfig(preset=preset, vocab_size=vocab_size),
        block_size=block_size,
        train=TrainConfig(
            max_steps=0,
            max_time=train_seconds,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=50,
            weight_decay=0.1,
            eval_interval=250,
            eval_batches=20,
            save_interval=500,
            keep_last=1,
            device=device,
            seed=seed,
        ),
        overwrite=True,
    )
    print("[3/3] samples (temperature 0.8, top-k 50)")
    from minigpt.recipes.generate import load_model_and_tokenizer, sample_texts

    net, tok = load_model_and_tokenizer(out, device=device)
    for prompt, text in zip(SAMPLE_PROMPTS, sample_texts(net, tok, SAMPLE_PROMPTS, max_new_tokens=60, temperature=0.8, top_k=50, seed=seed)):
        print(f"--- {prompt!r}\n{prompt}{text}")
    metrics["wall_seconds"] = time.time() - t0
    print(
        f"\nquickstart finished in {metrics['wall_seconds']:.0f} s: val {metrics.get('val_bpb', float('nan')):.3f} bits per byte "
        f"after {metrics['steps']} steps. Model + tokenizer in {Path(out).resolve()}"
    )
    print(f"next: minigpt generate --model {out} --prompt 'def '")
    return metrics
