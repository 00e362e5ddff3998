"""The `minigpt ppo` recipe end to end on a tiny model: it trains an `ActorCritic` through the one
training loop, writes a policy that `AutoModelForCausalLM` loads plus the critic in
`OUT/value_model/`, logs the PPO figures every step, gives the critic its own learning rate,
resumes exactly (2 + 2 steps == 4 steps, the adaptive KL coefficient included), and refuses a
reward model or value model with another tokenizer.

One tiny base model (random weights, hidden 32, 2 layers, vocabulary ~300) and a reward model
built from it are written once per module; fp32 on the CPU, one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt import cli
from minigpt.inference.options import SamplingOptions
from minigpt.objectives.config import RLHFConfig
from minigpt.errors import UserError
from minigpt.model.reward_model import MiniGPTRewardModel
from minigpt.recipes.ppo import ppo
from minigpt.model.reward_model import create_reward_model
from minigpt.train.config import TrainConfig
from tiny_models import save_tiny_chat_model

WORDS = "good great nice bad awful sad it is very so the day was and".split()
LOGGED = ("mean_reward", "mean_kl", "kl_coef", "ppo_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def _model_dir(root: Path, name: str, texts: list[str], seed: int) -> tuple[Path, Path]:
    """`(policy_dir, reward_model_dir)`: a random causal LM and a reward model built from it,
    each saved with a tokenizer trained on `texts`."""
    base = root / name
    tok, policy = save_tiny_chat_model(base, texts, seed=seed)
    rm = create_reward_model(policy, hidden_size=32)
    for p in rm.score.parameters():
        torch.nn.init.normal_(p, std=0.5)
    rm_dir = root / f"{name}_rm"
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    return base, rm_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """`(root, base_dir, reward_model_dir, prompts_file)`."""
    root = tmp_path_factory.mktemp("ppo_recipe")
    texts = [" ".join(WORDS)] * 30 + [f"What about item {i}?" for i in range(40)]
    base, rm_dir = _model_dir(root, "base", texts, seed=0)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What about item {i}?"}) + "\n" for i in range(12)), encoding="utf-8")
    return root, base, rm_dir, data


@pytest.fixture(autouse=True)
def ppo_command(monkeypatch):
    """Route `minigpt ppo` through `minigpt.cli.main` whether or not cli.py registers it yet
    (the lead's file); once it does, this changes nothing."""
    original = cli._commands
    monkeypatch.setattr(cli, "_commands", lambda: {**original(), "ppo": ppo})


def train_config(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
                precision="fp32", device="cpu", eval_interval=0, eval_batches=0, save_interval=0, log_interval=1,
                progress=False, tensorboard=False, seed=3)
    return TrainConfig(**{**base, **kw})


def run(env, out: Path, steps: int = 4, resume: bool = False, **kw) -> dict:
    _, base, rm_dir, data = env
    args = dict(reward_model=str(rm_dir), ppo=RLHFConfig(ppo_epochs=2), sampling=SamplingOptions(max_new_tokens=8), max_prompt_length=32, val_fraction=0.0)
    return ppo(str(base), str(data), out=str(out), train=train_config(max_steps=steps), resume=resume, **{**args, **kw})


def metrics_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_recipe_writes_a_loadable_policy_and_value_model(env, tmp_path):
    """4 updates (2 rollouts × 2 epochs). OUT loads as a causal LM equal to the last checkpoint's
    policy and unlike the base; OUT/value_model loads as a reward model, trained away from the
    reward model it was copied from, whose own files stay untouched. Every step logs the PPO
    figures; a rollout's first update (steps 1 and 3) has ratio exactly 1, its second does not;
    kl_coef stays at 0.1 (not adaptive)."""
    from transformers import AutoModelForCausalLM

    root, base, rm_dir, _ = env
    rm_before = (rm_dir / "model.safetensors").read_bytes()
    out = tmp_path / "out"
    metrics = run(env, out, val_fraction=0.25)
    assert metrics["steps"] == 4 and "val_reward" in metrics and "val_reward_before" in metrics
    policy = AutoModelForCausalLM.from_pretrained(str(out))
    final = load_file(out / "checkpoints" / "step_00000004" / "model.safetensors")
    for name, p in policy.state_dict().items():
        if name in final:
            assert torch.equal(p, final[name]), name
    start = load_file(base / "model.safetensors")
    assert not torch.equal(policy.state_dict()["model.norm.weight"], start["model.norm.weight"])
    critic = MiniGPTRewardModel.from_pretrained(str(out / "value_model"))
    rm_weights = load_file(rm_dir / "model.safetensors")
    assert not torch.equal(critic.state_dict()["score.layers.0.weight"], rm_weights["score.layers.0.weight"])
    assert (rm_dir / "model.safetensors").read_bytes() == rm_before
    lines = [x for x in metrics_lines(out) if "train/loss" in x]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    for x in lines:
        for key in LOGGED:
            assert f"train/{key}" in x, (x["step"], key)
        assert x["train/kl_coef"] == 0.1
    assert [x["train/approx_kl"] == 0.0 for x in lines] == [True, False, True, False]
    assert lines[0]["train/clip_fraction"] == 0.0 and lines[0]["train/ratio_mean"] == 1.0


def test_value_lr_reaches_the_optimizer(env, tmp_path):
    """--ppo.value_learning_rate 5e-3 with train.lr 1e-3 (constant schedule): the checkpointed optimizer holds
    the critic's groups at 5e-3 (lr_scale 5) and the policy's at 1e-3. Needs the loop to pass
    `lr=config.lr` to `param_groups`."""
    out = tmp_path / "out"
    run(env, out, steps=2, ppo=RLHFConfig(ppo_epochs=2, value_learning_rate=5e-3))
    state = torch.load(out / "checkpoints" / "step_00000002" / "trainer_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert sorted({round(g["lr"], 12) for g in groups if g.get("lr_scale")}) == [5e-3]
    assert sorted({round(g["lr"], 12) for g in groups if not g.get("lr_scale")}) == [1e-3]


@pytest.mark.parametrize("adaptive_kl", [False, True])
def test_resume_equals_an_uninterrupted_run(env, tmp_path, adaptive_kl):
    """2 steps, then --resume to 4, gives bit-identical policy and critic weights and the same
    logged figures as 4 steps in one go (a rollout is 2 updates, so the checkpoint at step 2
    ends one). With adaptive_kl (target 0.01, horizon 8: the coefficient moves by 10 % per
    rollout) the KL coefficient must come back from the checkpoint too."""
    kw = dict(ppo=RLHFConfig(ppo_epochs=2, adaptive_kl=adaptive_kl, kl_target=0.01, kl_horizon=8))
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(env, whole, steps=4, **kw)
    run(env, split, steps=2, **kw)
    run(env, split, steps=4, resume=True, **kw)
    for f in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(whole / f), load_file(split / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    keys = ("train/kl_coef", "train/mean_reward", "train/mean_kl", "train/ppo_loss", "train/value_loss")
    pick = lambda out: [tuple(x[k] for k in keys) for x in metrics_lines(out) if "train/loss" in x]  # noqa: E731
    assert pick(whole) == pick(split)
    coefs = [c[0] for c in pick(whole)]
    assert (coefs[2] != coefs[0]) == adaptive_kl  # the second rollout's coefficient moved only when adaptive


def test_reward_or_value_model_with_another_tokenizer_is_refused(env, tmp_path):
    """A reward model (or critic) trained with another vocabulary would score garbage: a
    UserError naming both directories."""
    root, base, _, data = env
    _, other_rm = _model_dir(root, f"other_{tmp_path.name}", [f"zebra quantum {i} xylophone" for i in range(50)], seed=4)
    with pytest.raises(UserError) as err:
        ppo(str(base), str(data), out=str(tmp_path / "a"), reward_model=str(other_rm), train=train_config())
    assert str(base) in str(err.value) and str(other_rm) in str(err.value) and "reward model" in str(err.value)
    _, rm_dir = env[1], env[2]
    with pytest.raises(UserError) as err:
        ppo(str(base), str(data), out=str(tmp_path / "b"), reward_model=str(rm_dir), value_model=str(other_rm), train=train_config())
    assert str(other_rm) in str(err.value) and "value model" in str(err.value)
    with pytest.raises(UserError, match="--reward_model"):
        ppo(str(base), str(data), out=str(tmp_path / "c"), train=train_config())


def test_cli_ppo_with_rule_rewards_and_dashed_options(env, tmp_path, capsys):
    """`minigpt ppo` parses its signature through jsonargparse (dashed options, the nested
    train config) and runs with a rule reward and no reward model at all: exit 0, the critic
    (built from the policy's decoder) is saved as a reward model with the policy's vocabulary,
    and the rule reward is logged per step."""
    _, base, _, data = env
    out = tmp_path / "cli"
    argv = ["ppo", "--model", str(base), "--data", str(data), "--out", str(out), "--reward", "length",
            "--sampling.max-new-tokens", "6", "--max-prompt-length", "32", "--ppo.ppo-epochs", "1", "--val-fraction", "0",
            "--train.max_steps", "2", "--train.batch_size", "4", "--train.precision", "fp32", "--train.device", "cpu",
            "--train.progress", "false", "--train.tensorboard", "false", "--train.lr", "1e-3"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    critic = MiniGPTRewardModel.from_pretrained(str(out / "value_model"))
    start = load_file(base / "model.safetensors")
    assert critic.config.architectures == ["MiniGPTRewardModel"]
    assert critic.state_dict()["model.embed_tokens.weight"].shape == start["model.embed_tokens.weight"].shape
    lines = [x for x in metrics_lines(out) if "train/loss" in x]
    assert len(lines) == 2 and "train/reward/length" in lines[0]
