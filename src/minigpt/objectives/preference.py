"""Preference optimisation objectives: the DPO family on pairs, KTO on unpaired examples.

Each objective is a thin adapter: forward the batch, reduce to per-sequence log-probs, and hand
them to the pure loss functions of `minigpt.losses.preference`, where the equations live.

Reference log-probs come from, in this order: the batch (`ref_logprobs`, precomputed once per
dataset by `precompute_reference_logprobs`), a frozen reference model given to the objective, or,
when the policy carries PEFT adapters, the policy itself with its adapters disabled (DESIGN
principle 4: no second copy of the weights in memory).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch

from minigpt.errors import UserError
from minigpt.losses.lm import IGNORE_INDEX
from minigpt.losses.preference import dpo_loss, kto_loss, kto_reference_point, orpo_loss, sequence_logprobs, simpo_loss
from minigpt.losses.names import PAIRED_LOSSES, REFERENCE_FREE_LOSSES
from minigpt.model.lora import adapters_disabled, has_adapters
from minigpt.model.modeling import soft_cap_logits
from minigpt.objectives.config import DPOConfig
from minigpt.train.objective import LossOutput


def _padding_free_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when every row is right-padded (ones then zeros): causal attention already keeps
    real tokens from seeing the padding after them, and the targets ignore the padded positions,
    so the model can take its plain causal fast path. Otherwise the mask as given."""
    if attention_mask is None:
        return None
    m = attention_mask.long()
    if bool((m.cummin(dim=1).values == m).all()):
        return None
    return attention_mask


def model_sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's supervised targets under `model`.

    Args:
        model: a causal LM; when it has the `transformers` `.model` backbone and `.lm_head`
            (MiniGPT, Llama …, also with in-place LoRA adapters), the LM head runs only on the
            positions that carry a target, which skips the vocabulary projection of every
            prompt and padding token.
        input_ids: `(N, T)`.
        attention_mask: `(N, T)` 1 = real token, or None.
        targets: `(N, T)` aligned targets (position t predicts `targets[t]`), −100 = no loss.

    Returns `(logprobs (N,) float32, num_tokens (N,) long)`; differentiable when grad is enabled.
    """
    mask = _padding_free_mask(attention_mask)
    backbone, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if backbone is None or head is None:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        return sequence_logprobs(logits, targets)
    h = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state  # (N, T, C)
    sel = targets != IGNORE_INDEX  # (N, T)
    logits = soft_cap_logits(head(h[sel]), getattr(model, "config", None))  # (K, V) for the K supervised positions
    token_logprobs, _ = sequence_logprobs(logits[:, None], targets[sel][:, None])  # (K,): one position per row
    rows = sel.nonzero()[:, 0]
    logprobs = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, rows, token_logprobs)
    return logprobs, sel.sum(dim=1)


class _ReferenceMixin:
    """Where reference log-probs come from (see the module docstring)."""

    reference: torch.nn.Module | None

    def set_reference(self, reference: torch.nn.Module | None) -> None:
        self.reference = reference
        if reference is not None:
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def reference_logprobs(self, model: torch.nn.Module, input_ids, attention_mask, targets) -> torch.Tensor:
        """`(N,)` summed reference log-probs (no gradient).

        Raises:
            UserError: no reference available (no precomputed values, no reference model, no
                adapters to disable).
        """
        if self.reference is not None:
            return model_sequence_logprobs(self.reference, input_ids, attention_mask, targets)[0]
        if has_adapters(model):
            with adapters_disabled(model):
                return model_sequence_logprobs(model, input_ids, attention_mask, targets)[0]
        raise UserError(
            "this loss needs reference log-probs: precompute them, pass a reference model, or train LoRA adapters "
            "(the reference is then the model with its adapters disabled)"
        )


class PreferenceObjective(_ReferenceMixin):
    """Paired preference losses on `collate_preference` batches (rows `[chosen…, rejected…]`).

    Batch: `input_ids (2B, T)`, `attention_mask (2B, T)`, `targets (2B, T)` (−100 outside the
    replies), optional `ref_logprobs (2B,)`. One forward over all 2B rows (chosen and rejected
    together), then per-sequence log-probs into the loss:

    - `sigmoid` (DPO, Rafailov et al. 2023, arXiv:2305.18290; with `label_smoothing` the
      conservative cDPO), `ipo` (Azar et al. 2023), `hinge` (SLiC-HF, Zhao et al. 2023): summed
      log-probs against the reference; `reference_free=True` drops the reference terms;
    - `simpo` (Meng et al. 2024): length-normalised log-probs, margin `simpo_gamma`, no reference;
    - `orpo` (Hong et al. 2024): chosen NLL + `beta`·odds-ratio loss (β plays ORPO's λ, as in
      TRL), no reference.

    Units are pairs; `sums` holds per-pair sums of `accuracy` (chosen reward > rejected reward,
    the held-out "implicit reward accuracy"), `chosen_reward`, `rejected_reward` and
    `reward_margin`.

    Args:
        loss_type: one of `PAIRED_LOSSES`.
        beta: β (temperature of the implicit reward; ORPO's λ).
        label_smoothing: ε of conservative DPO (probability that a label is flipped).
        reference_free: DPO against a uniform reference (drops the reference log-probs).
        simpo_gamma: SimPO's target reward margin γ.
        reference: frozen reference model (optional; see the module docstring).

    Raises:
        UserError: unknown loss type, or no reference where one is needed.
    """

    unit_name = "pairs"

    def __init__(
        self,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        simpo_gamma: float = 0.5,
        reference: torch.nn.Module | None = None,
    ) -> None:
        if loss_type not in PAIRED_LOSSES:
            raise UserError(f"unknown paired preference loss {loss_type!r}; choose one of {', '.join(PAIRED_LOSSES)} (or kto for unpaired data)")
        if not 0.0 <= label_smoothing < 0.5:
            raise UserError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
        if label_smoothing and loss_type in ("ipo", "hinge", "orpo"):
            raise UserError(f"label_smoothing (conservative DPO) applies to the sigmoid and simpo losses, not {loss_type}")
        self.loss_type = loss_type
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.reference_free = bool(reference_free)
        self.simpo_gamma = float(simpo_gamma)
        self.set_reference(reference)

    @property
    def needs_reference(self) -> bool:
        """Whether the loss uses reference log-probs at all."""
        return self.loss_type not in REFERENCE_FREE_LOSSES and not self.reference_free

    def num_units(self, batch: dict[str, Any]) -> int:
        """Pairs in the batch."""
        return batch["input_ids"].shape[0] // 2

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed loss over the pairs of `batch` (see the class docstring)."""
        ids, mask, targets = batch["input_ids"], batch.get("attention_mask"), batch["targets"]
        b = ids.shape[0] // 2
        logprobs, n_tokens = model_sequence_logprobs(model, ids, mask, targets)  # (2B,), (2B,)
        if self.loss_type in ("simpo", "orpo"):
            avg = logprobs / n_tokens.clamp(min=1)
            if self.loss_type == "simpo":
                losses, chosen_r, rejected_r = simpo_loss(avg[:b], avg[b:], beta=self.beta, gamma=self.simpo_gamma, label_smoothing=self.label_smoothing)
            else:
                losses, chosen_r, rejected_r = orpo_loss(avg[:b], avg[b:], lam=self.beta)
        else:
            ref = None
            if self.needs_reference:
                ref = batch.get("ref_logprobs")
                if ref is None:
                    ref = self.reference_logprobs(model, ids, mask, targets)
                ref = ref.to(logprobs.device, torch.float32)
            losses, chosen_r, rejected_r = dpo_loss(
                logprobs[:b],
                logprobs[b:],
                None if ref is None else ref[:b],
                None if ref is None else ref[b:],
                beta=self.beta,
                label_smoothing=self.label_smoothing,
                loss_type=self.loss_type,
                reference_free=ref is None,
                chosen_lengths=n_tokens[:b],
                rejected_lengths=n_tokens[b:],
            )
        return LossOutput(
            loss_sum=losses.sum(),
            num_units=b,
            sums={
                "accuracy": float((chosen_r > rejected_r).float().sum()),
                "chosen_reward": float(chosen_r.sum()),
                "rejected_reward": float(rejected_r.sum()),
                "reward_margin": float((chosen_r - rejected_r).sum()),
            },
        )


class KTOObjective(_ReferenceMixin):
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306) on `collate_unpaired` batches.

    Batch: `input_ids`, `attention_mask`, `targets` `(B, T)` with `label (B,)` True for a
    desirable completion; `kl_input_ids` / `kl_attention_mask` / `kl_targets` `(B, T')` pair each
    prompt with another example's completion, which gives the batch estimate of
    KL(π‖π_ref) used as the reference point z0; optional precomputed `ref_logprobs` and
    `ref_kl_logprobs` `(B,)`.

    Units are examples; `sums` holds `kl` (z0, per example), `desirable_reward` and
    `undesirable_reward` summed over all examples of that kind (`desirable` / `undesirable`
    count them, so `desirable_reward / desirable` is their mean).
    """

    unit_name = "examples"

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reference: torch.nn.Module | None = None,
    ) -> None:
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)
        self.set_reference(reference)

    needs_reference = True

    def num_units(self, batch: dict[str, Any]) -> int:
        """Examples in the batch."""
        return batch["input_ids"].shape[0]

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        """Summed KTO loss over the examples of `batch`."""
        ids, mask, targets = batch["input_ids"], batch.get("attention_mask"), batch["targets"]
        kl_ids, kl_mask, kl_targets = batch["kl_input_ids"], batch.get("kl_attention_mask"), batch["kl_targets"]
        logprobs, _ = model_sequence_logprobs(model, ids, mask, targets)
        with torch.no_grad():  # the reference point carries no gradient (KTO §4.1)
            kl_logprobs, _ = model_sequence_logprobs(model, kl_ids, kl_mask, kl_targets)
        ref = batch.get("ref_logprobs")
        ref = self.reference_logprobs(model, ids, mask, targets) if ref is None else ref
        ref_kl = batch.get("ref_kl_logprobs")
        ref_kl = self.reference_logprobs(model, kl_ids, kl_mask, kl_targets) if ref_kl is None else ref_kl
        z0 = kto_reference_point(kl_logprobs, ref_kl.to(kl_logprobs.device, torch.float32))
        desirable = batch["label"].to(logprobs.device).bool()
        losses, rewards = kto_loss(
            logprobs,
            ref.to(logprobs.device, torch.float32),
            desirable,
            z0,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        n = ids.shape[0]
        return LossOutput(
            loss_sum=losses.sum(),
            num_units=n,
            sums={
                "kl": float(z0) * n,
                "desirable": float(desirable.sum()),
                "undesirable": float((~desirable).sum()),
                "desirable_reward": float(rewards[desirable].sum()),
                "undesirable_reward": float(rewards[~desirable].sum()),
            },
        )


@torch.no_grad()
def precompute_reference_logprobs(
    objective: PreferenceObjective | KTOObjective,
    model: torch.nn.Module,
    dataset,
    collate_fn: Callable[[list], dict],
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | Callable[[], Any] | None = None,
    progress: bool = False,
) -> None:
    """Run the reference once over `dataset` and store its log-probs in it
    (`dataset.set_reference_logprobs(...)`), so training needs one forward per step, not two.

    The reference is what the objective would use live: its frozen `reference` model, or
    `model` with its adapters disabled, or `model` itself as it is now (the starting policy).
    Uses the same autocast as training, so the stored values equal live ones.

    Args:
        dataset: a `PreferenceDataset` or `UnpairedPreferenceDataset`.
        autocast: factory of the autocast context (e.g. the trainer's `autocast`).
    """
    ref = objective.reference if objective.reference is not None else model
    was_training = ref.training
    ref.eval()
    ctx = contextlib.nullcontext() if objective.reference is not None or not has_adapters(model) else adapters_disabled(model)
    first: list[float] = []
    second: list[float] = []
    from tqdm.auto import tqdm

    starts: Iterable[int] = range(0, len(dataset), batch_size)
    with ctx:
        for s in tqdm(starts, desc="reference log-probs", disable=not progress, dynamic_ncols=True):
            items = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
            for it in items:  # a stale precomputation must not be collated back in
                for k in ("ref_chosen_logprobs", "ref_rejected_logprobs", "ref_logprobs", "ref_kl_logprobs"):
                    it.pop(k, None)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate_fn(items).items()}
            with autocast() if callable(autocast) else (autocast or contextlib.nullcontext()):
                logprobs, _ = model_sequence_logprobs(ref, batch["input_ids"], batch.get("attention_mask"), batch["targets"])
                if isinstance(objective, KTOObjective):
                    kl, _ = model_sequence_logprobs(ref, batch["kl_input_ids"], batch.get("kl_attention_mask"), batch["kl_targets"])
            if isinstance(objective, KTOObjective):
                first += logprobs.tolist()
                second += kl.tolist()
            else:
                b = len(items)
                first += logprobs[:b].tolist()
                second += logprobs[b:].tolist()
    ref.train(was_training)
    dataset.set_reference_logprobs(first, second)


def preference_objective(config: DPOConfig, reference: torch.nn.Module | None = None) -> "PreferenceObjective | KTOObjective":
    """The objective a `DPOConfig` describes: `KTOObjective` for `loss_type="kto"`, else
    `PreferenceObjective`; `beta` left None takes the loss's own value. The command and the
    Python API build their objective here.

    Raises:
        UserError: settings the objective refuses (see the two classes).
    """
    c = config.resolved()
    if c.loss_type == "kto":
        return KTOObjective(c.beta, c.desirable_weight, c.undesirable_weight, reference=reference)
    return PreferenceObjective(c.loss_type, c.beta, c.label_smoothing, c.reference_free, c.simpo_gamma, reference=reference)
