"""Each algorithm's config and each training stage's defaults, defined once: the command and its
Python API take the same objects and start from the same values. An algorithm config holds only
the algorithm's knobs; sampling lives in `SamplingOptions`, optimisation in `TrainConfig`,
adapters in `LoraOptions`. No torch import, so the command line is parsed without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from minigpt.config import DictConfig
from minigpt.errors import UserError
from minigpt.inference.options import SamplingOptions
from minigpt.model.options import EMBEDDING_POOLINGS
from minigpt.losses.names import ADVANTAGE_TYPES, AGGREGATIONS, DEFAULT_BETA, KL_ESTIMATORS, PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES
from minigpt.train.config import TrainConfig

#: Supervised fine-tuning (`minigpt sft`, and `minigpt distill`, which fine-tunes a student on
#: the same records): 1000 steps of 8 conversations, cosine from 2e-4 down to 2e-5.
SFT_TRAIN_DEFAULTS = TrainConfig(
    max_steps=1000,
    batch_size=8,
    lr=2e-4,
    min_lr_ratio=0.1,
    warmup_steps=20,
    weight_decay=0.0,
    eval_interval=200,
    eval_batches=0,
    save_interval=500,
)


def is_int(x: object, low: int) -> bool:
    """Whether `x` is an integer (not a bool) of at least `low`."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


#: The GRPO family's algorithms.
GRPO_ALGORITHMS = ("grpo", "gspo", "cispo")


@dataclass
class GRPOConfig(DictConfig):
    """The knobs of GRPO / GSPO (names as in TRL's `GRPOConfig` where they exist): `minigpt grpo
    --grpo.group_size 8` and `create_grpo_trainer(model, config=GRPOConfig(group_size=8))`.

    Fields left as None take the algorithm's own value (`resolved()`): for `gspo` the
    sequence-level importance ratio, sequence-mean aggregation and clip range 3e-4 / 4e-4
    (Zheng et al. 2025 §5.1); for `grpo` the token-level ratio, token-mean aggregation and 0.2;
    for `cispo` (MiniMax-M1's clipped-weight REINFORCE, `minigpt.losses.policy.cispo_policy_loss`)
    the token-level ratio, token-mean aggregation, no lower bound on the weight (ε_low 1) and
    an upper one of 1 + 3 (ScaleRL's 4).

    Raises:
        UserError: a value outside its range or an unknown name, naming the field.
    """

    algorithm: str = "grpo"
    """grpo (token-level ratio), gspo (sequence-level ratio and clipping) or cispo (REINFORCE
    with a clipped, stop-gradient token-level importance weight: no token loses its gradient)."""
    group_size: int = 4
    """G: completions sampled per prompt; advantages compare samples of one prompt."""
    advantage_type: str = "normalized"
    """normalized ((r - mean)/std), relative (r - mean(group)), rloo (leave-one-out baseline,
    RLOO) or rank."""
    scale_rewards: bool = True
    """Divide normalized advantages by the group std; False is Dr. GRPO (Liu et al. 2025)."""
    beta: float = 0.0
    """Weight of the KL penalty to the reference policy; 0 (TRL's default) loads no reference."""
    kl_estimator: str = "k3"
    """Per-token KL estimator: k1, k2 or k3 (Schulman 2020; k3 is unbiased and >= 0)."""
    clip_epsilon: float | None = None
    """Lower clip range ε of the importance ratio (None: 0.2, GSPO 3e-4, CISPO 1 = no bound)."""
    clip_epsilon_high: float | None = None
    """Upper clip range (DAPO's clip-higher; None: as clip_epsilon, GSPO 4e-4, CISPO 3)."""
    importance_sampling_level: str | None = None
    """token or sequence (None: token for grpo and cispo, sequence for gspo; cispo takes token only)."""
    aggregation: str | None = None
    """token (mean over all completion tokens of the step, DAPO) or sequence (mean of each
    completion's token mean, original GRPO); None: token for grpo and cispo, sequence for gspo."""
    num_iterations: int = 1
    """μ: optimisation passes over each rollout batch (ratio != 1 from the second on)."""
    mini_batch_size: int = 0
    """Completions per micro-batch (0: the whole rollout batch in one)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_new_tokens out of the loss (DAPO)."""
    learning_rate: float | None = None
    """The API guide's spelling of the learning rate, for `create_grpo_trainer(config=...)`: when
    set it is `train.lr` (None: `train.lr`, whose default is `GRPO_TRAIN_DEFAULTS.lr`). On the
    command line the learning rate is `--train.lr`."""

    def __post_init__(self) -> None:
        checks = [
            (self.algorithm in GRPO_ALGORITHMS, f"algorithm must be one of {', '.join(GRPO_ALGORITHMS)}"),
            (is_int(self.group_size, 1), "group_size must be an integer >= 1"),
            (self.advantage_type in ADVANTAGE_TYPES, f"advantage_type must be one of {', '.join(ADVANTAGE_TYPES)}"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}"),
            (self.importance_sampling_level in (None, "token", "sequence"), "importance_sampling_level must be token or sequence"),
            (self.aggregation is None or self.aggregation in AGGREGATIONS, f"aggregation must be one of {', '.join(AGGREGATIONS)}"),
            (self.beta >= 0, "beta must be >= 0"),
            (self.clip_epsilon is None or self.clip_epsilon > 0, "clip_epsilon must be > 0"),
            (self.clip_epsilon is None or self.clip_epsilon < 1 or self.algorithm == "cispo",
             "clip_epsilon must be < 1 (a ratio clipped below 0 is no clip; only cispo takes ε_low ≥ 1, meaning no lower bound)"),
            (self.algorithm != "cispo" or self.importance_sampling_level in (None, "token"),
             "importance_sampling_level must be token with algorithm cispo (its weight is per token)"),
            (self.clip_epsilon_high is None or self.clip_epsilon_high > 0, "clip_epsilon_high must be > 0"),
            (is_int(self.num_iterations, 1), "num_iterations must be an integer >= 1"),
            (is_int(self.mini_batch_size, 0), "mini_batch_size must be an integer >= 0"),
            (self.advantage_type != "rloo" or self.group_size >= 2, "advantage_type rloo needs group_size >= 2"),
            (self.learning_rate is None or self.learning_rate > 0, "learning_rate must be > 0"),
        ]
        self.require(checks)

    def resolved(self) -> "GRPOConfig":
        """A copy with the fields left as None set to the algorithm's values (see the class)."""
        gspo, cispo = self.algorithm == "gspo", self.algorithm == "cispo"
        low = self.clip_epsilon if self.clip_epsilon is not None else (3e-4 if gspo else 1.0 if cispo else 0.2)
        return replace(
            self,
            clip_epsilon=low,
            clip_epsilon_high=self.clip_epsilon_high if self.clip_epsilon_high is not None else (4e-4 if gspo else 3.0 if cispo else low),
            importance_sampling_level=self.importance_sampling_level or ("sequence" if gspo else "token"),
            aggregation=self.aggregation or ("sequence" if gspo else "token"),
        )


#: GRPO's sampling: plain temperature-1 sampling of completions up to 128 tokens.
GRPO_SAMPLING = SamplingOptions(max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0)

#: GRPO's optimisation: 200 rollout batches of 8 prompts, constant learning rate 1e-6.
GRPO_TRAIN_DEFAULTS = TrainConfig(
    max_steps=200,
    batch_size=8,
    lr=1e-6,
    min_lr_ratio=1.0,
    warmup_steps=0,
    weight_decay=0.0,
    beta2=0.99,
    eval_interval=50,
    save_interval=50,
    log_interval=1,
)


@dataclass
class RLHFConfig(DictConfig):
    """The knobs of PPO-RLHF (Ouyang et al. 2022; names as in TRL's `PPOConfig` where they exist):
    `minigpt ppo --ppo.kl_coef 0.05` and `create_rlhf_trainer(model, rm, config=RLHFConfig(kl_coef=0.05))`.

    Raises:
        UserError: a value outside its range or an unknown name, naming the field.
    """

    ppo_epochs: int = 4
    """Optimisation passes over each rollout (TRL: num_ppo_epochs)."""
    clip_epsilon: float = 0.2
    """Clip range ε of the policy ratio (TRL: cliprange)."""
    kl_coef: float = 0.1
    """β: reward units per nat of KL to the reference, on every token (the starting value when
    adaptive_kl)."""
    value_learning_rate: float | None = None
    """Learning rate of the critic (None: the policy's, `train.lr`); it follows the same
    schedule."""
    gamma: float = 0.99
    """Discount γ of GAE."""
    gae_lambda: float = 0.95
    """λ of GAE (1: Monte-Carlo returns, 0: one-step TD)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    clip_range_value: float | None = 0.2
    """Clip range of the value update around the rollout's values (None or 0: no clipping)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    kl_estimator: str = "k1"
    """Per-token KL in the reward: k1 (log π − log π_ref, TRL's default) or k3 (always >= 0)."""
    mini_batch_size: int = 0
    """Completions per micro-batch (0: the whole rollout in one)."""
    whiten_advantages: bool = True
    """Standardise the advantages over the rollout's completion tokens."""
    target_kl: float | None = None
    """Stop a rollout's remaining passes once a micro-batch's approximate KL to the sampling
    policy exceeds this (None: never)."""
    adaptive_kl: bool = False
    """Adapt kl_coef towards kl_target after every rollout (Ziegler et al. 2019 §2.2)."""
    kl_target: float = 6.0
    """KL per completion (nats, summed over tokens) the adaptive controller steers towards."""
    kl_horizon: int = 10000
    """Completions over which the adaptive controller moves kl_coef by about ±20 %."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of completions that hit max_new_tokens without a stop token."""
    learning_rate: float | None = None
    """The API guide's spelling of the policy's learning rate, for `create_rlhf_trainer(config=...)`:
    when set it is `train.lr` (None: `train.lr`, whose default is `PPO_TRAIN_DEFAULTS.lr`). On
    the command line the learning rate is `--train.lr`."""

    def __post_init__(self) -> None:
        checks = [
            (is_int(self.ppo_epochs, 1), "ppo_epochs must be an integer >= 1"),
            (0 < self.clip_epsilon < 1, "clip_epsilon must be in (0, 1)"),
            (self.kl_coef >= 0, "kl_coef must be >= 0"),
            (self.learning_rate is None or self.learning_rate > 0, "learning_rate must be > 0"),
            (self.value_learning_rate is None or self.value_learning_rate > 0, "value_learning_rate must be > 0"),
            (0 <= self.gamma <= 1, "gamma must be in [0, 1]"),
            (0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.clip_range_value is None or self.clip_range_value >= 0, "clip_range_value must be >= 0 or None"),
            (self.entropy_coef >= 0, "entropy_coef must be >= 0"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}"),
            (is_int(self.mini_batch_size, 0), "mini_batch_size must be an integer >= 0"),
            (self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or None"),
            (self.kl_target > 0, "kl_target must be > 0"),
            (self.kl_horizon > 0, "kl_horizon must be > 0"),
        ]
        self.require(checks)


#: PPO's sampling: plain temperature-1 sampling of completions up to 64 tokens.
PPO_SAMPLING = SamplingOptions(max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0)

PPO_TRAIN_DEFAULTS = TrainConfig(
    max_steps=200,
    batch_size=8,
    lr=1e-5,
    min_lr_ratio=1.0,
    warmup_steps=0,
    weight_decay=0.0,
    eval_interval=40,
    save_interval=40,
    log_interval=1,
)


@dataclass
class DPOConfig(DictConfig):
    """The knobs of the DPO family and KTO (names as in TRL's `DPOConfig` where they exist):
    `minigpt dpo --dpo.loss_type simpo --dpo.beta 2.5` and `create_dpo_trainer(model,
    config=DPOConfig(beta=0.1))`. DPO: Rafailov et al. 2023; IPO: Azar et al. 2023; SimPO: Meng
    et al. 2024; ORPO: Hong et al. 2024; KTO: Ethayarajh et al. 2024.

    Raises:
        UserError: a value outside its range or an unknown loss, naming the field.
    """

    loss_type: str = "sigmoid"
    """sigmoid (DPO), ipo, hinge, simpo, orpo or kto (unpaired data)."""
    beta: float | None = None
    """β: temperature of the implicit reward β·log(π/π_ref) (SimPO: reward scale; ORPO: the
    odds-ratio weight λ). None: the loss's usual value (`resolved()`; 0.1, SimPO 2.0)."""
    label_smoothing: float = 0.0
    """Conservative DPO: assumed probability that a preference label is flipped, in [0, 0.5)."""
    reference_free: bool = False
    """Drop the reference log-probs (DPO against a uniform reference)."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin γ."""
    desirable_weight: float = 1.0
    """KTO: loss weight of desirable examples."""
    undesirable_weight: float = 1.0
    """KTO: loss weight of undesirable examples."""
    learning_rate: float | None = None
    """The API guide's spelling of the learning rate, for `create_dpo_trainer(config=...)`: when
    set it is `train.lr` (None: `train.lr`, whose default is `DPO_TRAIN_DEFAULTS.lr`). On the
    command line the learning rate is `--train.lr`."""

    def __post_init__(self) -> None:
        checks = [
            (self.loss_type in PREFERENCE_LOSSES, f"loss_type must be one of {', '.join(PREFERENCE_LOSSES)}"),
            (self.beta is None or self.beta > 0, "beta must be > 0"),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)"),
            (self.desirable_weight > 0 and self.undesirable_weight > 0, "desirable_weight and undesirable_weight must be > 0"),
            (self.learning_rate is None or self.learning_rate > 0, "learning_rate must be > 0"),
        ]
        self.require(checks)

    def resolved(self) -> "DPOConfig":
        """A copy with `beta` set to the loss's own value when it was left None."""
        return replace(self, beta=DEFAULT_BETA[self.loss_type] if self.beta is None else self.beta)

    @property
    def needs_reference(self) -> bool:
        """Whether this loss compares against a reference policy."""
        return self.loss_type not in REFERENCE_FREE_LOSSES and not self.reference_free


#: DPO's optimisation: 500 steps of 8 pairs, cosine from 1e-5 down to 1e-6.
DPO_TRAIN_DEFAULTS = TrainConfig(
    max_steps=500,
    batch_size=8,
    lr=1e-5,
    min_lr_ratio=0.1,
    warmup_steps=10,
    weight_decay=0.0,
    eval_interval=100,
    eval_batches=0,
    save_interval=250,
)


@dataclass
class MLMConfig(DictConfig):
    """The knobs of masked-LM pretraining (BERT, Devlin et al. 2019): `minigpt mlm
    --mlm.mask_prob 0.2` and `create_mlm_pretrainer(model, 768, config=MLMConfig(mask_prob=0.2))`.
    The command takes the vocabulary, the mask id and the special ids from its tokenizer; the
    masking draws are seeded by `train.seed`."""

    mask_prob: float = 0.15
    """Share of the real, non-special tokens selected for prediction."""
    vocab_size: int | None = None
    """Ids random replacements are drawn from (None: the model's vocabulary)."""
    use_nsp: bool = False
    """Add a next-sentence-prediction head and loss (`nsp_labels` in `train_step`)."""
    mask_token_id: int | None = None
    """The id of the mask token (the tokenizer's `<|mask|>`; None: the last id of the vocabulary)."""
    special_token_ids: list[int] = field(default_factory=list)
    """Ids never selected and never drawn as replacements (padding is excluded by the attention mask)."""
    learning_rate: float | None = None
    """The API guide's spelling of the learning rate, for `create_mlm_pretrainer(config=...)`:
    when set it is `train.lr` (None: `train.lr`, whose default is `MLM_TRAIN_DEFAULTS.lr`). On
    the command line the learning rate is `--train.lr`."""

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise UserError(f"MLMConfig.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"MLMConfig.learning_rate must be > 0, got {self.learning_rate}")


#: Masked-LM pretraining's optimisation: cosine from 5e-4, 100 warmup steps, decay 0.01.
MLM_TRAIN_DEFAULTS = TrainConfig(lr=5e-4, warmup_steps=100, weight_decay=0.01)


@dataclass
class ContrastiveConfig(DictConfig):
    """The knobs of contrastive pretraining (SimCLR, Chen et al. 2020; MoCo, He et al. 2020):
    `minigpt contrastive --contrastive.temperature 0.05` and
    `create_contrastive_pretrainer(model, 768, config=ContrastiveConfig(temperature=0.05))`."""

    temperature: float = 0.05
    """τ of InfoNCE."""
    projection_dim: int = 128
    """Output width of the projection head."""
    use_momentum_encoder: bool = False
    """MoCo: keys from an EMA copy of the encoder, negatives from a queue of earlier keys."""
    queue_size: int = 4096
    """K, MoCo's queued negatives; each step queues both sides' keys (2 × batch), so a multiple of 2 × batch keeps whole steps."""
    momentum: float = 0.999
    """m of MoCo's EMA update of the key encoder."""
    pooling: str | None = None
    """mean, last or first real token (None: mean for an encoder that attends both ways, last
    for a causal one, whose last token has seen the whole text)."""
    learning_rate: float | None = None
    """The API guide's spelling of the learning rate, for `create_contrastive_pretrainer(config=...)`:
    when set it is `train.lr` (None: `train.lr`, whose default is `CONTRASTIVE_TRAIN_DEFAULTS.lr`).
    On the command line the learning rate is `--train.lr`."""

    def __post_init__(self) -> None:
        checks = [
            (self.temperature > 0, "temperature must be > 0"),
            (isinstance(self.projection_dim, int) and self.projection_dim >= 1, "projection_dim must be an integer >= 1"),
            (isinstance(self.queue_size, int) and self.queue_size >= 1, "queue_size must be an integer >= 1"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.pooling is None or self.pooling in EMBEDDING_POOLINGS, f"pooling must be one of {', '.join(EMBEDDING_POOLINGS)}"),
            (self.learning_rate is None or self.learning_rate > 0, "learning_rate must be > 0"),
        ]
        self.require(checks)


#: Contrastive pretraining's optimisation: batches of 32 pairs, cosine from 1e-4, decay 0.01.
CONTRASTIVE_TRAIN_DEFAULTS = TrainConfig(lr=1e-4, warmup_steps=50, weight_decay=0.01, batch_size=32)


REWARD_TRAIN_DEFAULTS = TrainConfig(
    max_steps=1000,
    batch_size=8,
    lr=5e-5,
    min_lr_ratio=0.1,
    warmup_steps=20,
    weight_decay=0.0,
    eval_interval=100,
    eval_batches=0,
    save_interval=500,
)
"""Reward-model training defaults: 8 pairs (16 sequences) per micro-batch; a learning rate
between InstructGPT's 9e-6 for 6B models and TRL's 1e-4 default, for small models whose head
starts from scratch; the whole held-out split evaluated every 100 steps."""


@dataclass
class DistillConfig(DictConfig):
    """The knobs of knowledge distillation (Hinton et al. 2015): `minigpt distill
    --distill.temperature 2 --distill.alpha 0.5` and `DistillationObjective(teacher,
    DistillConfig(...))`.

    Raises:
        UserError: `temperature <= 0` or `alpha` outside [0, 1], naming the field.
    """

    temperature: float = 2.0
    """τ: softens both distributions; the KL term is scaled by τ² so its gradients keep their size."""
    alpha: float = 0.5
    """Weight of the hard-label cross-entropy term, in [0, 1]."""

    def __post_init__(self) -> None:
        self.require([(self.temperature > 0, "temperature must be > 0"), (0 <= self.alpha <= 1, "alpha must be in [0, 1]")])


def with_learning_rate(train: TrainConfig, learning_rate: float | None) -> TrainConfig:
    """`train` with `lr = learning_rate` when an algorithm config's `learning_rate` (the API
    guide's spelling) is set; `train` itself otherwise."""
    return train if learning_rate is None else replace(train, lr=float(learning_rate))


def check_rl_sampling(sampling: SamplingOptions, option: str = "sampling") -> SamplingOptions:
    """Refuse sampling settings online RL cannot train on.

    Raises:
        UserError: `max_new_tokens < 1`, `temperature <= 0` (RL samples; its log-probs are
            taken at that temperature), a repetition penalty (the log-probs are those of plain
            temperature sampling).
    """
    if isinstance(sampling.max_new_tokens, bool) or not isinstance(sampling.max_new_tokens, int) or sampling.max_new_tokens < 1:
        raise UserError(f"{option}.max_new_tokens: must be an integer ≥ 1, got {sampling.max_new_tokens!r}")
    if not sampling.temperature > 0:
        raise UserError(f"{option}.temperature: must be > 0 in online RL (it samples), got {sampling.temperature!r}")
    if sampling.repetition_penalty != 1.0:
        raise UserError(f"{option}.repetition_penalty: must be 1.0 in online RL (log-probs are those of plain temperature sampling)")
    return sampling


__all__ = [
    "DistillConfig",
    "REWARD_TRAIN_DEFAULTS",
    "CONTRASTIVE_TRAIN_DEFAULTS", "ContrastiveConfig",
    "MLM_TRAIN_DEFAULTS", "MLMConfig",
    "DPO_TRAIN_DEFAULTS", "DPOConfig",
    "GRPO_ALGORITHMS", "GRPO_SAMPLING", "GRPO_TRAIN_DEFAULTS", "GRPOConfig", "PPO_SAMPLING", "PPO_TRAIN_DEFAULTS", "RLHFConfig",
    "SFT_TRAIN_DEFAULTS", "check_rl_sampling",
    "with_learning_rate",
]
