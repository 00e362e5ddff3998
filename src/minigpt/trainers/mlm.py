"""Masked-LM pretraining as a Python API: `MLMConfig`, `create_mlm_pretrainer`, `train_step`
(BERT, Devlin et al. 2019, arXiv:1810.04805).

`MLMPretrainer.train_step(input_ids, attention_mask, nsp_labels)` masks the batch (80/10/10,
`minigpt.losses.mlm.mask_tokens`) and runs one update of `minigpt.objectives.mlm.MLMObjective`
through the training loop's optimizer step (`minigpt.train.step.OptimizerStep`).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from minigpt.errors import UserError
from minigpt.losses.mlm import mask_tokens
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.model.modeling import MiniGPTForCausalLM, MiniGPTModel
from minigpt.objectives.mlm import MLMObjective
from minigpt.objectives.config import MLM_TRAIN_DEFAULTS, MLMConfig, with_learning_rate
from minigpt.train.config import TrainConfig
from minigpt.train.statistics import ReportsStatistics


class MLMPretrainer(ReportsStatistics):
    """Masked-LM updates of an encoder, one `train_step` per batch.

    Args:
        model: a `MiniGPTForMaskedLM`, or a `MiniGPTModel` / `MiniGPTForCausalLM` whose decoder
            is trained as the encoder (shared, not copied): `self.model` is an encoder view
            over it, with a copy of its config in encoder mode, an MLM head tied to its
            embeddings (and an NSP head with `use_nsp`). The caller's model and config are
            not changed: the model stays causal for whoever else holds it.
        hidden_size: the model's width (checked against its config).
        config: `MLMConfig` or a dict of its fields.
        train: optimisation (`TrainConfig` or a dict of its fields; default
            `MLM_TRAIN_DEFAULTS`, as `minigpt mlm`): `lr` (or `config.learning_rate`),
            `weight_decay`, betas, `grad_clip`, `precision`. The learning rate stays constant.

    Raises:
        UserError: another kind of model, a `hidden_size` that is not the model's, a mask id
            or a `vocab_size` outside the model's vocabulary.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        hidden_size: int,
        config: MLMConfig | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from minigpt.trainers.base import as_options, optimizer_step_for

        config = MLMConfig() if config is None else config
        self.config = c = config if isinstance(config, MLMConfig) else MLMConfig.from_dict(config)
        self.train = with_learning_rate(as_options(train, TrainConfig, MLM_TRAIN_DEFAULTS, "train"), c.learning_rate)
        if isinstance(model, MiniGPTForMaskedLM):
            encoder = model
        elif isinstance(model, (MiniGPTModel, MiniGPTForCausalLM)):
            backbone = model.model if isinstance(model, MiniGPTForCausalLM) else model
            view = copy.deepcopy(backbone.config)  # the encoder's own: the caller's stays causal
            view.use_nsp = c.use_nsp
            encoder = MiniGPTForMaskedLM(view)
            encoder.model = backbone
            if backbone.config.tie_word_embeddings:
                encoder.lm_head.weight = backbone.embed_tokens.weight
            param = next(backbone.parameters())
            encoder.to(device=param.device, dtype=param.dtype)
        else:
            raise UserError(f"create_mlm_pretrainer needs a MiniGPT model, not {type(model).__name__}")
        if hidden_size != encoder.config.hidden_size:
            raise UserError(f"hidden_size {hidden_size} is not the model's ({encoder.config.hidden_size})")
        if c.use_nsp and encoder.nsp_head is None:
            raise UserError("use_nsp needs a model with a next-sentence head (build it with config.use_nsp = True)")
        self.model = encoder
        self.vocab_size = c.vocab_size or encoder.config.vocab_size
        if self.vocab_size > encoder.config.vocab_size:
            raise UserError(
                f"MLMConfig.vocab_size {self.vocab_size} is larger than the model's vocabulary ({encoder.config.vocab_size}): "
                "random replacements would be ids the model has no embedding for"
            )
        self.mask_token_id = self.vocab_size - 1 if c.mask_token_id is None else c.mask_token_id
        if not 0 <= self.mask_token_id < encoder.config.vocab_size:
            raise UserError(f"mask_token_id {self.mask_token_id} is outside the model's vocabulary ({encoder.config.vocab_size})")
        self.generator = torch.Generator().manual_seed(self.train.seed)  # the masking draws
        self.objective = MLMObjective()
        self.optimizer_step = optimizer_step_for(encoder, self.objective, self.train, empty="skip")
        self.optimizer = self.optimizer_step.optimizer

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(masked_input_ids, labels)` of a batch (see `minigpt.losses.mlm.mask_tokens`)."""
        return mask_tokens(
            input_ids, self.mask_token_id, self.vocab_size, self.config.mask_prob, attention_mask,
            self.config.special_token_ids, generator=self.generator,
        )

    def train_step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, nsp_labels: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Mask `input_ids (B, T)` and take one optimizer step.

        Args:
            input_ids: `(B, T)` token ids (unmasked).
            attention_mask: `(B, T)`, 0 on padding (default: all real).
            nsp_labels: `(B,)`, 0 when the second sentence follows the first, 1 when random
                (needs `use_nsp`).

        Returns:
            Python floats: `mlm_loss` (nats per masked token), `mlm_accuracy`, `num_masked`,
            and with NSP labels `nsp_loss`, `nsp_accuracy`; all measured before the update.

        Raises:
            UserError: ids that are not a `(B, T)` tensor; `nsp_labels` without `use_nsp`.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise UserError("input_ids must be a (batch, length) tensor of token ids")
        if nsp_labels is not None and not self.config.use_nsp:
            raise UserError("nsp_labels given but MLMConfig.use_nsp is False")
        masked, labels = self.mask(input_ids, attention_mask)
        batch = {"input_ids": masked, "labels": labels}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        if nsp_labels is not None:
            batch["next_sentence_label"] = torch.as_tensor(nsp_labels)
        self.model.train()
        result = self.optimizer_step([batch])
        out = {
            "mlm_loss": result.metrics.get("mlm_loss", 0.0),
            "mlm_accuracy": result.metrics.get("mlm_accuracy", 0.0),
            "num_masked": float(result.num_units),
        }
        if nsp_labels is not None:
            out["nsp_loss"] = result.metrics.get("nsp_loss", 0.0)
            out["nsp_accuracy"] = result.metrics.get("nsp_accuracy", 0.0)
        return self.statistics.record(out)


def create_mlm_pretrainer(
    model: torch.nn.Module, hidden_size: int, config: MLMConfig | Mapping[str, Any] | None = None, train: TrainConfig | Mapping[str, Any] | None = None
) -> MLMPretrainer:
    """`MLMPretrainer(model, hidden_size, config, train)`; `config` may be a dict of `MLMConfig`
    fields (the object `minigpt mlm` takes as `--mlm.*`; `train` as `--train.*`, same defaults)."""
    return MLMPretrainer(model, hidden_size, config, train)


__all__ = ["MLMPretrainer", "create_mlm_pretrainer"]
