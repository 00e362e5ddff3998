"""One default per knob: the Python API and the CLI start from the same values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from minigpt.losses.preference import DEFAULT_BETA, PREFERENCE_LOSSES
from minigpt.recipes.dpo import dpo
from minigpt.recipes.grpo import grpo
from minigpt.objectives.config import GRPOConfig
from minigpt.rl import DPOConfig


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_dpo_beta_default_is_the_losss_own_in_both(loss):
    """SimPO's β was 2.0 on the CLI and 0.1 in DPOConfig; both now take it from one table."""
    assert inspect.signature(dpo).parameters["beta"].default is None  # resolved through DEFAULT_BETA
    assert DPOConfig(loss_type=loss).beta == DEFAULT_BETA[loss]
    assert DEFAULT_BETA["simpo"] == 2.0 and DEFAULT_BETA["sigmoid"] == 0.1


def test_grpo_command_and_python_api_take_the_same_objects_with_the_same_defaults():
    """`minigpt grpo --grpo.* --sampling.* --train.*` and `create_grpo_trainer(config=…,
    sampling=…, train=…)` take the same three objects; left out, both start from the same
    defaults (`minigpt.objectives.config`), and the trainer's optimizer runs at that learning rate."""
    import torch

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
    from minigpt.objectives.config import GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS
    from minigpt.rl import create_grpo_trainer

    params = inspect.signature(grpo).parameters
    assert params["grpo"].default == GRPOConfig()
    assert params["sampling"].default == GRPO_SAMPLING
    assert params["train"].default == GRPO_TRAIN_DEFAULTS
    # No algorithm knob is left as a flat parameter of the command, nor a sampling or
    # optimisation field in the algorithm's config.
    algorithm_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert not algorithm_fields & set(params)
    assert not algorithm_fields & ({f.name for f in dataclasses.fields(GRPO_SAMPLING)} | {f.name for f in dataclasses.fields(GRPO_TRAIN_DEFAULTS)})
    torch.manual_seed(0)
    cfg = MiniGPTConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, max_position_embeddings=32)
    trainer = create_grpo_trainer(MiniGPTForCausalLM(cfg))
    assert trainer.sampling == GRPO_SAMPLING and trainer.train == GRPO_TRAIN_DEFAULTS
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {GRPO_TRAIN_DEFAULTS.lr}
    assert trainer.optimizer.defaults["betas"] == (GRPO_TRAIN_DEFAULTS.beta1, GRPO_TRAIN_DEFAULTS.beta2)
    # The API guide's `GRPOConfig(learning_rate=…)` is the one learning rate, not a second one.
    trainer = create_grpo_trainer(MiniGPTForCausalLM(cfg), config=GRPOConfig(learning_rate=3e-5))
    assert trainer.train.lr == 3e-5 and {g["lr"] for g in trainer.optimizer.param_groups} == {3e-5}
