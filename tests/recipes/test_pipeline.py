"""The RLHF pipeline on a tiny config: `run_full_pipeline` writes exactly the pipeline
document's layout (config.json, logs/, sft/, reward_model/, ppo/ with a checkpoint every `save_interval`
iterations and a final model), each stage's output loads, a re-run resumes instead of
redoing finished work, and bad configs are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt import RLHFPipeline, create_rlhf_pipeline
from minigpt.cli import main
from minigpt.errors import UserError
from minigpt.model import MiniGPTForCausalLM
from minigpt.model.reward_model import MiniGPTRewardModel
from tiny_models import save_tiny_chat_model

COLOURS = ["red", "blue", "green", "pink", "black", "white", "grey", "gold"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A random tiny 'pretrained' model with a tokenizer, and the three data files."""
    root = tmp_path_factory.mktemp("pipeline")
    sft = [{"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": COLOURS[i % 8]}]} for i in range(16)]
    pairs = [{"prompt": f"Is it {c}?", "chosen": f"yes, {c}.", "rejected": "no."} for c in COLOURS * 2]
    prompts = [{"prompt": f"Say {c}."} for c in COLOURS * 2]
    base = root / "base"
    save_tiny_chat_model(base, [json.dumps(r) for r in sft + pairs + prompts] * 3)
    return {
        "root": root,
        "base": base,
        "sft": _write_jsonl(root / "sft.jsonl", sft),
        "pairs": _write_jsonl(root / "pairs.jsonl", pairs),
        "prompts": _write_jsonl(root / "prompts.jsonl", prompts),
        "heldout": _write_jsonl(root / "heldout.jsonl", sft[:6]),
    }


def _config(env, save_dir: Path, **kw) -> dict:
    c = {
        "model_name": str(env["base"]), "device": "cpu",
        "sft_data_path": str(env["sft"]), "sft_epochs": 1, "sft_batch_size": 8, "sft_lr": 1e-3,
        "reward_data_path": str(env["pairs"]), "reward_epochs": 1, "reward_batch_size": 8, "reward_lr": 1e-3,
        "freeze_reward_backbone": False,
        "ppo_data_path": str(env["prompts"]), "ppo_iterations": 4, "ppo_lr_policy": 1e-4, "ppo_lr_value": 1e-3,
        "ppo_batch_size": 4, "ppo_mini_batch_size": 2, "ppo_epochs": 2, "ppo_max_new_tokens": 6,
        "max_length": 64, "save_dir": str(save_dir), "save_interval": 2, "log_level": "INFO",
        "eval_data_path": str(env["heldout"]), "eval_metrics": "bpb,rouge,win_rate", "eval_max_new_tokens": 4,
    }
    c.update(kw)
    return c


def test_full_pipeline_writes_the_spec_layout(env):
    save = env["root"] / "rlhf"
    cfg_file = env["root"] / "rlhf.json"
    cfg_file.write_text(json.dumps(_config(env, save)))
    assert main(["pipeline", str(cfg_file)]) == 0
    for name in ("config.json", "logs", "sft", "reward_model", "ppo"):
        assert (save / name).exists(), name
    assert json.loads((save / "config.json").read_text())["ppo_iterations"] == 4
    log = (save / "logs" / "pipeline.log").read_text()
    assert "[sft]" in log and "[reward]" in log and "[ppo]" in log
    assert (save / "logs" / "ppo.log").stat().st_size > 0
    MiniGPTForCausalLM.from_pretrained(save / "sft")
    MiniGPTRewardModel.from_pretrained(save / "reward_model")
    policy = MiniGPTForCausalLM.from_pretrained(save / "ppo")
    MiniGPTRewardModel.from_pretrained(save / "ppo" / "value_model")
    steps = sorted(p.name for p in (save / "ppo" / "checkpoints").iterdir() if p.name.startswith("step_"))
    # ppo_iterations counts rollouts (as the pipeline document counts them): 4 iterations × 2 epochs × 2 micro-batches of 2
    # completions = 16 optimizer updates; a checkpoint every save_interval = 2 iterations.
    assert RLHFPipeline(_config(env, save)).ppo_updates_per_iteration() == 4
    assert steps == ["step_00000008", "step_00000016"]
    # The critic started from the SFT model (a new value head on its decoder), not the reward model.
    assert json.loads((save / "ppo" / "run.json").read_text())["value_model"] == str((save / "sft").resolve())
    sft_policy = MiniGPTForCausalLM.from_pretrained(save / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(policy.state_dict().values(), sft_policy.state_dict().values()))
    rows = [json.loads(x) for x in (save / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/mean_reward" in r] == list(range(1, 17))
    # The evaluation stage: the PPO policy against the SFT model, judged by the reward model.
    report = json.loads((save / "eval" / "report.json").read_text())
    assert set(report) >= {"bpb", "rouge1", "rougeL", "win_rate"} and report["n"]["win_rate"] == 6
    assert report["settings"]["model"] == str(save / "ppo") and report["settings"]["reference_model"] == str(save / "sft")
    assert 0.0 <= report["win_rate"] <= 1.0 and "[eval] done" in (save / "logs" / "pipeline.log").read_text()

    # A second run finds every stage finished and redoes nothing: the PPO policy is unchanged.
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    results = create_rlhf_pipeline(cfg_file).run_full_pipeline()
    assert set(results) == {"sft", "reward", "ppo", "eval"}
    again = MiniGPTForCausalLM.from_pretrained(save / "ppo").state_dict()
    assert all(torch.equal(before[k], again[k]) for k in before)


def test_stages_need_their_data_and_their_predecessors(env, tmp_path):
    p = RLHFPipeline(_config(env, tmp_path / "x", reward_data_path=None))
    with pytest.raises(UserError, match="'reward_data_path' is required"):
        p.run_reward_training()
    with pytest.raises(UserError, match="run_sft"):
        RLHFPipeline(_config(env, tmp_path / "y")).run_ppo_training()


def test_bad_configs_are_clear_errors(env, tmp_path, capsys):
    with pytest.raises(UserError, match=r"unknown field\(s\) \['ppo_iteration'\]"):
        create_rlhf_pipeline({"ppo_iteration": 3})
    with pytest.raises(UserError, match="log_level"):
        create_rlhf_pipeline({"log_level": "LOUD"})
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "save_dir": "x",\n  oops\n}')
    assert main(["pipeline", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:3" in err and "invalid JSON" in err
    with pytest.raises(UserError, match="neither a model directory nor a preset"):
        RLHFPipeline(_config(env, tmp_path / "z", model_name="huge")).run_sft()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sft_lr", None, "field 'sft_lr': input should be a valid number, got None"),
        ("sft_batch_size", "eight", "field 'sft_batch_size': input should be a valid integer"),
        ("sft_data_path", ["a.jsonl", "b.jsonl"], "field 'sft_data_path': input should be a valid string"),
        ("model_name", 5, "field 'model_name': input should be a valid string, got 5"),
    ],
)
def test_null_or_wrongly_typed_fields_are_one_clear_line(tmp_path, capsys, field, value, message):
    """Each used to surface later as a TypeError deep inside a stage (or train on a wrong value)."""
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({field: value}))
    with pytest.raises(UserError, match=f"^{config}: " + message.replace("(", r"\(").replace("[", r"\[")):
        create_rlhf_pipeline(str(config))
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_lossless_conversions_are_kept():
    assert create_rlhf_pipeline({"sft_epochs": 2, "sft_lr": 1}).config.sft_epochs == 2


def test_the_example_config_runs_with_tiny_data(env):
    """`configs/pipeline/rlhf.json`, the file the README points to, with its data paths and
    step counts swapped for tiny ones: every stage runs and the layout is written."""
    example = json.loads((Path(__file__).parents[2] / "configs" / "pipeline" / "rlhf.json").read_text())
    save = env["root"] / "example"
    example.update({
        "model_name": str(env["base"]), "device": "cpu", "sft_data_path": str(env["sft"]), "reward_data_path": str(env["pairs"]),
        "ppo_data_path": str(env["prompts"]), "eval_data_path": str(env["heldout"]), "save_dir": str(save),
        "ppo_iterations": 2, "ppo_batch_size": 2, "ppo_mini_batch_size": 2, "ppo_epochs": 1, "ppo_max_new_tokens": 4,
        "max_length": 64, "eval_max_new_tokens": 4, "save_interval": 1, "sft_lr": 1e-3, "reward_lr": 1e-3,
    })
    cfg_file = env["root"] / "example.json"
    cfg_file.write_text(json.dumps(example))
    assert main(["pipeline", str(cfg_file)]) == 0
    for name in ("config.json", "sft", "reward_model", "ppo", "eval/report.json"):
        assert (save / name).exists(), name
    written = json.loads((save / "config.json").read_text())
    assert written["kl_coef"] == 0.1 and written["seed"] == 1337  # the example's own values reached the run
