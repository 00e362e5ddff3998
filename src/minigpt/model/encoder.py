"""MiniGPT as an encoder: the same blocks with bidirectional attention, under a masked-LM head
(BERT, Devlin et al. 2019, arXiv:1810.04805) and an optional next-sentence head.

`MiniGPTForMaskedLM(config)` forces `config.use_bidirectional_attention = True`. Its decoder
keeps the causal model's parameter names (`model.layers.N.self_attn.q_proj` …), so weights move
between the two (a causal checkpoint can start MLM training, and back). The MLM head is tied to
the input embeddings by default (`tie_word_embeddings`).

Shapes: B = batch, T = tokens, C = hidden_size, V = vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForMaskedLM
from transformers.utils import ModelOutput

from minigpt.model.configuration import MiniGPTConfig
from minigpt.model.modeling import MiniGPTModel, MiniGPTPreTrainedModel


@dataclass
class MaskedLMOutput(ModelOutput):
    """`logits (B, T, V)`; `nsp_logits (B, 2)` when the model has a next-sentence head;
    `last_hidden_state (B, T, C)`; `loss`: the mean masked-token cross-entropy (plus the mean
    NSP loss) when labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class MiniGPTForMaskedLM(MiniGPTPreTrainedModel):
    """The encoder with its masked-LM head (and, with `config.use_nsp`, a next-sentence head on
    the first position's hidden state).

    `AutoModelForMaskedLM.from_pretrained(dir)` loads it once `minigpt.model.encoder` is
    imported.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniGPTConfig) -> None:
        config.use_bidirectional_attention = True
        super().__init__(config)
        self.model = MiniGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.nsp_head = nn.Linear(config.hidden_size, 2) if getattr(config, "use_nsp", False) else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        next_sentence_label: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        """Logits of every position and, given `labels` (`(B, T)`, −100 where not masked), the
        mean cross-entropy over the masked positions (nats, fp32); with `next_sentence_label`
        (`(B,)`, 0 = B follows A) the NSP loss is added."""
        from minigpt.losses.mlm import mlm_loss, nsp_loss

        h = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = self.lm_head(h)
        nsp_logits = self.nsp_head(h[:, 0]) if self.nsp_head is not None else None
        loss = None
        if labels is not None:
            total, n, _ = mlm_loss(logits, labels)
            loss = total / max(n, 1)
            if next_sentence_label is not None and nsp_logits is not None:
                nsp_total, _ = nsp_loss(nsp_logits, next_sentence_label)
                loss = loss + nsp_total / next_sentence_label.numel()
        return MaskedLMOutput(loss=loss, logits=logits, nsp_logits=nsp_logits, last_hidden_state=h)


AutoModelForMaskedLM.register(MiniGPTConfig, MiniGPTForMaskedLM, exist_ok=True)

__all__ = ["MaskedLMOutput", "MiniGPTForMaskedLM"]


#: How an embedder turns `(B, T, C)` hidden states into one vector per row.
EMBEDDING_POOLINGS = ("mean", "last", "first")


def pool_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """`(B, C)` L2-normalised sentence embeddings from hidden states `(B, T, C)`: the mean over
    real tokens, or the state of the last or of the first real token.

    Raises:
        UserError: unknown `pooling`.
    """
    import torch.nn.functional as F

    from minigpt.errors import UserError
    from minigpt.model.reward import pool_hidden

    if pooling not in EMBEDDING_POOLINGS:
        raise UserError(f"unknown embedding pooling {pooling!r}; choose one of {', '.join(EMBEDDING_POOLINGS)}")
    if pooling == "first":
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if attention_mask is None else attention_mask.bool()
        first = mask.float().argmax(dim=1)  # index of the first real token of each row
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    else:
        pooled = pool_hidden(hidden, attention_mask, pooling)
    return F.normalize(pooled.float(), dim=-1)


class ProjectionHead(nn.Module):
    """SimCLR's projection head `g(h) = W2 · ReLU(W1 · h)` from the width C to `projection_dim`
    (Chen et al. 2020 §2.1): the contrastive loss is taken after it, the embeddings used at
    inference before it."""

    def __init__(self, hidden_size: int, projection_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, projection_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """`(B, C) -> (B, projection_dim)`."""
        return self.net(h)


class ContrastiveEncoder(nn.Module):
    """An encoder's decoder stack, a pooling and a projection head: `forward(input_ids,
    attention_mask) -> (B, projection_dim)` for the loss; `embed(...) -> (B, C)` (normalised,
    without the head) for inference.

    Args:
        backbone: a `MiniGPTModel` (in encoder mode, or causal with `last` pooling).
        projection_dim: width of the projection head's output.
        pooling: mean, last or first.
    """

    def __init__(self, backbone: MiniGPTModel, projection_dim: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in EMBEDDING_POOLINGS:
            from minigpt.errors import UserError

            raise UserError(f"unknown embedding pooling {pooling!r}; choose one of {', '.join(EMBEDDING_POOLINGS)}")
        self.backbone = backbone
        self.pooling = pooling
        self.projection = ProjectionHead(backbone.config.hidden_size, projection_dim)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, C)` L2-normalised embeddings (no projection head)."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return pool_embeddings(h, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, projection_dim)` projections of the pooled embeddings."""
        e = self.embed(input_ids, attention_mask)
        return self.projection(e.to(self.projection.net[0].weight.dtype))


__all__ += ["EMBEDDING_POOLINGS", "ContrastiveEncoder", "ProjectionHead", "pool_embeddings"]
