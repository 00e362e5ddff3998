"""One default per knob: the Python API and the CLI start from the same values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from minigpt.losses.names import DEFAULT_BETA, PREFERENCE_LOSSES
from minigpt.recipes.dpo import dpo
from minigpt.recipes.grpo import grpo
from minigpt.objectives.config import GRPOConfig
from minigpt.objectives.config import DPOConfig


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


def _twins():
    """command -> (the recipe, its algorithm group (None: no group), the config class, the
    sampling and train defaults (None: no sampling), a factory of the Python API's trainer that
    takes an optional config)."""
    from minigpt.model.reward_model import create_reward_model
    from minigpt.objectives.config import (
        CONTRASTIVE_TRAIN_DEFAULTS, DPO_TRAIN_DEFAULTS, GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, MLM_TRAIN_DEFAULTS, PPO_SAMPLING,
        PPO_TRAIN_DEFAULTS, REWARD_TRAIN_DEFAULTS, ContrastiveConfig, MLMConfig, RLHFConfig,
    )
    from minigpt.pretraining import create_contrastive_pretrainer, create_mlm_pretrainer
    from minigpt.recipes.contrastive import contrastive
    from minigpt.recipes.mlm import mlm
    from minigpt.recipes.ppo import ppo
    from minigpt.recipes.reward import reward
    from minigpt.rl import RewardModelTrainer, create_dpo_trainer, create_grpo_trainer, create_rlhf_trainer

    def zero(prompts, completions, **kw):
        return [0.0] * len(completions)

    return {
        "dpo": (dpo, "dpo", DPOConfig, None, DPO_TRAIN_DEFAULTS, lambda config=None: create_dpo_trainer(_tiny_policy(), config=config)),
        "grpo": (grpo, "grpo", GRPOConfig, GRPO_SAMPLING, GRPO_TRAIN_DEFAULTS, lambda config=None: create_grpo_trainer(_tiny_policy(), config=config)),
        "ppo": (ppo, "ppo", RLHFConfig, PPO_SAMPLING, PPO_TRAIN_DEFAULTS,
                lambda config=None: create_rlhf_trainer(_tiny_policy(), config=config, reward_funcs=zero)),
        "reward": (reward, None, None, None, REWARD_TRAIN_DEFAULTS,
                   lambda config=None: RewardModelTrainer(create_reward_model(_tiny_policy(), hidden_size=16))),
        "mlm": (mlm, "mlm", MLMConfig, None, MLM_TRAIN_DEFAULTS, lambda config=None: create_mlm_pretrainer(_tiny_policy(), 16, config)),
        "contrastive": (contrastive, "contrastive", ContrastiveConfig, None, CONTRASTIVE_TRAIN_DEFAULTS,
                        lambda config=None: create_contrastive_pretrainer(_tiny_policy(), 16, config)),
    }


@pytest.mark.parametrize("command", ["dpo", "grpo", "ppo", "reward", "mlm", "contrastive"])
def test_command_and_python_api_take_the_same_objects_with_the_same_defaults(command):
    """`minigpt grpo --grpo.* --sampling.* --train.*` and `create_grpo_trainer(config=…,
    sampling=…, train=…)` (and the DPO and PPO twins) take the same objects; left out, both
    start from the same defaults (`minigpt.objectives.config`), and the trainer's optimizer runs
    at that learning rate."""
    recipe, group, config_class, sampling, train, make = _twins()[command]
    params = inspect.signature(recipe).parameters
    if group is not None:
        assert params[group].default == config_class()
    if sampling is not None:
        assert params["sampling"].default == sampling
    assert params["train"].default == train
    # No algorithm knob is left as a flat parameter of the command, nor a sampling or
    # optimisation field in the algorithm's config.
    algorithm_fields = {f.name for f in dataclasses.fields(config_class)} if config_class else set()
    assert not algorithm_fields & set(params)
    assert not algorithm_fields & {f.name for f in dataclasses.fields(train)}
    if sampling is not None:  # (contrastive's `temperature` is InfoNCE's τ, not a sampling knob)
        assert not algorithm_fields & {f.name for f in dataclasses.fields(sampling)}
    trainer = make()
    assert trainer.train == train and (sampling is None or trainer.sampling == sampling)
    policy_groups = [g for g in trainer.optimizer.param_groups if not g.get("lr_scale")]
    assert {g["lr"] for g in policy_groups} == {train.lr}
    assert trainer.optimizer.defaults["betas"] == (train.beta1, train.beta2)
    if config_class is None:
        return
    # The API guide's `…Config(learning_rate=…)` is the one learning rate, not a second one.
    trainer = make(config_class(learning_rate=3e-5))
    assert trainer.train.lr == 3e-5
    assert {g["lr"] for g in trainer.optimizer.param_groups if not g.get("lr_scale")} == {3e-5}
