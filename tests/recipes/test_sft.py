"""The SFT and distillation recipes end to end: `minigpt sft` (full and LoRA), resume of an
adapter run, packing vs padding, reasoning-tag weighting, `minigpt merge` on an SFT adapter,
`minigpt distill`, and the one-line user errors of the CLI.

Everything runs on one tiny base model written once per module (random weights: SFT only has
to move its held-out assistant-token loss, not make it good) and a 40-record JSONL file that
mixes the messages, Alpaca and ShareGPT formats, `<think>…</think><answer>…</answer>` replies
and two records without an assistant turn. Training is fp32 on the CPU so that quantities
that must agree can be compared tightly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import minigpt  # noqa: F401 — registers MiniGPT with the Auto classes
from minigpt.objectives.config import DistillConfig
from minigpt.model.options import LoraOptions
from minigpt.cli import _underscore_options, main
from minigpt.errors import UserError
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.recipes.distill import distill
from minigpt.model.options import ModelConfig
from minigpt.recipes.sft import sft
from minigpt.tokenizer import IM_END, REASONING_TAGS, train_tokenizer
from minigpt.train.config import TrainConfig

VOCAB = 320
CONTEXT = 128
MAX_LENGTH = 64
N_NO_ASSISTANT = 2  # records written below without an assistant turn


def _records() -> list[dict]:
    """40 records: 16 arithmetic with reasoning tags, 8 messages (with system), 7 Alpaca,
    7 ShareGPT, and N_NO_ASSISTANT without a reply. Every used one renders to < 64 tokens."""
    recs = []
    for i in range(16):
        a, b = 3 + i, 20 + 2 * i
        recs.append({"messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"},
        ]})
    for i in range(8):
        recs.append({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Name colour {i}."},
            {"role": "assistant", "content": ["red", "blue", "green", "pink"][i % 4] + " it is."},
        ]})
    for i in range(7):
        recs.append({"instruction": "Repeat the word", "input": f"cat{i}", "output": f"cat{i} cat{i}"})
    for i in range(7):
        recs.append({"conversations": [{"from": "human", "value": f"Hi number {i}"}, {"from": "gpt", "value": f"Hello {i}!"}]})
    recs.append({"messages": [{"role": "user", "content": "Anyone there?"}]})
    recs.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Still no reply"}]})
    assert len(recs) == 40
    return recs


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _digest(directory: Path) -> dict[str, str]:
    """sha256 of every file directly in `directory` (weights, config, tokenizer)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _model_dir(root: Path, name: str, texts: list[str], seed: int, vocab: int = VOCAB, **arch) -> Path:
    """A saved model directory (random weights) with a tokenizer trained on `texts` beside it."""
    out = root / name
    tok = train_tokenizer(texts, vocab_size=vocab, out_dir=out)
    torch.manual_seed(seed)
    cfg = MiniGPTConfig.from_preset(
        "tiny",
        **{
            "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": CONTEXT,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None, **arch,
        },
    )
    MiniGPTForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """`(root, base_dir, data_file)`; base_dir holds config, weights and tokenizer."""
    root = tmp_path_factory.mktemp("sft_recipe")
    recs = _records()
    texts = [json.dumps(r) for r in recs] * 3 + ["What is plus think answer assistant user system"] * 20
    # initializer_range 0.1 (not 0.02): attention then matters enough that a mask letting
    # tokens see another conversation moves the loss well beyond the tolerances used below
    base = _model_dir(root, "base", texts, seed=0, initializer_range=0.1)
    data = _write_jsonl(root / "chat.jsonl", recs)
    return root, base, data


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def train_config(**kw) -> TrainConfig:
    """A few fp32 CPU steps at a constant learning rate (no warmup, no decay), no weight decay."""
    base = dict(
        max_steps=4, batch_size=4, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, precision="fp32",
        device="cpu", eval_interval=0, eval_batches=0, save_interval=0, log_interval=1, progress=False,
        tensorboard=False, seed=3,
    )
    return TrainConfig(**{**base, **kw})


def train_argv(**kw) -> list[str]:
    """`train_config(**kw)` as dotted CLI options (with dashes, as users type them)."""
    cfg = train_config(**kw)
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or f.name == "compile":
            continue
        argv += [f"--train.{f.name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def run_sft(env, out: Path, **kw) -> dict:
    _, base, data = env
    train = kw.pop("train", train_config())
    return sft(model=str(base), data=str(data), out=str(out), max_length=MAX_LENGTH, val_fraction=0.2, train=train, **kw)


@torch.no_grad()
def probe_logits(model, vocab: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(5))  # (2, 12)
    return model.eval()(input_ids=ids, use_cache=False).logits.float()  # (2, 12, V)


# ------------------------------------------------------------------------------- full SFT


def test_cli_full_sft_writes_a_chat_model(env, capsys):
    """`minigpt sft` with dashed options: exit 0, OUT loads as a model whose generation config
    stops at `<|im_end|>`, and the two reply-less records are reported as skipped."""
    from transformers import AutoModelForCausalLM

    from minigpt.tokenizer import load_tokenizer

    root, base, data = env
    out = root / "cli_full"
    argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--max-length", str(MAX_LENGTH),
            "--val-fraction", "0.2", *train_argv(max_steps=3)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"skipped {N_NO_ASSISTANT} without an assistant turn" in printed
    assert "40 records -> 38 conversations used" in printed  # 40 written, 2 skipped
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    tok = load_tokenizer(out)
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end != tok.eos_token_id  # so the check below tells the two apart
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == im_end
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    # the weights moved: full SFT trains every weight, including the embedding
    base_model = AutoModelForCausalLM.from_pretrained(base)
    assert not torch.equal(model.model.embed_tokens.weight, base_model.model.embed_tokens.weight)


def test_packing_and_padding_agree_before_training_and_sft_lowers_val_loss(env):
    """Packed attention never crosses conversations and position ids restart per
    conversation, so the starting model's held-out loss over the same held-out conversations
    (same seed -> same split; eval_batches 0 -> the whole split) is the same number whether
    they are packed into blocks or padded one per row, up to fp32 summation order (~1e-7
    here; attending across conversations moves it by > 1e-4). Both runs then lower it."""
    root = env[0]
    packed = run_sft(env, root / "packed", packing=True, train=train_config(max_steps=6))
    padded = run_sft(env, root / "padded", packing=False, train=train_config(max_steps=6))
    assert packed["val_loss_before"] == pytest.approx(padded["val_loss_before"], abs=1e-5)
    # a random model over 320 ids starts near ln(320) nats per token
    assert abs(packed["val_loss_before"] - math.log(VOCAB)) < 1.0
    for m in (packed, padded):
        assert m["steps"] == 6
        assert m["val_loss"] < m["val_loss_before"] - 0.05


def test_reasoning_tag_weight_changes_the_training_loss_not_the_eval(env, tmp_path):
    """The first step's loss is computed before any update, on the same batch; weighting the
    four tags ×10 changes it (`Σ w·CE / Σ w`) unless the batch holds no tag target. The
    pre-training evaluation is unweighted, so it is identical. Control: on data without
    reasoning tags the two weights give the same first-step loss."""
    root = env[0]
    one = run_sft(env, tmp_path / "w1", reasoning_tag_weight=1.0, train=train_config(max_steps=1, batch_size=8))
    ten = run_sft(env, tmp_path / "w10", reasoning_tag_weight=10.0, train=train_config(max_steps=1, batch_size=8))
    assert one["val_loss_before"] == ten["val_loss_before"]
    assert abs(one["loss"] - ten["loss"]) > 1e-3

    plain = _write_jsonl(root / "plain.jsonl", [r for r in _records() if "instruction" in r or "conversations" in r])
    assert not any(t in plain.read_text() for t in REASONING_TAGS)
    kw = dict(model=str(env[1]), data=str(plain), max_length=MAX_LENGTH, val_fraction=0.2, train=train_config(max_steps=1, batch_size=8))
    p1 = sft(out=str(tmp_path / "p1"), reasoning_tag_weight=1.0, **kw)
    p10 = sft(out=str(tmp_path / "p10"), reasoning_tag_weight=10.0, **kw)
    assert p1["loss"] == pytest.approx(p10["loss"], abs=1e-6)


# ------------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_run(env):
    """`minigpt sft --lora.rank 4` (dashed option names elsewhere), its OUT, and the base directory's digest before it."""
    root, base, data = env
    before = _digest(base)
    out = root / "lora"
    argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--max-length", str(MAX_LENGTH),
            "--val-fraction", "0.2", "--lora.rank", "4", "--lora.alpha", "8", *train_argv(max_steps=4, lr=3e-2)]
    assert main(argv) == 0
    return out, before


def test_lora_sft_saves_the_adapter_alone_and_leaves_the_base(env, lora_run):
    from safetensors import safe_open

    from minigpt.inference.loading import load_model_and_tokenizer

    _, base, _ = env
    out, before = lora_run
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert _digest(base) == before  # the frozen base on disk is untouched
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    # The base is recorded relative to the adapter, also in its checkpoints (one level deeper).
    assert not Path(cfg["base_model_name_or_path"]).is_absolute()
    assert (out / cfg["base_model_name_or_path"]).resolve() == base.resolve()
    for step in (out / "checkpoints").glob("step_*"):
        recorded = json.loads((step / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert (step / recorded).resolve() == base.resolve()
        assert (step / "adapter_base.json").read_text() == (out / "adapter_base.json").read_text()
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        # 7 block linears x 2 layers, an A and a B each; only LoRA tensors
        assert len(keys) == 7 * 2 * 2 and all("lora_A" in k or "lora_B" in k for k in keys)
        assert any(f.get_tensor(k).abs().max() > 0 for k in keys if "lora_B" in k)  # B left 0: trained
    model, tok = load_model_and_tokenizer(out, device="cpu")
    base_model, _ = load_model_and_tokenizer(base, device="cpu")
    assert len(tok) == base_model.config.vocab_size
    assert not torch.allclose(probe_logits(model, VOCAB), probe_logits(base_model, VOCAB))
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(IM_END)


def test_merge_of_an_sft_adapter_equals_the_adapted_model(env, lora_run, tmp_path):
    """`minigpt merge` folds `alpha/r · B A` into the base: the merged plain model computes
    the adapted model's logits (the only difference is float summation order)."""
    from transformers import AutoModelForCausalLM

    from minigpt.inference.loading import load_model_and_tokenizer

    _, base, _ = env
    out, _ = lora_run
    merged_dir = tmp_path / "merged"
    assert main(["merge", "--model", str(base), "--adapter", str(out), "--out", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    adapted, tok = load_model_and_tokenizer(out, device="cpu")
    gap = (probe_logits(merged, VOCAB) - probe_logits(adapted, VOCAB)).abs().max()
    assert gap <= 1e-5
    assert json.loads((merged_dir / "generation_config.json").read_text())["eos_token_id"] == tok.convert_tokens_to_ids(IM_END)


def test_lora_resume_equals_an_uninterrupted_run(env, tmp_path):
    """4 steps straight vs 2 steps, stop, `resume=True` to 4: the same adapter tensors. The
    learning rate is constant (no warmup, min_lr_ratio 1), so the schedule of the 2-step leg
    is the first half of the 4-step one; the resumed leg must restore the adapter (not a fresh
    random A), the AdamW moments and the data order from the step-2 checkpoint."""
    from safetensors.torch import load_file

    lora = dict(lora=LoraOptions(rank=4, alpha=8.0))
    straight = run_sft(env, tmp_path / "a", train=train_config(max_steps=4, lr=3e-2), **lora)
    run_sft(env, tmp_path / "b", train=train_config(max_steps=2, save_interval=2, lr=3e-2), **lora)
    resumed = run_sft(env, tmp_path / "b", train=train_config(max_steps=4, save_interval=2, lr=3e-2), resume=True, **lora)
    assert straight["steps"] == resumed["steps"] == 4
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # and the run did train: 4 steps at lr 3e-2 move every B away from 0
    assert all(a[k].abs().max() > 0 for k in a if "lora_B" in k)
    assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-6)


@pytest.mark.parametrize("first_lora, second_lora", [(False, True), (True, False)], ids=["full-then-lora", "lora-then-full"])
def test_overwrite_replaces_the_previous_kind_of_model(env, tmp_path, first_lora, second_lora):
    """OUT after `--overwrite` holds only what the second run saved: a full model (config.json
    + model.safetensors, no adapter files) or an adapter alone (no config.json / model weights),
    and loading OUT gives adapters exactly when the second run was LoRA."""
    from minigpt.model.lora import has_lora
    from minigpt.inference.loading import load_model_and_tokenizer

    out = tmp_path / "out"
    for lora, overwrite in ((first_lora, False), (second_lora, True)):
        run_sft(env, out, overwrite=overwrite, lora=LoraOptions(rank=4 if lora else 0), train=train_config(max_steps=1))
    names = {p.name for p in out.iterdir()}
    if second_lora:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        assert not names & {"config.json", "model.safetensors"}
    else:
        assert {"config.json", "model.safetensors"} <= names
        assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    model, _ = load_model_and_tokenizer(out, device="cpu")
    assert has_lora(model) == second_lora


# ------------------------------------------------------------------------------- distillation


def test_distill_fresh_student(env, tmp_path):
    """A fresh student built from `student_config` with the teacher's vocabulary trains through
    the loop; the reported per-token figures satisfy val_loss = τ²·val_kl + α·val_ce (all three
    are sums over the same held-out tokens divided by their count); the teacher is untouched."""
    from transformers import AutoModelForCausalLM

    _, teacher, data = env
    before = _digest(teacher)
    student_cfg = ModelConfig(preset="tiny", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT)
    out = tmp_path / "student"
    m = distill(teacher=str(teacher), data=str(data), out=str(out), student_config=student_cfg, distill=DistillConfig(temperature=2.0, alpha=0.5),
                max_length=MAX_LENGTH, val_fraction=0.2, train=train_config(max_steps=3))
    assert m["steps"] == 3
    assert m["val_loss"] == pytest.approx(4.0 * m["val_kl"] + 0.5 * m["val_ce"], rel=1e-5)
    assert m["val_kl"] > 0  # a different (random, smaller) network than the teacher
    assert _digest(teacher) == before
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1
    assert student.config.vocab_size == AutoModelForCausalLM.from_pretrained(teacher).config.vocab_size
    assert (out / "tokenizer.json").is_file()


def test_distill_student_equal_to_teacher_has_zero_kl(env, tmp_path):
    """Student = the teacher's own directory, lr 1e-12 (the student does not move): KL(p_T ‖ p_S) is
    0, and the student's held-out CE is the SFT recipe's `val_loss_before` of that same model
    on the same split (same seed, same packing)."""
    _, teacher, data = env
    kw = dict(data=str(data), max_length=MAX_LENGTH, val_fraction=0.2, train=train_config(max_steps=1, lr=1e-12))
    d = distill(teacher=str(teacher), student=str(teacher), out=str(tmp_path / "d"), **kw)
    s = sft(model=str(teacher), out=str(tmp_path / "s"), **kw)
    assert abs(d["val_kl"]) < 1e-6
    assert d["val_ce"] == pytest.approx(s["val_loss_before"], abs=1e-5)


@pytest.fixture(scope="module")
def other_tokenizer_dir(env):
    """A model directory of the same size whose tokenizer was trained on other text."""
    root = env[0]
    texts = ["Съешь же ещё этих мягких французских булок, да выпей чаю. " * 5] * 30
    return _model_dir(root, "other", texts, seed=1)


def test_distill_refuses_a_student_with_another_tokenizer(env, other_tokenizer_dir, tmp_path, capsys):
    _, teacher, data = env
    with pytest.raises(UserError) as e:
        distill(teacher=str(teacher), student=str(other_tokenizer_dir), data=str(data), out=str(tmp_path / "x"),
                max_length=MAX_LENGTH, train=train_config(max_steps=1))
    msg = str(e.value)
    assert str(teacher) in msg and str(other_tokenizer_dir) in msg and "tokenizer" in msg
    code = main(["distill", "--teacher", str(teacher), "--student", str(other_tokenizer_dir), "--data", str(data),
                 "--out", str(tmp_path / "y"), "--max-length", str(MAX_LENGTH), *train_argv(max_steps=1)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "y" / "run.json").exists()


# ------------------------------------------------------------------------------- user errors


def _bad_run(env, tmp_path, capsys, data: Path, *extra: str) -> str:
    """Run `minigpt sft` expecting exit 2 with one line on stderr and no run started; returns it."""
    out = tmp_path / "out"
    code = main(["sft", "--model", str(env[1]), "--data", str(data), "--out", str(out), "--max-length",
                 str(MAX_LENGTH), *train_argv(max_steps=1), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("minigpt sft: error:") and "Traceback" not in err
    assert not (out / "run.json").exists()
    return err


def test_unknown_role_names_file_and_line(env, tmp_path, capsys):
    recs = _records()[:5]
    recs[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    data = _write_jsonl(tmp_path / "bad.jsonl", recs)
    err = _bad_run(env, tmp_path, capsys, data)
    assert f"{data}:3" in err and "robot" in err  # the third line, 1-based


def test_unknown_lora_target_lists_the_available_modules(env, tmp_path, capsys):
    err = _bad_run(env, tmp_path, capsys, env[2], "--lora.rank", "4", "--lora.targets", "[nope]")
    assert "nope" in err
    assert all(name in err for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def test_dora_needs_a_lora_rank(env, tmp_path, capsys):
    err = _bad_run(env, tmp_path, capsys, env[2], "--lora.dora")
    assert "--lora.rank" in err


def test_data_without_a_usable_conversation(env, tmp_path, capsys):
    recs = [r for r in _records() if not any(m.get("role") == "assistant" for m in r.get("messages", [{"role": "assistant"}]))]
    assert len(recs) == N_NO_ASSISTANT
    data = _write_jsonl(tmp_path / "no_replies.jsonl", recs)
    err = _bad_run(env, tmp_path, capsys, data)
    assert "no usable conversation" in err and str(data) in err


# ------------------------------------------------------------------------------- option names


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sft", "--max-length", "64"], ["sft", "--max_length", "64"]),
        (["--train.max-steps=5"], ["--train.max_steps=5"]),
        (["--eval-data", "[q-proj,v-proj]"], ["--eval_data", "[q-proj,v-proj]"]),  # value kept
        (["--data", "my-file.jsonl", "--out", "runs/my-run"], ["--data", "my-file.jsonl", "--out", "runs/my-run"]),
        (["--prompt=a-b --c-d"], ["--prompt=a-b --c-d"]),  # after '=' nothing changes
        (["--system-prompt=be-brief"], ["--system_prompt=be-brief"]),
        (["-h", "-x-y", "--5-a"], ["-h", "-x-y", "--5-a"]),  # not long option names
        (["--no-resume", "--", "--keep-me"], ["--no_resume", "--", "--keep-me"]),  # after '--' all are values
    ],
)
def test_underscore_options_renames_option_names_only(argv, expected):
    assert _underscore_options(list(argv)) == expected
