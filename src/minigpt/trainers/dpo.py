"""The DPO family as a Python API (Rafailov et al. 2023, arXiv:2305.18290, and its variants):
`DPOConfig`, `create_dpo_trainer`, `train_step`.

`DPOTrainer.train_step(chosen_ids, rejected_ids)` takes token-id tensors, as the original
design does, and runs the same objective (`minigpt.objectives.preference`) the `minigpt dpo`
command trains with through the one training loop; only the optimizer step lives here.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from minigpt.errors import UserError
from minigpt.trainers.base import PolicyTrainer, as_options, optimizer_step_for
from minigpt.data.preference import pad_rows
from minigpt.model.lora import has_adapters
from minigpt.objectives.config import DPO_TRAIN_DEFAULTS, DPOConfig, with_learning_rate
from minigpt.objectives.preference import preference_objective
from minigpt.train.config import TrainConfig
from minigpt.model.modeling import require_causal


def _as_rows(ids: torch.Tensor, mask: torch.Tensor | None, pad_id: int, name: str) -> list[torch.Tensor]:
    """Real tokens of each row of `ids (B, T)` (padding removed, left or right)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise UserError(f"{name} must be a (batch, length) tensor of token ids")
    if mask is None:
        mask = ids != pad_id
    rows = [ids[i][mask[i].bool()].long().cpu() for i in range(ids.shape[0])]
    if any(r.numel() < 2 for r in rows):
        raise UserError(f"every row of {name} needs at least two real tokens")
    return rows


class DPOTrainer(PolicyTrainer):
    """Optimise a policy on preference pairs, one `train_step` per batch.

    Args:
        policy_model: the causal LM to train (e.g. the SFT model), optionally with LoRA adapters.
        ref_policy_model: frozen reference π_ref. None: with LoRA adapters, the policy with its
            adapters disabled; otherwise a frozen copy of the policy as it is now; not needed for
            simpo / orpo / reference-free.
        config: `DPOConfig` (the algorithm's knobs) or a dict of its fields.
        train: optimisation (`TrainConfig` or a dict of its fields; default
            `DPO_TRAIN_DEFAULTS`, as `minigpt dpo`): `lr` (or `config.learning_rate`),
            `weight_decay`, betas, `grad_clip`, `precision`. `train_step` keeps the learning
            rate constant.
        pad_token_id: padding id of the id tensors `train_step` gets; default: the policy's
            `config.pad_token_id` (else 0).

    Raises:
        UserError: bad config values or inputs; a policy or reference that attends both ways
            (`require_causal`).
    """

    def __init__(
        self,
        policy_model: torch.nn.Module,
        ref_policy_model: torch.nn.Module | None = None,
        config: DPOConfig | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        config = DPOConfig() if config is None else config
        self.config = c = (config if isinstance(config, DPOConfig) else DPOConfig.from_dict(config)).resolved()
        self.train = with_learning_rate(as_options(train, TrainConfig, DPO_TRAIN_DEFAULTS, "train"), c.learning_rate)
        require_causal(policy_model, "create_dpo_trainer's policy")
        if ref_policy_model is not None:
            require_causal(ref_policy_model, "create_dpo_trainer's reference")
        self.policy = policy_model
        if c.needs_reference and ref_policy_model is None and not has_adapters(policy_model):
            ref_policy_model = copy.deepcopy(policy_model)
        if not c.needs_reference:
            ref_policy_model = None
        self.ref_policy = ref_policy_model
        self.objective = preference_objective(c, reference=ref_policy_model)
        pad = pad_token_id if pad_token_id is not None else getattr(getattr(policy_model, "config", None), "pad_token_id", None)
        self.pad_token_id = 0 if pad is None else int(pad)
        if not any(p.requires_grad for p in policy_model.parameters()):
            raise UserError("the policy has no trainable parameter")
        self.optimizer_step = optimizer_step_for(policy_model, self.objective, self.train)
        self.optimizer, self.precision = self.optimizer_step.optimizer, self.optimizer_step.precision
        self.step = 0

    def make_batch(
        self,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor,
        chosen_attention_mask: torch.Tensor | None = None,
        rejected_attention_mask: torch.Tensor | None = None,
        prompt_lengths: int | torch.Tensor | list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The objective's batch from id tensors.

        Args:
            chosen_ids / rejected_ids: `(B, T_w)` / `(B, T_l)` prompt + reply ids, padded with
                `pad_token_id` on either side (or described by the attention masks).
            prompt_lengths: tokens of prompt at the start of each (unpadded) row, an int or
                `(B,)`; their log-probs are not scored. None: every token after the first is
                scored, as when the ids hold only the responses.

        Returns the paired batch (`input_ids (2B, T)`, `attention_mask`, `targets`), or for
        `kto` the unpaired one (chosen rows desirable, rejected rows undesirable; each prompt is
        paired with the next row's reply for the KL reference point).
        """
        chosen = _as_rows(chosen_ids, chosen_attention_mask, self.pad_token_id, "chosen_ids")
        rejected = _as_rows(rejected_ids, rejected_attention_mask, self.pad_token_id, "rejected_ids")
        if len(chosen) != len(rejected):
            raise UserError(f"chosen_ids has {len(chosen)} rows but rejected_ids has {len(rejected)}")
        b = len(chosen)
        if prompt_lengths is None:
            plen = [1] * b
        elif isinstance(prompt_lengths, int):
            plen = [prompt_lengths] * b
        else:
            plen = [int(x) for x in (prompt_lengths.tolist() if isinstance(prompt_lengths, torch.Tensor) else prompt_lengths)]
        if len(plen) != b or any(p < 1 for p in plen):
            raise UserError("prompt_lengths must be >= 1, one per pair")
        for name, rows in (("chosen_ids", chosen), ("rejected_ids", rejected)):
            for i, r in enumerate(rows):
                if plen[i] >= r.numel():
                    raise UserError(f"row {i} of {name} has {r.numel()} tokens, none after its prompt of {plen[i]}")
        if self.config.loss_type == "kto":
            rows, plens = chosen + rejected, plen + plen
            label = torch.tensor([True] * b + [False] * b)
            n = len(rows)
            kl_rows = [torch.cat([rows[i][: plens[i]], rows[(i + 1) % n][plens[(i + 1) % n] :]]) for i in range(n)]
            batch = self._rows_batch(rows, plens)
            kl = self._rows_batch(kl_rows, plens)
            return {**batch, "label": label, "kl_input_ids": kl["input_ids"], "kl_attention_mask": kl["attention_mask"], "kl_targets": kl["targets"]}
        return self._rows_batch(chosen + rejected, plen + plen)

    def _rows_batch(self, rows: list[torch.Tensor], plens: list[int]) -> dict[str, torch.Tensor]:
        dev = self.device()
        return {k: v.to(dev) for k, v in pad_rows(rows, plens, self.pad_token_id).items()}

    def _metrics(self, out, units: int) -> dict[str, float]:
        metrics = {"loss": float(out.loss_sum.detach()) / units}
        for k, v in out.sums.items():
            metrics[k] = v / units
        return metrics

    def train_step(
        self,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor,
        chosen_attention_mask: torch.Tensor | None = None,
        rejected_attention_mask: torch.Tensor | None = None,
        prompt_lengths: int | torch.Tensor | list[int] | None = None,
    ) -> dict[str, float]:
        """One optimizer step on a batch of pairs (see `make_batch` for the arguments).

        Returns floats: `loss` (mean over pairs), `accuracy` (share of pairs whose implicit
        chosen reward beats the rejected one), `chosen_reward`, `rejected_reward`,
        `reward_margin` (means of β·log π/π_ref, or SimPO/ORPO's rewards); for `kto`: `loss`,
        `kl` and the rewards of each kind.
        """
        batch = self.make_batch(chosen_ids, rejected_ids, chosen_attention_mask, rejected_attention_mask, prompt_lengths)
        self.policy.train()
        result = self.optimizer_step([batch])
        self.step += 1
        return self.statistics.record({"loss": result.loss, **self.objective_metrics(result)})

    @torch.no_grad()
    def evaluate_step(
        self,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor,
        chosen_attention_mask: torch.Tensor | None = None,
        rejected_attention_mask: torch.Tensor | None = None,
        prompt_lengths: int | torch.Tensor | list[int] | None = None,
    ) -> dict[str, float]:
        """The metrics of `train_step` without updating (model in eval mode)."""
        batch = self.make_batch(chosen_ids, rejected_ids, chosen_attention_mask, rejected_attention_mask, prompt_lengths)
        was = self.policy.training
        self.policy.eval()
        with self.autocast():
            out = self.objective.compute_loss(self.policy, batch)
        self.policy.train(was)
        return self._metrics(out, self.objective.num_units(batch))


def create_dpo_trainer(
    policy_model: torch.nn.Module,
    ref_policy_model: torch.nn.Module | None = None,
    config: DPOConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> DPOTrainer:
    """`DPOTrainer(policy_model, ref_policy_model, config, **kwargs)`; `config` may be a dict of
    `DPOConfig` fields; keyword arguments `train` and `pad_token_id` (the objects `minigpt dpo`
    takes as `--dpo.*` and `--train.*`, with the same defaults)."""
    return DPOTrainer(policy_model, ref_policy_model, config, **kwargs)
