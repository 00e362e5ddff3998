"""Next-token prediction: the pretraining objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from minigpt.losses.lm import IGNORE_INDEX, token_cross_entropy
from minigpt.train.objective import LossOutput


def router_terms(out: Any, units: float, training: bool) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The mixture-of-experts part of an LM objective, from a model output that carries
    `router_loss` / `aux_loss` / `router_z_loss` / `expert_load` (`MiniGPTMoeCausalLMOutput`).

    Returns `(extra summed loss, metrics)`: the extra loss is `router_loss · units` (the loop
    divides the summed loss by the step's units, so the router loss counts once per token, as
    in Switch/Mixtral), None for a dense model or outside training (validation losses stay pure
    cross-entropy). Metrics: `moe_aux_loss`, `moe_z_loss`, and per layer i `moe_load_max/L{i}`,
    the busiest expert's share of the assignments times E (1.0 = perfectly even, E/K = one
    expert is in every token's top-K).
    """
    router_loss = getattr(out, "router_loss", None)
    if router_loss is None:
        return None, {}
    metrics = {"moe_aux_loss": float(out.aux_loss.detach()), "moe_z_loss": float(out.router_z_loss.detach())}
    load = out.expert_load  # (L, E)
    for i, value in enumerate((load.max(dim=-1).values * load.shape[-1]).tolist()):
        metrics[f"moe_load_max/L{i}"] = value
    return (router_loss * units if training else None), metrics


class CausalLMObjective:
    """Cross-entropy of `targets` given `input_ids` (targets already aligned: `targets[t]` is
    the token after `input_ids[t]`, −100 where no loss is wanted), plus, for a mixture-of-experts
    model in training, its router losses (`router_terms`).

    Batch: `input_ids (B, T)`, `targets (B, T)`, optional `attention_mask (B, T)`.

    Args:
        token_bytes: optional `(V,)` array of UTF-8 bytes per token id; when given, `sums`
            carries `nats` and `bytes` so the loop reports bits per byte.
    """

    unit_name = "supervised tokens (all targets are -100)"
    token_nll = True  # exp(val_loss) is a perplexity

    def __init__(self, token_bytes: np.ndarray | None = None) -> None:
        self.token_bytes = None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes), dtype=torch.long)

    def num_units(self, batch: dict[str, Any]) -> int:
        """Supervised target tokens in `batch` (targets ≠ −100)."""
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed next-token cross-entropy in nats over the supervised targets, computed in
        fp32 (`token_cross_entropy`), plus `nats` / `bytes` sums for bits per byte."""
        targets = batch["targets"]
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False, output_router_logits=True
        )
        loss_sum = token_cross_entropy(out.logits[:, -targets.shape[1] :], targets, reduction="sum")
        sums = {"nats": float(loss_sum.detach())}
        if self.token_bytes is not None:
            valid = targets != IGNORE_INDEX
            tb = self.token_bytes.to(targets.device)
            sums["bytes"] = float(tb[targets.clamp(min=0)][valid].sum())
        units = self.num_units(batch)
        extra, metrics = router_terms(out, units, model.training)
        if extra is not None:
            loss_sum = loss_sum + extra
        return LossOutput(loss_sum=loss_sum, num_units=units, sums=sums, metrics=metrics, logits=out.logits[:, -targets.shape[1] :])

