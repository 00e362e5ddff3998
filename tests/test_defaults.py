"""One default per knob: the Python API and the CLI start from the same values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from minigpt.losses.preference import DEFAULT_BETA, PREFERENCE_LOSSES
from minigpt.recipes.dpo import dpo
from minigpt.recipes.grpo import grpo
from minigpt.rl import DPOConfig, GRPOConfig


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_dpo_beta_default_is_the_losss_own_in_both(loss):
    """SimPO's β was 2.0 on the CLI and 0.1 in DPOConfig; both now take it from one table."""
    assert inspect.signature(dpo).parameters["beta"].default is None  # resolved through DEFAULT_BETA
    assert DPOConfig(loss_type=loss).beta == DEFAULT_BETA[loss]
    assert DEFAULT_BETA["simpo"] == 2.0 and DEFAULT_BETA["sigmoid"] == 0.1


def test_grpo_defaults_agree_between_cli_and_python_api():
    """β was 0.0 on the CLI and 0.04 in GRPOConfig; every knob both expose now starts equal."""
    params = inspect.signature(grpo).parameters
    # The CLI's knobs: plain parameters, and the fields of its option groups (`--sampling.*`),
    # which stand in for their deprecated flat spellings (default None).
    cli = {name: p.default for name, p in params.items() if not dataclasses.is_dataclass(p.default)}
    for p in params.values():
        if dataclasses.is_dataclass(p.default) and p.name != "train":
            cli.update(dataclasses.asdict(p.default))
    api = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    shared = sorted(set(cli) & set(api))
    assert "beta" in shared and "temperature" in shared and GRPOConfig().beta == 0.0
    differ = {k: (cli[k], api[k]) for k in shared if cli[k] != api[k]}
    assert differ == {}
