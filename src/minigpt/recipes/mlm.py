"""`minigpt mlm`: pretrain an encoder with masked-LM on raw text (BERT, Devlin et al. 2019,
arXiv:1810.04805), through the one training loop, with the same loaders, token cache and
packing as `minigpt pretrain`.

The tokenizer is trained with `<|mask|>` at id 8 (ids 0..7 as every minigpt tokenizer), or an
existing one is used if it has that token. Each packed block is masked BERT-style with a random
source seeded by the run's seed and the block's index (static masks), so `--resume` continues
exactly. The run directory holds a `MiniGPTForMaskedLM` (`AutoModelForMaskedLM` after
`import minigpt`), its tokenizer, checkpoints and metrics (`val_mlm_accuracy`: the held-out
masked-token accuracy).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.recipes.common import refuse_existing_run
from minigpt.model.options import ModelConfig
from minigpt.model.loading import build_model
from minigpt.data.prepare import prepare_corpus
from minigpt.objectives.config import MLM_TRAIN_DEFAULTS, MLMConfig
from minigpt.train.config import TrainConfig

def mlm(
    data: str | list[str] | None = None,
    out: str = "runs/mlm",
    model: ModelConfig = ModelConfig(),
    tokenizer: str | None = None,
    block_size: int = 128,
    mlm: MLMConfig = MLMConfig(),
    text_field: str = "text",
    val_fraction: float = 0.05,
    cache_dir: str | None = None,
    tokenizer_max_chars: int | None = 20_000_000,
    train: TrainConfig = MLM_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """Pretrain an encoder (bidirectional attention) with masked-LM on raw text.

    Args:
        data: text sources as for `minigpt pretrain` (.txt, .jsonl, .parquet, .gz, folders);
            empty: the embedded CPython docs.
        out: run directory (the encoder, its tokenizer, checkpoints, metrics).
        model: architecture (a preset plus overrides); `model.init_from` starts from a saved
            MiniGPT (causal or encoder) with the same tokenizer.
        tokenizer: an existing tokenizer directory with `<|mask|>`; default: train one on
            `data` (with `<|mask|>` at id 8).
        block_size: tokens per packed training block.
        mlm: the masking (`minigpt.objectives.config.MLMConfig`): `--mlm.mask_prob`, the share
            of the tokens selected for prediction (80 % masked, 10 % random, 10 % kept);
            `--mlm.use_nsp`, also train next-sentence prediction: each example is `SEP A SEP B
            SEP`, B the sentences that follow A or, half of the time, a random stretch of
            another document (sentences split at . ! ? 。！？ and line breaks; held-out
            documents from the end).
        text_field: JSONL / parquet field holding the text.
        val_fraction: share of the token stream held out for validation (from the end).
        cache_dir: where tokenized corpora are cached.
        tokenizer_max_chars: characters used to train a new tokenizer.
        train: optimisation settings.
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.
        save_dir: shorthand for `--out`.

    Returns the final training and validation metrics (`val_loss`: nats per masked token,
    `val_mlm_accuracy`, ...).

    Raises:
        UserError: a tokenizer without `<|mask|>` (the message says how to get one), bad
            settings or data.
    """
    from minigpt.data.mlm import MaskedBlocks
    from minigpt.model import count_parameters
    from minigpt.model.encoder import MiniGPTForMaskedLM
    from minigpt.objectives.mlm import MLMObjective
    from minigpt.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, load_tokenizer
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything

    for name, value, source in (("vocab_size", mlm.vocab_size, "the tokenizer"), ("mask_token_id", mlm.mask_token_id, "the tokenizer's <|mask|>"),
                                ("special_token_ids", mlm.special_token_ids, "the tokenizer"),
                                ("learning_rate", mlm.learning_rate, "--train.lr")):
        if value:
            raise UserError(f"--mlm.{name} is for the Python API; the command takes it from {source}")
    mask_prob, use_nsp = mlm.mask_prob, mlm.use_nsp
    data = [data] if isinstance(data, str) else list(data or [])
    out_dir = Path(save_dir or out)
    if resume and tokenizer is None and (out_dir / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = str(out_dir / "tokenizer")
    if tokenizer is not None and MASK_TOKEN not in load_tokenizer(tokenizer).get_vocab():
        raise UserError(
            f"tokenizer {tokenizer} has no {MASK_TOKEN} token, which masked-LM needs; leave out --tokenizer to train one "
            f"with it (at id 8), or add it in Python: tok.add_special_tokens({{'mask_token': '{MASK_TOKEN}'}}); "
            "tok.save_pretrained(dir), and start from a model whose vocab_size covers the new id"
        )
    rank, _, _ = init_distributed(pick_device(train.device))
    if rank == 0:
        refuse_existing_run(out_dir, resume, overwrite, inputs={"data": data, "tokenizer": tokenizer})
        out_dir.mkdir(parents=True, exist_ok=True)
    if use_nsp:
        tok = _prepare_tokenizer_only(data, tokenizer, model.vocab_size or 6400, text_field, out_dir, tokenizer_max_chars, val_fraction, rank)
    else:
        tok, train_blocks, val_blocks = prepare_corpus(
            data, tokenizer, model.vocab_size or 6400, text_field, out_dir, tokenizer_max_chars, val_fraction, block_size, cache_dir, rank,
            mask_token=True,
        )
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    seed_everything(train.seed)
    net = build_model(model, MiniGPTForMaskedLM, tok, tokenizer or out_dir / "tokenizer", block_size)
    specials = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] + [mask_id]
    say = print if rank == 0 else (lambda *a, **k: None)
    if use_nsp:
        net.add_nsp_head()
        train_ds, val_ds = _sentence_pair_data(data, tok, text_field, val_fraction, block_size, mask_id, mask_prob, specials, train.seed)
        shown = f"{len(train_ds)} train / {len(val_ds) if val_ds else 0} val sentence pairs of <= {block_size} tokens"
    else:
        train_ds = MaskedBlocks(train_blocks, mask_id, len(tok), mask_prob, specials, train.seed)
        val_ds = MaskedBlocks(val_blocks, mask_id, len(tok), mask_prob, specials, train.seed + 1) if val_blocks is not None else None
        shown = f"{len(train_ds)} train / {len(val_ds) if val_ds else 0} val blocks of {block_size} tokens"
    say(f"encoder: {count_parameters(net) / 1e6:.2f} M parameters ({model.preset}); data: {shown}, {mask_prob:.0%} masked")
    run_info = {
        "stage": "mlm",
        "data": data,
        "model": dataclasses.asdict(model),
        "block_size": block_size,
        "mlm": dataclasses.asdict(mlm),
        "text_field": text_field,
        "val_fraction": val_fraction,
        "train": dataclasses.asdict(train),
    }
    trainer = Trainer(net, MLMObjective(), train_ds, train, out_dir, val_dataset=val_ds, save_with_model=tok, run_info=run_info)
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    if "val_mlm_accuracy" in metrics:
        nsp = f", next-sentence accuracy {metrics['val_nsp_accuracy']:.1%}" if "val_nsp_accuracy" in metrics else ""
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; held-out masked-token accuracy {metrics['val_mlm_accuracy']:.1%}{nsp}, loss {metrics['val_loss']:.4f} nats")
    say(f"encoder saved to {out_dir} (AutoModelForMaskedLM.from_pretrained works after `import minigpt`)")
    return metrics


def _prepare_tokenizer_only(data: list[str], tokenizer, vocab_size: int, text_field: str, out_dir: Path, max_chars, val_fraction: float, rank: int):
    """The run's tokenizer (with `<|mask|>`) without the packed token cache, which next-sentence
    pairs do not use (they need sentence boundaries); rank 0 trains it, the others read it."""
    from minigpt.data.prepare import prepare_tokenizer, resolve_sources
    from minigpt.tokenizer import load_tokenizer
    from minigpt.train.distributed import barrier

    if rank == 0:
        tok = prepare_tokenizer(resolve_sources(data), tokenizer, vocab_size, text_field, out_dir, max_chars, val_fraction, mask_token=True)
    barrier()
    if rank != 0:
        tok = load_tokenizer(tokenizer or out_dir / "tokenizer")
    return tok


def _sentence_pair_data(data: list[str], tok, text_field: str, val_fraction: float, block_size: int, mask_id: int, mask_prob: float, specials, seed: int):
    """Next-sentence training and held-out datasets: documents split into sentences, the last
    `val_fraction` of the documents held out, pairs drawn with `seed` (held out: `seed + 1`)."""
    from minigpt.data.mlm import SentencePairBlocks, build_sentence_pairs, split_sentences
    from minigpt.data.prepare import iter_corpus, resolve_sources

    docs = [split_sentences(d) for d in iter_corpus(resolve_sources(data), text_field)]
    flat = [s for d in docs for s in d]
    ids = []
    for start in range(0, len(flat), 4096):
        ids += tok(flat[start : start + 4096])["input_ids"]
    tokenized, k = [], 0
    for d in docs:
        tokenized.append(ids[k : k + len(d)])
        k += len(d)
    n_val = int(round(len(tokenized) * val_fraction)) if val_fraction > 0 else 0
    if n_val and len(tokenized) - n_val < 2:
        raise UserError(f"--mlm.use_nsp: {len(tokenized)} documents are too few to hold {val_fraction:.0%} out; lower --val_fraction")
    train_docs, val_docs = tokenized[: len(tokenized) - n_val], tokenized[len(tokenized) - n_val :]
    make = lambda pairs, s: SentencePairBlocks(pairs, block_size, tok.eos_token_id, tok.pad_token_id, mask_id, len(tok), mask_prob, specials, s)  # noqa: E731
    train_ds = make(build_sentence_pairs(train_docs, block_size - 3, seed), seed)
    val_ds = make(build_sentence_pairs(val_docs, block_size - 3, seed + 1), seed + 1) if len(val_docs) >= 2 else None
    return train_ds, val_ds


__all__ = ["mlm"]
