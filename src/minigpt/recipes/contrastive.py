"""`minigpt contrastive`: train a sentence embedder with a contrastive loss, through the one
training loop: InfoNCE with in-batch negatives (SimCLR, Chen et al. 2020, arXiv:2002.05709), or
MoCo's momentum encoder and queue (He et al. 2020, arXiv:1911.05722).

Pairs come from records with two text fields (`--fields question,answer`: a question and its
answer, a sentence and its translation), or, without `--fields`, from two augmented views of
each text (random deletion, swaps and masking of tokens). The run directory holds a
`MiniGPTForEmbedding` with its tokenizer, checkpoints, metrics, and the files that make it a
sentence-transformers model (`SentenceTransformer(OUT)` after `import minigpt`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from minigpt.errors import UserError
from minigpt.recipes.common import check_options, refuse_existing_run
from minigpt.model.options import ModelConfig
from minigpt.objectives.config import CONTRASTIVE_TRAIN_DEFAULTS, ContrastiveConfig
from minigpt.train.config import TrainConfig



def _split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split (a file sorted by topic still gives a fair held-out sample)."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(items) * val_fraction))
    if val_fraction > 0 and len(items) - n_val < 2:
        raise UserError(f"only {len(items)} pairs: too few to hold {val_fraction:.0%} out and still train; lower --val_fraction")
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def _encode(tok, texts: list[str], max_length: int) -> list[list[int]]:
    rows: list[list[int]] = []
    for start in range(0, len(texts), 1024):
        rows += tok(texts[start : start + 1024], truncation=True, max_length=max_length)["input_ids"]
    return rows


def _build_embedder(model: ModelConfig, tok, tokenizer_dir: str | Path, pooling: str | None, projection_dim: int, bidirectional: bool | None, max_length: int):
    """A `MiniGPTForEmbedding`: new, or around the decoder of `model.init_from` (an embedder,
    an encoder from `minigpt mlm`, or a causal model)."""
    from minigpt.model.encoder import MiniGPTForEmbedding, model_class_for

    if model.init_from:
        from minigpt.model.checks import check_tokenizer_fits
        from minigpt.model.loading import load_model_dir

        cls = model_class_for(model.init_from)
        net, _ = load_model_dir(model.init_from, cls, "--model.init_from", tokenizer=False)
        check_tokenizer_fits(tok, net.config, tokenizer_dir, model.init_from)
        config = net.config
        if bidirectional is not None:
            config.use_bidirectional_attention = bidirectional
        default_pooling = config.embedding_pooling if cls is MiniGPTForEmbedding else ("mean" if config.use_bidirectional_attention else "last")
        config.embedding_pooling = pooling or default_pooling
        if cls is MiniGPTForEmbedding:
            if config.projection_dim != projection_dim:
                raise UserError(f"--contrastive.projection_dim {projection_dim} differs from the one {model.init_from} was trained with ({config.projection_dim})")
            embedder = net
        else:
            config.projection_dim = projection_dim
            embedder = MiniGPTForEmbedding(config, backbone=net.model)
    else:
        special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
        config = model.build_config(len(tok), special)
        config.use_bidirectional_attention = True if bidirectional is None else bidirectional
        config.embedding_pooling = pooling or ("mean" if config.use_bidirectional_attention else "last")
        config.projection_dim = projection_dim
        embedder = MiniGPTForEmbedding(config)
    if max_length > embedder.config.max_position_embeddings:
        raise UserError(f"--max_length {max_length} exceeds the model's context (max_position_embeddings={embedder.config.max_position_embeddings})")
    return embedder


def embed_texts(model, tok, texts: list[str], max_length: int, batch_size: int = 64):
    """`(N, C)` float32 L2-normalised embeddings of `texts` with a `MiniGPTForEmbedding` (eval
    mode, no gradient, batches padded on the right)."""
    import torch

    was = model.training
    model.eval()
    rows = []
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tok(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                rows.append(model.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu())
    finally:
        model.train(was)
    return torch.cat(rows)


def contrastive(
    data: str,
    out: str = "runs/contrastive",
    fields: str | None = None,
    text_field: str = "text",
    model: ModelConfig = ModelConfig(),
    tokenizer: str | None = None,
    bidirectional: bool | None = None,
    contrastive: ContrastiveConfig = ContrastiveConfig(),
    max_length: int = 128,
    mask_prob: float = 0.1,
    delete_prob: float = 0.1,
    swap_prob: float = 0.05,
    val_fraction: float = 0.05,
    tokenizer_vocab_size: int = 6400,
    train: TrainConfig = CONTRASTIVE_TRAIN_DEFAULTS,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a sentence embedder contrastively.

    Args:
        data: a JSONL / JSON / Parquet file or folder of records (or, for augmented views, a
            `.txt` file of one text per line).
        out: run directory (the embedder, its tokenizer, checkpoints, metrics,
            sentence-transformers files).
        fields: two record fields whose texts form a positive pair, comma-separated
            (`question,answer`); default: two augmented views of `text_field`.
        text_field: the field holding the text for augmented views.
        model: architecture (a preset plus overrides), or `model.init_from` a saved MiniGPT: an
            encoder from `minigpt mlm`, a causal model, or an embedder to train further.
        tokenizer: a tokenizer directory (default: the init_from model's, else one trained on
            the training texts, with `<|mask|>`).
        bidirectional: attend both ways (default: true for a new model, as saved for init_from).
        contrastive: the loss (`--contrastive.temperature 0.05 --contrastive.use_momentum_encoder
            ...`; see `minigpt.objectives.config.ContrastiveConfig`): pooling (default: mean for
            an encoder, last for a causal model), projection_dim, temperature τ,
            use_momentum_encoder (MoCo: keys from an EMA copy of the model, negatives from a
            queue), queue_size (a multiple of 2 x train.batch_size x train.grad_accum: both
            sides of each pair are queued), momentum. The learning rate is `--train.lr`.
        max_length: texts are truncated to this many tokens.
        mask_prob: augmented views: share of tokens replaced by `<|mask|>`.
        delete_prob: augmented views: share of tokens deleted.
        swap_prob: augmented views: share of tokens swapped with another.
        val_fraction: share of the pairs held out (a seeded random sample): validation loss,
            and at the end retrieval among all of them (recall@1, recall@10, MRR).
        tokenizer_vocab_size: size of a tokenizer trained for this run.
        train: optimisation settings (train.batch_size pairs per micro-batch: the negatives).
        resume: continue from the newest checkpoint in `out`.
        overwrite: discard a run already in `out`.

    Returns:
        Final metrics: `loss`, `accuracy` (in-batch), `val_loss`, `val_accuracy`, and on the
        held-out pairs `val_recall@1`, `val_recall@10`, `val_mrr`.

    Raises:
        UserError: bad settings (a batch of fewer than 2 pairs without MoCo, a queue_size that is
            not a multiple of the keys queued per update), no usable pair, a model that does not fit.
    """
    from minigpt.data.pairs import PairDataset, augmented_views, pad_pairs, read_text_pairs
    from minigpt.model import count_parameters
    from minigpt.model.encoder import write_sentence_transformers_modules
    from minigpt.objectives.contrastive import ContrastiveObjective
    from minigpt.evaluation.retrieval import retrieval_metrics
    from minigpt.tokenizer import MASK_TOKEN, load_tokenizer, train_tokenizer
    from minigpt.train.distributed import init_distributed, pick_device
    from minigpt.train.loop import Trainer, seed_everything

    if contrastive.learning_rate is not None:
        raise UserError("--contrastive.learning_rate is the Python API's spelling; on the command line the learning rate is --train.lr")
    c = contrastive
    pooling, projection_dim, temperature = c.pooling, c.projection_dim, c.temperature
    use_momentum_encoder, queue_size, momentum = c.use_momentum_encoder, c.queue_size, c.momentum
    pair_fields = [f.strip() for f in fields.split(",")] if fields else None
    check_options(
        fields=(fields, pair_fields is None or (len(pair_fields) == 2 and all(pair_fields)), "two field names, comma-separated (question,answer)"),
        max_length=(max_length, max_length >= 1, ">= 1"),
        val_fraction=(val_fraction, 0 <= val_fraction < 1, "in [0, 1)"),
        mask_prob=(mask_prob, 0 <= mask_prob < 1, "in [0, 1)"),
        delete_prob=(delete_prob, 0 <= delete_prob < 1, "in [0, 1)"),
        swap_prob=(swap_prob, 0 <= swap_prob <= 1, "in [0, 1]"),
    )
    if not use_momentum_encoder and train.batch_size < 2:
        raise UserError("train.batch_size must be at least 2 for contrastive training: the other pairs of a batch are the negatives "
                        "(or use --contrastive.use_momentum_encoder, whose negatives come from a queue)")
    per_step = 2 * train.batch_size * train.grad_accum  # keys queued per update: both sides of every pair
    if use_momentum_encoder and (queue_size < per_step or queue_size % per_step):
        lower = max(per_step, queue_size // per_step * per_step)
        raise UserError(f"--contrastive.queue_size {queue_size} is not a multiple of {per_step}, the keys queued per update (both sides of "
                        f"train.batch_size x train.grad_accum pairs): the queue would hold part of an update; use {lower} or {lower + per_step}")
    out_dir = Path(out)
    rank, _, _ = init_distributed(pick_device(train.device))
    if rank == 0:
        refuse_existing_run(out_dir, resume, overwrite, inputs={"data": data, "tokenizer": tokenizer})
        out_dir.mkdir(parents=True, exist_ok=True)
    say = print if rank == 0 else (lambda *a, **k: None)

    # Texts and the held-out split (before any tokenizer sees them).
    if pair_fields:
        pairs, report = read_text_pairs(data, pair_fields)
        say(f"{data}: {report.describe()}")
    else:
        from minigpt.data.loaders import iter_records

        texts = [r[text_field] for _, r in iter_records(data, strings_as=text_field) if isinstance(r.get(text_field), str) and r[text_field].strip()]
        if not texts:
            raise UserError(f"{data}: no text in field {text_field!r}")
        pairs = [(t, t) for t in texts]
    train_pairs, val_pairs = _split(pairs, val_fraction, train.seed)

    # Tokenizer: given, the init model's, the run's own on resume, or a new one (rank 0 trains it).
    from minigpt.train.distributed import barrier

    tok_dir = tokenizer or (model.init_from if model.init_from else None)
    if tok_dir is None and (resume or rank != 0) and (out_dir / "tokenizer" / "tokenizer.json").is_file():
        tok_dir = str(out_dir / "tokenizer")
    if tok_dir is None and rank == 0:
        seen = sorted({t for pair in train_pairs for t in pair})
        tok = train_tokenizer(iter(seen), vocab_size=tokenizer_vocab_size, out_dir=out_dir / "tokenizer", mask_token=True)
        say(f"trained a {len(tok)}-token tokenizer on the training texts -> {out_dir / 'tokenizer'}")
    barrier()
    if tok_dir is not None or rank != 0:
        tok = load_tokenizer(tok_dir or out_dir / "tokenizer")
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN) if MASK_TOKEN in tok.get_vocab() else None

    def tokenized(split: list[tuple[str, str]], seed: int) -> tuple[list, int]:
        if pair_fields:
            return list(zip(_encode(tok, [a for a, _ in split], max_length), _encode(tok, [b for _, b in split], max_length))), 0
        views, same = augmented_views(_encode(tok, [a for a, _ in split], max_length), seed, mask_id, mask_prob, delete_prob, swap_prob, tok.pad_token_id)
        return [(a.tolist(), b.tolist()) for a, b in views], same

    train_tok, same = tokenized(train_pairs, train.seed)
    val_tok, same_val = tokenized(val_pairs, train.seed + 1)
    if not pair_fields:
        say(f"{data}: {len(texts)} texts, two augmented views each; skipped {same + same_val} whose views came out identical"
            + ("" if mask_id is not None else f" (the tokenizer has no {MASK_TOKEN}: views use deletion and swaps only)"))
    if len(train_tok) < 2:
        raise UserError(f"{data}: fewer than 2 training pairs left")

    seed_everything(train.seed)
    net = _build_embedder(model, tok, tok_dir or out_dir / "tokenizer", pooling, projection_dim, bidirectional, max_length)
    objective = (ContrastiveObjective.moco(net, temperature, queue_size, momentum) if use_momentum_encoder
                 else ContrastiveObjective(temperature))
    say(
        f"embedder: {count_parameters(net) / 1e6:.2f} M parameters, {'bidirectional' if net.config.use_bidirectional_attention else 'causal'} "
        f"attention, {net.pooling} pooling, {'MoCo' if use_momentum_encoder else 'SimCLR'}; {len(train_tok)} train / {len(val_tok)} held-out pairs"
    )
    run_info = {
        "stage": "contrastive", "data": data, "fields": pair_fields, "text_field": text_field,
        "model": dataclasses.asdict(model), "pooling": net.pooling, "bidirectional": net.config.use_bidirectional_attention,
        "projection_dim": projection_dim, "temperature": temperature, "use_momentum_encoder": use_momentum_encoder,
        "queue_size": queue_size, "momentum": momentum, "max_length": max_length,
        "augment": None if pair_fields else {"mask_prob": mask_prob, "delete_prob": delete_prob, "swap_prob": swap_prob},
        "val_fraction": val_fraction, "train": dataclasses.asdict(train),
    }
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    trainer = Trainer(
        net, objective, PairDataset(train_tok), train, out_dir, val_dataset=PairDataset(val_tok) if val_tok else None,
        collate_fn=lambda items: pad_pairs(items, pad_id), save_with_model=tok, run_info=run_info,
    )
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    if rank == 0:
        if val_pairs and pair_fields:
            q = embed_texts(net, tok, [a for a, _ in val_pairs], max_length)
            d = embed_texts(net, tok, [b for _, b in val_pairs], max_length)
            found = retrieval_metrics(q @ d.T)
            metrics.update({f"val_{k}": v for k, v in found.items()})
            say(f"held-out retrieval among {len(val_pairs)} pairs: recall@1 {found['recall@1']:.3f}, recall@10 {found['recall@10']:.3f}, MRR {found['mrr']:.3f}")
        write_sentence_transformers_modules(out_dir, net.pooling, net.config.hidden_size, max_length)
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; embedder saved to {out_dir} "
            "(minigpt embed --model OUT; SentenceTransformer(OUT) after `import minigpt`)")
    return metrics


__all__ = ["contrastive", "embed_texts"]
