"""minigpt: raw text to an aligned chat model, end to end, on PyTorch.

Importing the package registers `MiniGPTConfig` / `MiniGPTForCausalLM` with `transformers`'
`AutoConfig` and `AutoModelForCausalLM`, so a saved run directory loads with
`AutoModelForCausalLM.from_pretrained(run_dir)`.
"""

from minigpt.errors import UserError
from minigpt.data.sft import SFTDataset
from minigpt.model import PRESETS, MiniGPT, MiniGPTConfig, MiniGPTForCausalLM, MiniGPTModel, MiniGPTRewardModel, apply_lora, count_parameters
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.pretraining import ContrastiveConfig, MLMConfig, TextAugmentation, create_contrastive_pretrainer, create_mlm_pretrainer
from minigpt.rl import (
    DPOConfig,
    GRPOConfig,
    RewardModelTrainer,
    RLHFConfig,
    RLHFPipeline,
    create_dpo_trainer,
    create_grpo_trainer,
    create_reward_model,
    create_rlhf_pipeline,
    create_rlhf_trainer,
)
from minigpt.train.callbacks import Callback
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer, TrainingDivergedError

try:  # the installed distribution's version: one number, in pyproject.toml
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("minigpt")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Callback",
    "DPOConfig",
    "GRPOConfig",
    "MiniGPTRewardModel",
    "MiniGPTForMaskedLM",
    "MLMConfig",
    "create_mlm_pretrainer",
    "ContrastiveConfig",
    "TextAugmentation",
    "create_contrastive_pretrainer",
    "RLHFConfig",
    "RLHFPipeline",
    "RewardModelTrainer",
    "create_dpo_trainer",
    "create_grpo_trainer",
    "create_rlhf_pipeline",
    "create_rlhf_trainer",
    "create_reward_model",
    "SFTDataset",
    "apply_lora",
    "MiniGPT",
    "MiniGPTConfig",
    "MiniGPTForCausalLM",
    "MiniGPTModel",
    "PRESETS",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "UserError",
    "count_parameters",
]
