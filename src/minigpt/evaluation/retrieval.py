"""Retrieval metrics for paired data: query i's one relevant document is document i."""

from __future__ import annotations

from typing import Sequence

import torch

from minigpt.errors import UserError


def retrieval_metrics(scores: torch.Tensor, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k and mean reciprocal rank (Voorhees 1999) from a score matrix.

    Args:
        scores: `(N, N)`: `scores[i, j]` is how well document j matches query i (cosine
            similarity, BM25 …); the relevant document of query i is j = i.
        ks: the cut-offs k of recall@k.

    Returns:
        `{"recall@k": share of queries whose document ranks in the top k, ..., "mrr": mean of
        1 / rank}`, where rank = 1 + the number of documents scored strictly higher than the
        relevant one (a tie does not count against it).

    Raises:
        UserError: not a square matrix.
    """
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] == 0:
        raise UserError(f"retrieval_metrics needs a non-empty square (queries, documents) score matrix, got {tuple(scores.shape)}")
    scores = scores.double()
    own = scores.diagonal()[:, None]
    rank = 1 + (scores > own).sum(dim=1)
    out = {f"recall@{k}": float((rank <= k).double().mean()) for k in ks}
    out["mrr"] = float((1.0 / rank.double()).mean())
    return out


__all__ = ["retrieval_metrics"]
