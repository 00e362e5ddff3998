"""The reward model: the MiniGPT decoder, a pooled hidden state and a small MLP score head.

    r(x, y) = score(pool(decoder(prompt + reply)))          # one scalar per sequence

Trained on preference pairs with the Bradley–Terry loss `−log σ(r_w − r_l)` (Bradley & Terry
1952; the reward model of InstructGPT, Ouyang et al. 2022, arXiv:2203.02155 §3.5). See
`minigpt.losses.preference.bradley_terry_loss`, `minigpt.objectives.reward_model` and
`minigpt.trainers.reward_model`.

The head's settings live in the config (`reward_head_hidden_size`, `reward_head_num_layers`,
`reward_head_dropout`, `reward_pooling`), so a saved reward model is an ordinary `transformers`
directory: `MiniGPTRewardModel.from_pretrained(dir)` (or `AutoModelForSequenceClassification`
once `minigpt.model.reward_model` is imported) rebuilds the same head and gives the same rewards.

Shapes: B = batch, T = tokens, C = hidden_size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.utils import ModelOutput

from minigpt.errors import UserError
from minigpt.model.configuration import MiniGPTConfig
from minigpt.model.modeling import MiniGPTModel, MiniGPTPreTrainedModel

#: How a sequence's hidden states `(T, C)` become one vector `(C,)`.
POOLINGS = ("last", "mean", "max")


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "last") -> torch.Tensor:
    """Pool the hidden states of each sequence over its real tokens.

    Args:
        hidden: `(B, T, C)` hidden states.
        attention_mask: `(B, T)`, 1 (or True) on real tokens, 0 on padding; None = no padding.
            Padding may sit on either side (or both): only the mask is read.
        pooling: `"last"` = the state of the last real token (in a causal decoder the only one
            that has seen the whole sequence; what InstructGPT and TRL read the reward from);
            `"mean"` = the average over real tokens; `"max"` = the element-wise maximum over
            real tokens.

    Returns:
        `(B, C)`, in `hidden`'s dtype.

    Raises:
        UserError: unknown `pooling`.
        ValueError: a sequence with no real token (nothing to pool).
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown reward pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    b, t, _ = hidden.shape
    if attention_mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=hidden.device)
    else:
        mask = attention_mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("pool_hidden: a sequence has no real token (its attention_mask row is all 0)")
    if pooling == "last":
        # Index of the last 1 in each row: argmax of mask·(t+1) picks the largest t with a 1.
        pos = torch.arange(1, t + 1, device=hidden.device)  # (T,)
        last = (mask * pos).argmax(-1)  # (B,)
        return hidden[torch.arange(b, device=hidden.device), last]  # (B, C)
    m = mask[..., None]  # (B, T, 1)
    if pooling == "mean":
        total = (hidden.float() * m).sum(1)  # (B, C), summed in fp32
        return (total / m.sum(1)).to(hidden.dtype)
    return hidden.masked_fill(~m, torch.finfo(hidden.dtype).min).amax(1)  # max


class ScoreHead(nn.Module):
    """An MLP from a pooled hidden state to one scalar reward.

    `num_layers` linear layers with GELU between them: `in_size → hidden_size → … →
    hidden_size → 1`; `num_layers = 1` is a single `Linear(in_size, 1)` (the head of
    `transformers`' `*ForSequenceClassification` models). Dropout, when > 0, is applied to the
    input of every linear layer.

    Shapes: `(..., in_size) -> (...)`.

    Raises:
        UserError: `num_layers < 1`, `hidden_size < 1` (with more than one layer) or dropout
            outside [0, 1).
    """

    def __init__(self, in_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise UserError(f"the reward head needs num_layers >= 1, got {num_layers}")
        if num_layers > 1 and hidden_size < 1:
            raise UserError(f"the reward head needs hidden_size >= 1, got {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"the reward head's dropout must be in [0, 1), got {dropout}")
        sizes = [in_size] + [hidden_size] * (num_layers - 1) + [1]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., in_size) -> (...)`."""
        return self.layers(x).squeeze(-1)


@dataclass
class RewardModelOutput(ModelOutput):
    """Output of `MiniGPTRewardModel.forward`.

    Attributes:
        logits: `(B, 1)` the score, as `transformers`' sequence-classification models with
            `num_labels = 1` return it (what TRL's reward trainer reads).
        rewards: `(B,)` the same numbers, fp32.
        pooled_hidden_state: `(B, C)` the pooled hidden state the head read (not the
            per-layer `hidden_states` tuple of `transformers` outputs).
    """

    logits: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    pooled_hidden_state: torch.Tensor | None = None


def set_reward_head_config(
    config: MiniGPTConfig,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    pooling: str | None = None,
    dropout: float | None = None,
) -> MiniGPTConfig:
    """Write the reward-head settings into `config` (in place; returned for chaining).

    An argument left None keeps the value already in the config, else the default: head width
    `config.hidden_size`, 2 layers, `"last"` pooling, no dropout. Also sets `num_labels = 1`.

    Raises:
        UserError: unknown pooling (head sizes are checked by `ScoreHead`).
    """
    defaults = {
        "reward_head_hidden_size": config.hidden_size,
        "reward_head_num_layers": 2,
        "reward_pooling": "last",
        "reward_head_dropout": 0.0,
    }
    current = {k: getattr(config, k, None) for k in defaults}
    current = {k: defaults[k] if v is None else v for k, v in current.items()}
    given = {
        "reward_head_hidden_size": hidden_size,
        "reward_head_num_layers": num_layers,
        "reward_pooling": pooling,
        "reward_head_dropout": dropout,
    }
    for key, value in current.items():
        setattr(config, key, value if given[key] is None else given[key])
    if config.reward_pooling not in POOLINGS:
        raise UserError(f"unknown reward pooling {config.reward_pooling!r}; choose one of {', '.join(POOLINGS)}")
    config.num_labels = 1
    return config


class MiniGPTRewardModel(MiniGPTPreTrainedModel):
    """A scalar reward per sequence: `input_ids (B, T) -> rewards (B,)`.

    `self.model` is the MiniGPT decoder (`MiniGPTModel`, the same parameter names as inside
    `MiniGPTForCausalLM`, so a causal LM's backbone loads into it), `self.score` a `ScoreHead`.
    The head's settings are read from the config (see `set_reward_head_config`); a config
    without them gets the defaults.
    """

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__(config)
        set_reward_head_config(config)
        self.model = MiniGPTModel(config)
        self.score = ScoreHead(
            config.hidden_size,
            config.reward_head_hidden_size,
            config.reward_head_num_layers,
            config.reward_head_dropout,
        )
        self.post_init()

    def default_attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, T)` long: 1 where `input_ids != config.pad_token_id` (all 1 without a pad id)."""
        pad = self.config.pad_token_id
        if pad is None:
            return torch.ones_like(input_ids)
        return (input_ids != pad).long()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> RewardModelOutput:
        """Score each sequence.

        Args:
            input_ids: `(B, T)` token ids, padded on the left or the right.
            attention_mask: `(B, T)` 1 = real token, 0 = padding. Default: tokens that are not
                `config.pad_token_id`. Required with `inputs_embeds`.
            position_ids: `(B, T)`; by default counted over real tokens, so the padding side
                does not change the reward.
            inputs_embeds: `(B, T, C)` instead of `input_ids`.

        Returns:
            `RewardModelOutput` with `logits (B, 1)`, `rewards (B,)` (fp32) and the pooled
            `pooled_hidden_state (B, C)`.

        Raises:
            ValueError: a sequence with no real token.
        """
        if attention_mask is None and input_ids is not None:
            attention_mask = self.default_attention_mask(input_ids)
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
        ).last_hidden_state  # (B, T, C)
        pooled = pool_hidden(hidden, attention_mask, self.config.reward_pooling)  # (B, C)
        logits = self.score(pooled)[:, None]  # (B, 1)
        return RewardModelOutput(logits=logits, rewards=logits[:, 0].float(), pooled_hidden_state=pooled)

    def token_values(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """The score head applied to every position's hidden state: a value per token.

        Used as PPO's critic (Ouyang et al. 2022, arXiv:2203.02155 §3.5; TRL's value model):
        `values[b, t]` estimates the return from the state "prefix up to and including token t".
        With `"last"` pooling, `token_values(ids, mask)` at a row's last real token equals
        `forward(ids, mask).rewards` of that row.

        Args:
            input_ids: `(B, T)` token ids, padded on either side.
            attention_mask: `(B, T)` 1 = real token; default from `config.pad_token_id`.
            position_ids: `(B, T)`; by default counted over real tokens (as in `forward`).

        Returns:
            `(B, T)` fp32 values, differentiable; 0 at padding positions.
        """
        if attention_mask is None:
            attention_mask = self.default_attention_mask(input_ids)
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, T, C)
        values = self.score(hidden).float()  # (B, T)
        return torch.where(attention_mask.bool(), values, torch.zeros_like(values))

    @torch.no_grad()
    def compare_responses(
        self,
        chosen_ids: torch.Tensor,
        rejected_ids: torch.Tensor,
        chosen_attention_mask: torch.Tensor | None = None,
        rejected_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of two batches of sequences (e.g. prompt + chosen, prompt + rejected), in one
        forward pass, in eval mode (no dropout; the previous mode is restored), without gradients.

        Args:
            chosen_ids: `(B, T1)`; rejected_ids: `(B, T2)` (the lengths may differ).
            chosen_attention_mask / rejected_attention_mask: `(B, T1)` / `(B, T2)`; default
                from `config.pad_token_id`.

        Returns:
            `(chosen_rewards (B,), rejected_rewards (B,))`, fp32.
        """
        was_training = self.training
        self.eval()
        try:
            ids, mask = stack_pairs(
                chosen_ids, rejected_ids, chosen_attention_mask, rejected_attention_mask, self.config.pad_token_id
            )
            dev = self.device
            rewards = self(input_ids=ids.to(dev), attention_mask=mask.to(dev)).rewards  # (2B,)
        finally:
            self.train(was_training)
        n = chosen_ids.shape[0]
        return rewards[:n], rewards[n:]

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Train only the score head (`freeze=True`) or everything again (`freeze=False`):
        sets `requires_grad` on every decoder parameter. Build the optimizer after calling
        this (the training loop's parameter groups skip frozen parameters)."""
        for p in self.model.parameters():
            p.requires_grad_(not freeze)


def stack_pairs(
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_attention_mask: torch.Tensor | None = None,
    rejected_attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack two batches into one, `(2B, T)` with `T = max(T1, T2)`: rows `0..B-1` the chosen,
    `B..2B-1` the rejected; the shorter batch is right-padded (id `pad_token_id`, or 0 without
    one; mask 0). Missing masks are built from `pad_token_id` (all 1 without one).

    Raises:
        ValueError: batches of different sizes, or a mask whose shape differs from its ids.
    """
    if chosen_ids.ndim != 2 or rejected_ids.ndim != 2 or chosen_ids.shape[0] != rejected_ids.shape[0]:
        raise ValueError(
            f"chosen_ids {tuple(chosen_ids.shape)} and rejected_ids {tuple(rejected_ids.shape)} must be (B, T) with the same B"
        )

    def mask_of(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return (ids != pad_token_id).long() if pad_token_id is not None else torch.ones_like(ids)
        if mask.shape != ids.shape:
            raise ValueError(f"attention mask {tuple(mask.shape)} does not match ids {tuple(ids.shape)}")
        return mask.long()

    masks = [mask_of(chosen_ids, chosen_attention_mask), mask_of(rejected_ids, rejected_attention_mask)]
    t = max(chosen_ids.shape[1], rejected_ids.shape[1])
    pad = 0 if pad_token_id is None else pad_token_id
    ids = [F.pad(x, (0, t - x.shape[1]), value=pad) for x in (chosen_ids, rejected_ids)]
    masks = [F.pad(m, (0, t - m.shape[1]), value=0) for m in masks]
    return torch.cat(ids), torch.cat(masks)


# After `import minigpt.model.reward_model`, AutoModelForSequenceClassification.from_pretrained(rm_dir) works.
AutoModelForSequenceClassification.register(MiniGPTConfig, MiniGPTRewardModel, exist_ok=True)



def create_reward_model(
    base_model: Any,
    hidden_size: int = 768,
    num_layers: int = 2,
    use_pooling: str = "last",
    freeze_backbone: bool = False,
    dropout: float = 0.0,
) -> MiniGPTRewardModel:
    """A reward model whose decoder is a copy of `base_model`'s and whose score head is new.

    Args:
        base_model: a `MiniGPTForCausalLM`, a `MiniGPTModel`, or a saved model directory (str or
            Path) holding either. Its decoder weights are COPIED: training the reward model
            never changes `base_model` (which can stay the policy / reference of RLHF).
        hidden_size: width of the head's hidden layers. (The API guide's examples pass the
            backbone width here; the head's input width now comes from the backbone's config.)
        num_layers: linear layers in the head (1 = a single `Linear(C, 1)`).
        use_pooling: `"last"` (last real token), `"mean"` or `"max"` over real tokens.
        freeze_backbone: train only the head (see `MiniGPTRewardModel.freeze_backbone`).
        dropout: dropout on the input of each head layer.

    Returns:
        `MiniGPTRewardModel` on `base_model`'s device and dtype (CPU / the saved dtype for a
        directory), in training mode.

    Raises:
        UserError: not a MiniGPT model or model directory, a model carrying LoRA adapters (merge
            them first), an encoder that attends both ways (`require_causal`), bad head settings.
    """
    from minigpt.model.modeling import MiniGPTForCausalLM

    if isinstance(base_model, (str, Path)):
        path = Path(base_model)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory (no config.json)")
        from minigpt.model.loading import load_model_dir

        base_model = load_model_dir(path, MiniGPTForCausalLM, "base_model", tokenizer=False)[0]
    from minigpt.model.modeling import require_causal

    require_causal(base_model, "create_reward_model")
    if getattr(base_model, "_hf_peft_config_loaded", False) or hasattr(base_model, "peft_config"):
        raise UserError("the base model carries adapters; merge them first (minigpt merge) to build a reward model from it")
    if isinstance(base_model, MiniGPTForCausalLM):
        backbone = base_model.model
    elif isinstance(base_model, (MiniGPTModel, MiniGPTRewardModel)):
        backbone = base_model if isinstance(base_model, MiniGPTModel) else base_model.model
    else:
        raise UserError(
            f"create_reward_model needs a MiniGPTForCausalLM, MiniGPTModel or a model directory, not {type(base_model).__name__}"
        )
    config = copy.deepcopy(backbone.config)
    set_reward_head_config(config, hidden_size=hidden_size, num_layers=num_layers, pooling=use_pooling, dropout=dropout)
    config.architectures = [MiniGPTRewardModel.__name__]
    param = next(backbone.parameters())
    reward_model = MiniGPTRewardModel(config)
    reward_model.model.load_state_dict(backbone.state_dict())  # copies the values
    reward_model.to(device=param.device, dtype=param.dtype)
    if freeze_backbone:
        reward_model.freeze_backbone()
    return reward_model.train()


__all__ = [
    "POOLINGS",
    "MiniGPTRewardModel",
    "RewardModelOutput",
    "ScoreHead",
    "create_reward_model",
    "pool_hidden",
    "set_reward_head_config",
    "stack_pairs",
]


import minigpt as _minigpt  # noqa: E402

_minigpt._register_if_pending(__name__)  # a registration postponed while this module loaded (see minigpt/__init__)
