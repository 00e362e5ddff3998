"""`minigpt embed`: sentence embeddings of texts from a saved MiniGPT (an encoder from `minigpt
mlm`, or a causal model), written as a `.npy` array."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from minigpt.errors import UserError


def read_texts(data: str, text_field: str = "text") -> list[str]:
    """One text per non-empty line of a `.txt` file; otherwise the documents of `data` as every
    loader reads them (`text_field` of JSONL / Parquet records)."""
    from minigpt.data.loaders import iter_documents

    path = Path(data)
    if path.suffix == ".txt":
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return list(iter_documents(data, text_field=text_field))


def embed(
    model: str,
    data: str,
    out: str = "embeddings.npy",
    text_field: str = "text",
    pooling: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
) -> dict[str, Any]:
    """Embed texts with a saved model: one L2-normalised vector per text, in input order.

    Args:
        model: a model directory with its tokenizer (`minigpt mlm` output, or any MiniGPT).
        data: a `.txt` file (one text per line) or a JSONL / Parquet file of records.
        out: the `.npy` file written: float32 `(N, hidden_size)` (atomically: temp file +
            rename).
        text_field: the record field holding the text.
        pooling: mean, last or first real token (default: an embedder's own, from `minigpt
            contrastive`; else mean; a causal model: use last or mean).
        max_length: texts are truncated to this many tokens (default: the `max_seq_length` a
            `minigpt contrastive` run trained with, as sentence-transformers reads it; else 256).
        batch_size: texts per forward pass.
        device: auto, cpu, cuda or mps.

    Returns:
        `{"count", "dim", "out"}`.

    Raises:
        UserError: not a model directory, no text, an unknown pooling, or an --out that is a
            folder, an input, or unwritable (checked before any work).
    """
    import numpy as np
    import torch

    from minigpt.model.encoder import MiniGPTForEmbedding, model_class_for, pool_embeddings
    from minigpt.model.options import EMBEDDING_POOLINGS
    from minigpt.model.loading import load_model_dir
    from minigpt.train.distributed import pick_device

    from minigpt.errors import check_output_file

    check_output_file(out, "--out", {"model": model, "data": data})
    if pooling is not None and pooling not in EMBEDDING_POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(EMBEDDING_POOLINGS)}, not {pooling!r}")
    cls = model_class_for(model)
    net, tok = load_model_dir(model, cls, "--model")
    pooling = pooling or (net.pooling if cls is MiniGPTForEmbedding else "mean")
    if max_length is None:
        st_config = Path(model) / "sentence_bert_config.json"
        max_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", 256) if st_config.is_file() else 256
    backbone = net.model.to(pick_device(device)).eval()
    texts = read_texts(data, text_field)
    if not texts:
        raise UserError(f"{data}: no text to embed")
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            ids = enc["input_ids"].to(backbone.device)
            mask = enc["attention_mask"].to(backbone.device)
            h = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            rows.append(pool_embeddings(h, mask, pooling).cpu())
    vectors = torch.cat(rows).numpy().astype(np.float32)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, vectors)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{len(texts)} embeddings of width {vectors.shape[1]} ({pooling} pooling) -> {target}")
    return {"count": len(texts), "dim": int(vectors.shape[1]), "out": str(target)}


__all__ = ["embed", "read_texts"]
