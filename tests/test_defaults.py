"""One default per knob: the Python API and the CLI start from the same values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from minigpt.losses.names import DEFAULT_BETA, PREFERENCE_LOSSES
from minigpt.recipes.dpo import dpo
from minigpt.recipes.grpo import grpo
from minigpt.objectives.config import GRPOConfig
from minigpt.objectives.config import GRPO_SAMPLING, DPOConfig


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_dpo_beta_default_is_the_losss_own_in_both(loss):
    """SimPO's β was 2.0 on the CLI and 0.1 in DPOConfig; both now take it from one table, and
    `--dpo.loss_type simpo` alone (the command's default DPOConfig with another loss) gets 2.0."""
    assert inspect.signature(dpo).parameters["dpo"].default.beta is None  # resolved through DEFAULT_BETA
    assert DPOConfig(loss_type=loss).resolved().beta == DEFAULT_BETA[loss]
    assert dataclasses.replace(inspect.signature(dpo).parameters["dpo"].default, loss_type=loss).resolved().beta == DEFAULT_BETA[loss]
    assert DEFAULT_BETA["simpo"] == 2.0 and DEFAULT_BETA["sigmoid"] == 0.1


def _tiny_policy():
    import torch

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM

    torch.manual_seed(0)
    cfg = MiniGPTConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, eos_token_id=1)
    return MiniGPTForCausalLM(cfg)


def _online_rl_twins():
    """(command, its algorithm group, the config class, its sampling and train defaults, a
    factory of the Python API's trainer with an optional config)."""
    from minigpt.objectives.config import DPO_TRAIN_DEFAULTS, GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, PPO_SAMPLING, PPO_TRAIN_DEFAULTS, RLHFConfig
    from minigpt.recipes.ppo import ppo
    from minigpt.rl import create_dpo_trainer, create_grpo_trainer, create_rlhf_trainer

    return {
        "dpo": (dpo, "dpo", DPOConfig, None, DPO_TRAIN_DEFAULTS, lambda config=None: create_dpo_trainer(_tiny_policy(), config=config)),
        "grpo": (grpo, "grpo", GRPOConfig, GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, lambda config=None: create_grpo_trainer(_tiny_policy(), config=config)),
        "ppo": (ppo, "ppo", RLHFConfig, PPO_SAMPLING, PPO_TRAIN_DEFAULTS,
                lambda config=None: create_rlhf_trainer(_tiny_policy(), config=config, reward_funcs=lambda prompts, completions, **kw: [0.0] * len(completions))),
    }


@pytest.mark.parametrize("command", ["dpo", "grpo", "ppo"])
def test_command_and_python_api_take_the_same_objects_with_the_same_defaults(command):
    """`minigpt grpo --grpo.* --sampling.* --train.*` and `create_grpo_trainer(config=…,
    sampling=…, train=…)` (and the DPO and PPO twins) take the same objects; left out, both
    start from the same defaults (`minigpt.objectives.config`), and the trainer's optimizer runs
    at that learning rate."""
    recipe, group, config_class, sampling, train, make = _online_rl_twins()[command]
    params = inspect.signature(recipe).parameters
    assert params[group].default == config_class()
    if sampling is not None:
        assert params["sampling"].default == sampling
    assert params["train"].default == train
    # No algorithm knob is left as a flat parameter of the command, nor a sampling or
    # optimisation field in the algorithm's config.
    algorithm_fields = {f.name for f in dataclasses.fields(config_class)}
    assert not algorithm_fields & set(params)
    assert not algorithm_fields & ({f.name for f in dataclasses.fields(GRPO_SAMPLING)} | {f.name for f in dataclasses.fields(train)})
    trainer = make()
    assert trainer.train == train and (sampling is None or trainer.sampling == sampling)
    policy_groups = [g for g in trainer.optimizer.param_groups if not g.get("lr_scale")]
    assert {g["lr"] for g in policy_groups} == {train.lr}
    assert trainer.optimizer.defaults["betas"] == (train.beta1, train.beta2)
    # The API guide's `…Config(learning_rate=…)` is the one learning rate, not a second one.
    trainer = make(config_class(learning_rate=3e-5))
    assert trainer.train.lr == 3e-5
    assert {g["lr"] for g in trainer.optimizer.param_groups if not g.get("lr_scale")} == {3e-5}
