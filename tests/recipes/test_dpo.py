"""`minigpt dpo` end to end on a tiny model: every loss of the family learns a preference that
can be learned (chosen replies say "yes", rejected ones "no"), precomputed reference log-probs
train exactly like a live reference, LoRA keeps the base untouched, a resumed run equals an
uninterrupted one, and bad input gives one-line errors or counted skips.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.model.options import LoraOptions
from minigpt.objectives.config import DPOConfig
from minigpt.cli import main
from minigpt.errors import UserError
from minigpt.model import MiniGPTForCausalLM
from minigpt.recipes.dpo import dpo
from minigpt.tokenizer import train_tokenizer
from minigpt.train.config import TrainConfig
from tiny_models import save_tiny_chat_model

VOCAB = 300
MAX_LENGTH = 48
COLOURS = ["red", "blue", "green", "pink", "black", "white", "grey", "gold"]


def _records() -> list[dict]:
    """48 pairs: 'Is the {thing} {colour}?' -> chosen 'yes, it is {colour}.', rejected 'no, never.'
    in three record formats (string prompt, message lists, HH-RLHF transcript)."""
    recs = []
    for i in range(48):
        thing, colour = ["cat", "car", "cup", "hat"][i % 4], COLOURS[i % 8]
        q, good, bad = f"Is the {thing} {colour}?", f"yes, it is {colour}.", f"no, never {i % 3}."
        if i % 3 == 0:
            recs.append({"prompt": q, "chosen": good, "rejected": bad})
        elif i % 3 == 1:
            recs.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}], "rejected": [{"role": "assistant", "content": bad}]})
        else:
            recs.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
    return recs


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """`(root, base_dir, data_file)`: a random tiny model with a tokenizer trained on the data."""
    root = tmp_path_factory.mktemp("dpo_recipe")
    recs = _records()
    base = root / "base"
    save_tiny_chat_model(base, [json.dumps(r) for r in recs] * 3, vocab_size=VOCAB, max_position_embeddings=64)
    return root, base, _write_jsonl(root / "pairs.jsonl", recs)


def train_config(**kw) -> TrainConfig:
    base = dict(
        max_steps=12, batch_size=8, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, precision="fp32",
        device="cpu", eval_interval=0, eval_batches=0, save_interval=0, log_interval=1, progress=False,
        tensorboard=False, seed=3,
    )
    return TrainConfig(**{**base, **kw})


def run_dpo(env, out: Path, **kw) -> dict:
    _, base, data = env
    train = kw.pop("train", train_config())
    return dpo(model=str(base), data=str(data), out=str(out), max_length=MAX_LENGTH, val_fraction=0.25, train=train, **kw)


def test_dpo_cli_learns_the_preference_and_leaves_the_base(env, tmp_path, capsys):
    """Before training the policy is the reference, so every implicit reward is 0 and held-out
    accuracy (strict >) is 0; after 12 steps the held-out pairs must be ranked correctly."""
    _, base, data = env
    before = _digest(base)
    out = tmp_path / "dpo"
    argv = ["dpo", "--model", str(base), "--data", str(data), "--out", str(out), "--max-length", str(MAX_LENGTH), "--val-fraction", "0.25", "--dpo.beta", "0.5"]
    for k, v in [("max_steps", 12), ("batch_size", 8), ("lr", 3e-3), ("warmup_steps", 0), ("precision", "fp32"), ("device", "cpu"), ("eval_interval", 0), ("save_interval", 0), ("seed", 3)]:
        argv += [f"--train.{k}", str(v)]
    argv += ["--train.progress", "false", "--train.tensorboard", "false"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "48 records -> 48 pairs" in printed and "36 train / 12 held-out pairs" in printed
    assert "implicit-reward accuracy 0.000" in printed  # before training
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_accuracy" in r]
    assert rows[-1]["val_accuracy_before"] == 0.0  # the starting model's figure, logged beside the final one
    assert evals[-1]["val_accuracy"] >= 0.9 and evals[-1]["val_reward_margin"] > 0
    assert _digest(base) == before
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 3  # <|im_end|>


def test_precomputed_reference_trains_exactly_like_a_live_one(env, tmp_path):
    live = run_dpo(env, tmp_path / "live", precompute_ref=False, dpo=DPOConfig(beta=0.5))
    pre = run_dpo(env, tmp_path / "pre", precompute_ref=True, dpo=DPOConfig(beta=0.5))
    for k in ("loss", "val_loss", "val_accuracy", "val_reward_margin"):
        assert pre[k] == pytest.approx(live[k], abs=1e-5), k


@pytest.mark.parametrize("loss,beta", [("ipo", 0.5), ("hinge", 0.5), ("simpo", 2.0), ("orpo", 0.5)])
def test_every_paired_loss_learns_the_preference(env, tmp_path, loss, beta):
    m = run_dpo(env, tmp_path / loss, dpo=DPOConfig(loss_type=loss, beta=beta))
    assert m["val_accuracy"] >= 0.9, m
    assert m["val_loss"] < m["val_loss_before"]


def test_kto_on_pairs_raises_desirable_rewards_above_undesirable(env, tmp_path):
    m = run_dpo(env, tmp_path / "kto", dpo=DPOConfig(loss_type="kto", beta=0.5))
    desirable = m["val_desirable_reward"] / m["val_desirable"]
    undesirable = m["val_undesirable_reward"] / m["val_undesirable"]
    assert desirable > 0 > undesirable
    assert m["val_loss"] < m["val_loss_before"]


def test_lora_dpo_saves_the_adapter_and_uses_the_disabled_adapters_as_reference(env, tmp_path):
    _, base, _ = env
    before = _digest(base)
    m = run_dpo(env, tmp_path / "lora", lora=LoraOptions(rank=4), dpo=DPOConfig(beta=0.5), train=train_config(lr=2e-2))
    assert m["val_accuracy"] >= 0.9
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert _digest(base) == before


def test_resumed_run_equals_an_uninterrupted_one(env, tmp_path):
    """2 + 2 steps (reference log-probs recomputed from the starting model on resume) == 4 steps."""
    straight = run_dpo(env, tmp_path / "straight", dpo=DPOConfig(beta=0.5), train=train_config(max_steps=4, save_interval=2))
    run_dpo(env, tmp_path / "resumed", dpo=DPOConfig(beta=0.5), train=train_config(max_steps=2, save_interval=2))
    resumed = run_dpo(env, tmp_path / "resumed", dpo=DPOConfig(beta=0.5), train=train_config(max_steps=4, save_interval=2), resume=True)
    a = MiniGPTForCausalLM.from_pretrained(tmp_path / "straight").state_dict()
    b = MiniGPTForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)


def _bad(env, tmp_path, capsys, data: Path, *extra: str) -> str:
    _, base, _ = env
    out = tmp_path / "bad"
    code = main(["dpo", "--model", str(base), "--data", str(data), "--out", str(out), "--max-length", str(MAX_LENGTH), "--train.device", "cpu", "--train.progress", "false", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (out / "run.json").exists()
    return err


def test_bad_input_is_a_one_line_error(env, tmp_path, capsys):
    only_bad = _write_jsonl(tmp_path / "none.jsonl", [{"prompt": "a", "chosen": "x"}, {"prompt": "b", "chosen": "same", "rejected": "same"}])
    err = _bad(env, tmp_path, capsys, only_bad)
    assert "no usable" in err and "1 missing_field" in err and "1 identical" in err
    wrong_type = _write_jsonl(tmp_path / "type.jsonl", [{"prompt": "a", "chosen": 3, "rejected": "b"}])
    assert f"{wrong_type}:1" in _bad(env, tmp_path, capsys, wrong_type)
    _, _, data = env
    assert "loss_type must be one of" in _bad(env, tmp_path, capsys, data, "--dpo.loss_type", "dpo3")
    assert "label_smoothing" in _bad(env, tmp_path, capsys, data, "--dpo.loss_type", "ipo", "--dpo.label-smoothing", "0.1")


def test_skipped_and_truncated_records_are_counted(env, tmp_path, capsys):
    """Two of 50 records are unusable (missing rejected, empty reply) and one prompt is far longer
    than max_length: the run goes on and the log counts each."""
    recs = _records() + [
        {"prompt": "Is it?", "chosen": "yes"},
        {"prompt": "Is it?", "chosen": "yes", "rejected": "   "},
        {"prompt": "Is the cat red? " * 40, "chosen": "yes, it is red.", "rejected": "no, never 1."},
    ]
    data = _write_jsonl(tmp_path / "mixed.jsonl", recs)
    _, base, _ = env
    dpo(model=str(base), data=str(data), out=str(tmp_path / "mixed"), max_length=MAX_LENGTH, val_fraction=0.25, train=train_config(max_steps=1))
    printed = capsys.readouterr().out
    assert "51 records -> 49 pairs" in printed
    assert "1 missing_field" in printed and "1 empty_response" in printed
    assert "1 prompts (left" in printed


def test_a_reference_with_another_tokenizer_is_refused(env, tmp_path):
    _, base, data = env
    other = tmp_path / "other"
    train_tokenizer(["completely different words here"] * 50, vocab_size=280, out_dir=other)
    with pytest.raises(UserError) as info:
        dpo(model=str(base), data=str(data), out=str(tmp_path / "r"), reference=str(other), max_length=MAX_LENGTH, train=train_config(max_steps=1))
    assert str(base) in str(info.value) and str(other) in str(info.value) and "reference model" in str(info.value)
