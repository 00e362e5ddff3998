"""MiniGPT as an encoder: the same blocks with bidirectional attention, under a masked-LM head
(BERT, Devlin et al. 2019, arXiv:1810.04805) and an optional next-sentence head; and the
sentence embedder `MiniGPTForEmbedding` (pooling + SimCLR's projection head) that contrastive
training produces.

`MiniGPTForMaskedLM(config)` sets `config.use_bidirectional_attention = True` and always runs
its decoder both ways; a view built over a causal model's decoder (the MLM pretrainer's) gets
a copy of that model's config, so the causal model stays causal. Its decoder
keeps the causal model's parameter names (`model.layers.N.self_attn.q_proj` …), so weights move
between the two (a causal checkpoint can start MLM training, and back). The MLM head is tied to
the input embeddings by default (`tie_word_embeddings`).

Shapes: B = batch, T = tokens, C = hidden_size, V = vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForMaskedLM
from transformers.utils import ModelOutput

from minigpt.model.configuration import MiniGPTConfig
from minigpt.model.modeling import MiniGPTModel, MiniGPTPreTrainedModel
from minigpt.model.options import EMBEDDING_POOLINGS


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

    def add_nsp_head(self) -> None:
        """Give a model built without one a freshly initialised next-sentence head (and set
        `config.use_nsp`, so the saved directory rebuilds it). No-op when it has one."""
        if self.nsp_head is not None:
            return
        self.config.use_nsp = True
        p = self.lm_head.weight
        self.nsp_head = nn.Linear(self.config.hidden_size, 2).to(device=p.device, dtype=p.dtype)
        self._init_weights(self.nsp_head)

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

        h = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, bidirectional=True).last_hidden_state
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




def pool_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """`(B, C)` L2-normalised sentence embeddings from hidden states `(B, T, C)`: the mean over
    real tokens, or the state of the last or of the first real token.

    Raises:
        UserError: unknown `pooling`.
    """
    import torch.nn.functional as F

    from minigpt.errors import UserError
    from minigpt.model.reward_model import pool_hidden

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


@dataclass
class EmbeddingOutput(ModelOutput):
    """`embeddings (B, C)`: pooled and L2-normalised, what retrieval uses; `projections (B, D)`:
    the projection head's output, what the contrastive loss uses; `last_hidden_state (B, T, C)`."""

    embeddings: torch.Tensor | None = None
    projections: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class MiniGPTForEmbedding(MiniGPTPreTrainedModel):
    """A sentence embedder: the decoder stack (`model`, run both ways when this model's config
    says `use_bidirectional_attention`, else causally), a pooling
    and SimCLR's projection head (`projection`), which the contrastive loss is taken after and
    inference leaves out.

    The config carries `embedding_pooling` (mean, last or first) and `projection_dim`. A saved
    directory keeps the decoder's parameter names (`model.layers.N…`), so
    `AutoModel.from_pretrained(dir)` (after `import minigpt`) gives the plain `MiniGPTModel`
    that sentence-transformers' `Transformer` module runs (`minigpt contrastive` writes the
    modules.json that pools and normalises the same way).

    Args:
        config: a `MiniGPTConfig` (the two fields above default to mean and 128).
        backbone: an existing `MiniGPTModel` to train in place (shared, not copied; it keeps its
            weights); default: a new one from `config`.
    """

    def __init__(self, config: MiniGPTConfig, backbone: MiniGPTModel | None = None) -> None:
        from minigpt.errors import UserError

        if getattr(config, "embedding_pooling", None) is None:
            config.embedding_pooling = "mean"
        if getattr(config, "projection_dim", None) is None:
            config.projection_dim = 128
        if config.embedding_pooling not in EMBEDDING_POOLINGS:
            raise UserError(f"unknown embedding pooling {config.embedding_pooling!r}; choose one of {', '.join(EMBEDDING_POOLINGS)}")
        super().__init__(config)
        self.model = backbone if backbone is not None else MiniGPTModel(config)
        self.projection = ProjectionHead(config.hidden_size, config.projection_dim)
        self.post_init()

    @property
    def pooling(self) -> str:
        """How hidden states become one vector: mean, last or first."""
        return self.config.embedding_pooling

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, C)` L2-normalised embeddings (no projection head)."""
        return self(input_ids, attention_mask, project=False).embeddings

    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, project: bool = True, **kwargs: Any
    ) -> EmbeddingOutput:
        """Embeddings of `input_ids (B, T)` (1 in `attention_mask` on real tokens) and, unless
        `project=False`, their projections `(B, projection_dim)`."""
        bidirectional = bool(getattr(self.config, "use_bidirectional_attention", False))
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, bidirectional=bidirectional).last_hidden_state
        e = pool_embeddings(h, attention_mask, self.pooling)
        z = self.projection(e.to(self.projection.net[0].weight.dtype)) if project else None
        return EmbeddingOutput(embeddings=e, projections=z, last_hidden_state=h)


def model_class_for(directory: str | Path) -> type:
    """The MiniGPT class a saved directory holds, from its `config.json`: `MiniGPTForEmbedding`
    (a contrastive run's output), `MiniGPTForMaskedLM` (an encoder) or `MiniGPTForCausalLM`.

    Raises:
        UserError: no readable `config.json`.
    """
    import json

    from minigpt.errors import UserError
    from minigpt.model.modeling import MiniGPTForCausalLM

    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{directory} is not a model directory ({path}: {e})") from None
    if "MiniGPTForEmbedding" in (config.get("architectures") or []):
        return MiniGPTForEmbedding
    return MiniGPTForMaskedLM if config.get("use_bidirectional_attention") else MiniGPTForCausalLM


#: Our pooling names in sentence-transformers' Pooling module (it takes "cls" as position 0,
#: our first real token under right padding, which our tokenizers use).
_ST_POOLING = {"mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken", "first": "pooling_mode_cls_token"}


def write_sentence_transformers_modules(directory: str | Path, pooling: str, hidden_size: int, max_seq_length: int) -> None:
    """Make a saved MiniGPT directory (model + tokenizer) a sentence-transformers model:
    `modules.json` chains its Transformer module (`AutoModel`, the bare `MiniGPTModel`), a
    Pooling module with our `pooling`, and Normalize. Written in the long-standing layout
    (module types `sentence_transformers.models.*`, as most hub embedders have), which
    sentence-transformers 2 to 6 read. `SentenceTransformer(dir)` needs `import minigpt` first
    (the Auto classes learn "minigpt" then). Each file is written atomically.

    Raises:
        UserError: unknown `pooling`.
    """
    import json

    from minigpt.errors import UserError
    from minigpt.train.checkpoint import atomic_write_text

    if pooling not in _ST_POOLING:
        raise UserError(f"unknown embedding pooling {pooling!r}; choose one of {', '.join(EMBEDDING_POOLINGS)}")
    d = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    modes = {"pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
             "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"}
    pool = {"word_embedding_dimension": hidden_size, **{m: m == _ST_POOLING[pooling] for m in sorted(modes)}, "include_prompt": True}
    (d / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (d / "2_Normalize").mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("modules.json", modules),
        ("1_Pooling/config.json", pool),
        ("sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}),
        ("config_sentence_transformers.json", {"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None}),
    ):
        atomic_write_text(d / name, json.dumps(value, indent=2) + "\n")


__all__ += ["EmbeddingOutput", "MiniGPTForEmbedding", "model_class_for", "write_sentence_transformers_modules", "ProjectionHead", "pool_embeddings"]


import minigpt as _minigpt  # noqa: E402

_minigpt._register_if_pending(__name__)  # a registration postponed while this module loaded (see minigpt/__init__)
