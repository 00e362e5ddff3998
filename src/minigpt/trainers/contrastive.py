"""Contrastive pretraining as a Python API: `ContrastiveConfig`, `create_contrastive_pretrainer`,
`train_step(x1, x2)` (SimCLR, Chen et al. 2020, arXiv:2002.05709; MoCo, He et al. 2020,
arXiv:1911.05722).

The encoder's pooled, normalised embedding goes through a 2-layer projection head; the loss is
InfoNCE with in-batch negatives, or, with `use_momentum_encoder`, MoCo's loss against a queue
of keys from an EMA copy of the encoder. One update runs through the training loop's optimizer
step (`minigpt.train.step.OptimizerStep`).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from minigpt.errors import UserError
from minigpt.model.encoder import MiniGPTForEmbedding, MiniGPTForMaskedLM
from minigpt.model.modeling import MiniGPTForCausalLM, MiniGPTModel
from minigpt.objectives.contrastive import ContrastiveObjective
from minigpt.objectives.config import CONTRASTIVE_TRAIN_DEFAULTS, ContrastiveConfig, with_learning_rate
from minigpt.train.config import TrainConfig
from minigpt.train.statistics import ReportsStatistics


class ContrastivePretrainer(ReportsStatistics):
    """Contrastive updates of an encoder, one `train_step` per batch of pairs.

    Args:
        encoder: a `MiniGPTModel`, `MiniGPTForCausalLM` or `MiniGPTForMaskedLM`; its decoder
            stack is trained (shared, not copied). `self.model` is the `MiniGPTForEmbedding`
            around it, with its own copy of the encoder's config (which gains
            `embedding_pooling` and `projection_dim`; the caller's config is not changed). A
            causal model is run causally (its last token has seen the whole text: use
            `pooling="last"`), an MLM encoder both ways.
        hidden_size: the encoder's width (checked).
        config: `ContrastiveConfig` or a dict of its fields.
        train: optimisation (`TrainConfig` or a dict of its fields; default
            `CONTRASTIVE_TRAIN_DEFAULTS`, as `minigpt contrastive`): `lr` (or
            `config.learning_rate`), `weight_decay`, betas, `grad_clip`, `precision`. The
            learning rate stays constant.

    Raises:
        UserError: another kind of model, or a `hidden_size` that is not the model's.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        hidden_size: int,
        config: ContrastiveConfig | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from minigpt.trainers.base import as_options, optimizer_step_for

        config = ContrastiveConfig() if config is None else config
        self.config = c = config if isinstance(config, ContrastiveConfig) else ContrastiveConfig.from_dict(config)
        self.train = with_learning_rate(as_options(train, TrainConfig, CONTRASTIVE_TRAIN_DEFAULTS, "train"), c.learning_rate)
        if isinstance(encoder, (MiniGPTForCausalLM, MiniGPTForMaskedLM)):
            backbone = encoder.model
        elif isinstance(encoder, MiniGPTModel):
            backbone = encoder
        else:
            raise UserError(f"create_contrastive_pretrainer needs a MiniGPT model, not {type(encoder).__name__}")
        if hidden_size != backbone.config.hidden_size:
            raise UserError(f"hidden_size {hidden_size} is not the model's ({backbone.config.hidden_size})")
        view = copy.deepcopy(encoder.config)  # the embedder's own; it attends as `encoder` does
        view.embedding_pooling = c.pooling or ("mean" if getattr(view, "use_bidirectional_attention", False) else "last")
        view.projection_dim = c.projection_dim
        model = MiniGPTForEmbedding(view, backbone=backbone)
        param = next(backbone.parameters())
        self.model = model.to(device=param.device, dtype=param.dtype)
        self.pad_token_id = backbone.config.pad_token_id if backbone.config.pad_token_id is not None else 0
        if c.use_momentum_encoder:
            self.objective = ContrastiveObjective.moco(self.model, c.temperature, c.queue_size, c.momentum)
        else:
            self.objective = ContrastiveObjective(c.temperature)
        self.optimizer_step = optimizer_step_for(self.model, self.objective, self.train)
        self.optimizer = self.optimizer_step.optimizer

    def _mask(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return (ids != self.pad_token_id).long() if mask is None else mask

    def train_step(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        attention_mask_1: torch.Tensor | None = None,
        attention_mask_2: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One update on `B` pairs of views.

        Args:
            x1, x2: `(B, T1)`, `(B, T2)` token ids; row i of each are two views of one text.
            attention_mask_1 / attention_mask_2: 1 on real tokens (default: ids != pad id).

        Returns:
            Python floats: `loss` (mean over pairs, before the update) and `accuracy` (share of
            rows whose own pair scores highest).

        Raises:
            UserError: not `(B, T)` tensors, different `B`, `B < 2` without a momentum encoder.
        """
        for name, x in (("x1", x1), ("x2", x2)):
            if not isinstance(x, torch.Tensor) or x.ndim != 2:
                raise UserError(f"{name} must be a (batch, length) tensor of token ids")
        if x1.shape[0] != x2.shape[0]:
            raise UserError(f"x1 has {x1.shape[0]} rows but x2 has {x2.shape[0]}")
        batch = {
            "input_ids_1": x1, "attention_mask_1": self._mask(x1, attention_mask_1),
            "input_ids_2": x2, "attention_mask_2": self._mask(x2, attention_mask_2),
        }
        self.model.train()
        result = self.optimizer_step([batch])  # MoCo's momentum update runs at its end
        return self.statistics.record({"loss": result.loss, "accuracy": result.metrics["accuracy"]})

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, C)` L2-normalised embeddings (without the projection head) in eval mode."""
        was = self.model.training
        self.model.eval()
        try:
            return self.model.embed(input_ids, self._mask(input_ids, attention_mask))
        finally:
            self.model.train(was)


def create_contrastive_pretrainer(
    encoder: torch.nn.Module, hidden_size: int, config: ContrastiveConfig | Mapping[str, Any] | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
) -> ContrastivePretrainer:
    """`ContrastivePretrainer(encoder, hidden_size, config, train)`; `config` may be a dict of
    fields (the object `minigpt contrastive` takes as `--contrastive.*`; `train` as `--train.*`,
    same defaults)."""
    return ContrastivePretrainer(encoder, hidden_size, config, train)


__all__ = ["ContrastivePretrainer", "create_contrastive_pretrainer"]
