"""The `minigpt` CLI: presets load, the tiny end-to-end run works, user errors are one line."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt.cli import build_parser, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
TEXT = (
    "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。\n"
    "def add(a, b):\n    return a + b\n\nPack my box with five dozen liquor jugs.\n"
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_yaml_loads(path):
    """configs/<command>/*.yaml: every value in the file arrives in that command's parsed config."""
    import yaml

    from minigpt.model import MiniGPTConfig

    command = path.parent.name
    required = {"sft": ["--model", "BASE_DIR"], "dpo": ["--model", "SFT_DIR"], "reward": ["--model", "SFT_DIR"]}.get(command, [])  # what no preset can name
    cfg = getattr(build_parser().parse_args([command, "--config", str(path), *required]), command)
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                assert getattr(getattr(cfg, key), sub) == v, f"{key}.{sub}"
        else:
            assert getattr(cfg, key) == value, key
    if "model" in raw:  # and the model it describes can be built
        fields = {k: v for k, v in raw["model"].items() if k != "preset"}
        c = MiniGPTConfig.from_preset(raw["model"]["preset"], **fields)
        assert raw.get("block_size", 256) <= c.max_position_embeddings


def test_help_lists_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--train.grad_accum" in out and "Micro-batches per optimizer step" in out
    assert "--resume" in out and "--model.num_key_value_heads" in out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text("\n<|endoftext|>\n".join(TEXT * (i % 3 + 1) for i in range(60)), encoding="utf-8")
    out = root / "run"
    argv = [
        "pretrain", "--data", str(corpus), "--out", str(out), "--cache_dir", str(root / "cache"),
        "--model.preset", "tiny", "--model.vocab_size", "300", "--model.hidden_size", "32",
        "--model.intermediate_size", "64", "--model.num_hidden_layers", "2", "--model.num_attention_heads", "4",
        "--model.num_key_value_heads", "2", "--block_size", "32", "--val_fraction", "0.1",
        "--train.max_steps", "6", "--train.batch_size", "4", "--train.eval_interval", "3",
        "--train.save_interval", "3", "--train.progress", "false", "--train.tensorboard", "true",
    ]
    assert main(argv) == 0
    return out, argv, root


def test_cli_pretrain_end_to_end(tiny_run):
    import minigpt  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = tiny_run
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "MiniGPTForCausalLM" and model.config.vocab_size == len(tok)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 6
    assert any("val_bpb" in r for r in rows)
    assert (out / "checkpoints" / "step_00000006").is_dir()
    assert list((out / "tensorboard").iterdir())
    ids = torch.tensor([tok.encode("The quick")])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)


def test_cli_generate_streams(tiny_run, capsys):
    out, _, _ = tiny_run
    assert main(["generate", "--model", str(out), "--prompt", "The quick", "--sampling.max_new_tokens", "8", "--greedy"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("The quick") and len(printed) > len("The quick\n")


def test_cli_export_llama(tiny_run, tmp_path):
    from transformers import LlamaForCausalLM

    out, _, _ = tiny_run
    assert main(["export", "--model", str(out), "--to", "llama", "--out", str(tmp_path / "llama")]) == 0
    assert isinstance(LlamaForCausalLM.from_pretrained(tmp_path / "llama"), LlamaForCausalLM)


def test_cli_resume_and_refusal(tiny_run, capsys):
    out, argv, _ = tiny_run
    assert main(argv) == 2  # OUT holds a run: refused, nothing overwritten
    assert "already holds" in capsys.readouterr().err
    more = [a if a != "6" else "8" for a in argv]  # --train.max_steps 8
    assert main(more + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"resumed from \S*step_0*6 at step 6", printed), printed  # says what it continues
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 8


def test_cli_pretrain_packing_documents(tiny_run, tmp_path, capsys):
    """`--packing documents`: one training block per document start (60 documents, the last
    ones held out) instead of the stream's ~10 blocks per document; validation blocks stay the
    stream's, so bits per byte compare; run.json records the packing; an unknown one is refused."""
    _, argv, root = tiny_run
    capsys.readouterr()
    out = tmp_path / "docs"
    docs_argv = [a if a != str(root / "run") else str(out) for a in argv] + ["--packing", "documents", "--train.tensorboard", "false"]
    assert main(docs_argv) == 0
    docs_line = re.search(r"data: (\d+) train / (\d+) val blocks", capsys.readouterr().out)
    stream = [a if a != str(root / "run") else str(tmp_path / "stream") for a in argv] + ["--train.max_steps", "1", "--train.tensorboard", "false"]
    assert main(stream) == 0
    stream_line = re.search(r"data: (\d+) train / (\d+) val blocks", capsys.readouterr().out)
    train_docs, val_docs = map(int, docs_line.groups())
    train_stream, val_stream = map(int, stream_line.groups())
    assert 45 <= train_docs <= 60 and train_stream > 3 * train_docs
    assert val_docs == val_stream
    assert json.loads((out / "run.json").read_text())["packing"] == "documents"
    assert main(docs_argv[:-4] + ["--out", str(tmp_path / "bad"), "--packing", "bos"]) == 2
    assert "--packing: must be stream or documents, got 'bos'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ('{"text": "fine"}\n{"text": broken\n', ":2"),
        ('{"body": "no text field"}\n', "text"),
    ],
)
def test_cli_bad_data_is_one_clear_line(tmp_path, capsys, content, message):
    suffix = ".txt" if content == "" else ".jsonl"
    f = tmp_path / f"data{suffix}"
    f.write_text(content, encoding="utf-8")
    tok = tmp_path / "tok"
    code = main(["pretrain", "--data", str(f), "--out", str(tmp_path / "r"), "--cache_dir", str(tmp_path / "c"), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not tok.exists()


def test_cli_corpus_shorter_than_a_block(tmp_path, capsys):
    f = tmp_path / "short.txt"
    f.write_text("a few words only " * 3, encoding="utf-8")
    code = main(["pretrain", "--data", str(f), "--out", str(tmp_path / "r"), "--cache_dir", str(tmp_path / "c"), "--model.vocab_size", "300", "--block_size", "256"])
    err = capsys.readouterr().err
    assert code == 2 and "corpus has" in err and "lower block_size" in err


def test_cli_prompt_longer_than_context(tiny_run, capsys):
    out, _, _ = tiny_run
    code = main(["generate", "--model", str(out), "--prompt", "word " * 600, "--sampling.max_new_tokens", "4"])
    assert code == 2 and "max_position_embeddings" in capsys.readouterr().err


def test_cli_tokenizer_model_vocab_mismatch(tiny_run, tmp_path, capsys):
    from minigpt.tokenizer import train_tokenizer

    out, _, _ = tiny_run
    big = train_tokenizer([TEXT * 50, "другой текст " * 200], vocab_size=400, out_dir=tmp_path / "bigtok")
    assert len(big) > 300
    code = main(["generate", "--model", str(out), "--tokenizer", str(tmp_path / "bigtok"), "--prompt", "x"])
    assert code == 2 and "vocab_size" in capsys.readouterr().err


def test_cli_tokenizer_command(tmp_path):
    from minigpt.tokenizer import load_tokenizer

    f = tmp_path / "t.txt"
    f.write_text(TEXT * 40, encoding="utf-8")
    assert main(["tokenizer", "--data", str(f), "--vocab_size", "300", "--out", str(tmp_path / "tok")]) == 0
    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) == 300 and tok.decode(tok.encode(TEXT)) == TEXT


def test_cli_divergence_is_reported_not_a_traceback(tiny_run, tmp_path, capsys):
    _, argv, root = tiny_run
    out = tmp_path / "nan"
    bad = [a if a != str(root / "run") else str(out) for a in argv]
    bad += ["--train.lr", "1e12", "--train.grad_clip", "0", "--train.warmup_steps", "1", "--train.max_steps", "40"]
    code = main(bad)
    err = capsys.readouterr().err
    assert code == 3 and "diverged" in err and "Traceback" not in err


def test_cli_resume_from_corrupt_checkpoint(tiny_run, tmp_path, capsys):
    """The newest checkpoint corrupt: resume from the one before, with a warning; every one
    corrupt: one clear line, exit 2."""
    import shutil

    src, argv, root = tiny_run
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert len(list((run / "checkpoints").glob("step_*"))) >= 2
    (run / "checkpoints" / latest / "trainer_state.pt").write_bytes(b"\x00garbage")
    resumed = [a if a != str(src) else str(run) for a in argv] + ["--resume"]
    resumed[resumed.index("--train.max_steps") + 1] = "10"
    resumed += ["--train.log_interval", "1"]
    previous = int(sorted(p.name for p in (run / "checkpoints").glob("step_*") if p.name != latest)[-1][5:])
    with pytest.warns(RuntimeWarning, match=f"skipping checkpoint .*{latest}.*corrupt"):
        assert main(resumed) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == sorted(set(steps))  # no step logged twice, though the steps after `previous` were redone
    assert steps[-(10 - previous):] == list(range(previous + 1, 11))
    for ckpt_dir in (run / "checkpoints").glob("step_*"):
        (ckpt_dir / "trainer_state.pt").write_bytes(b"\x00garbage")
    capsys.readouterr()
    with pytest.warns(RuntimeWarning):
        assert main(resumed) == 2
    assert "no readable checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sft", "--out", "o"], ["sft", "--out", "o", "--resume"]),
        (["sft", "--overwrite", "--out", "o"], ["sft", "--out", "o", "--resume"]),
        (["sft", "--overwrite", "true", "--resume", "--out", "o"], ["sft", "--out", "o", "--resume"]),
        (["sft", "--overwrite=true", "--resume=false"], ["sft", "--resume"]),
    ],
)
def test_resume_command_drops_overwrite(argv, expected):
    from minigpt.cli import _resume_argv

    assert _resume_argv(argv) == expected


# SIGTERM takes the same handler as SIGINT (only the exit code differs): marked slow to keep
# the suite under 10 minutes on 2 cores; `pytest -m slow` runs it.
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_cli_signal_saves_and_prints_the_resume_command(tiny_run, tmp_path, signum, code):
    """A real `minigpt pretrain` process, signalled once training runs: it saves a checkpoint
    at the step it names, exits 128 + signal, and the command it prints resumes the run."""
    _, argv, root = tiny_run
    out = tmp_path / "sig"
    long = [a if a != str(root / "run") else str(out) for a in argv]
    long = [("1000" if long[i - 1] == "--train.max_steps" else a) for i, a in enumerate(long)]
    long += ["--train.log_interval", "1", "--cache_dir", str(tmp_path / "cache")]
    proc = subprocess.Popen([sys.executable, "-m", "minigpt.cli", *long], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("train/loss") >= 2):
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    step = int(re.search(r"interrupted by SIG\w+ at step (\d+)", err).group(1))
    assert 2 <= step < 1000
    assert (out / "checkpoints" / f"step_{step:08d}").is_dir()
    command = shlex.split(re.search(r"resume with: minigpt (.*)", err).group(1))
    assert command[-1] == "--resume" and "--overwrite" not in command
    i = command.index("--train.max_steps")
    command[i + 1] = str(step + 2)
    assert main(command) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, step + 3))


def test_cli_full_disk_is_one_line_with_the_resume_command(tiny_run, tmp_path, capsys, monkeypatch):
    """The device fills during the step-6 checkpoint (simulated as torch.save's own error): one
    line naming the checkpoint kept, then the resume command, exit 2; that command, once there
    is space, finishes the run with the same weights as an uninterrupted one."""
    from minigpt.model.checks import model_fingerprint
    from minigpt.train import checkpoint as ckpt

    _, argv, root = tiny_run
    out = tmp_path / "full"
    args = [a if a != str(root / "run") else str(out) for a in argv]
    real_save = ckpt.torch.save

    def fill_up(obj, path, *a, **k):
        if "step_00000006" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1408 vs 1318")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", fill_up)
    assert main(args) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err)
    assert "no space left on the device" in err[0] and "step_00000003, is kept" in err[0]
    command = shlex.split(err[1].split("resume with: minigpt ", 1)[1])
    assert command[-1] == "--resume"
    assert main(command) == 0
    uninterrupted = tmp_path / "uninterrupted"
    assert main([a if a != str(out) else str(uninterrupted) for a in args]) == 0
    assert model_fingerprint(out) == model_fingerprint(uninterrupted)


def test_tokenizer_never_sees_the_validation_tail(tmp_path):
    """The held-out tail repeats a word found nowhere else; a tokenizer trained on it would
    merge that word into few tokens, one trained only on the training part cannot."""
    from minigpt.tokenizer import load_tokenizer

    f = tmp_path / "c.txt"
    head = TEXT * 600
    f.write_text(head + " zqxvjk" * 4000, encoding="utf-8")  # the last ~15 % of the characters
    word = " zqxvjk"
    for frac, name in ((0.3, "held"), (0.0, "all")):
        out = tmp_path / name
        argv = ["pretrain", "--data", str(f), "--out", str(out), "--cache_dir", str(tmp_path / "c"), "--model.vocab_size", "320",
                "--val_fraction", str(frac), "--block_size", "16", "--train.max_steps", "1", "--train.progress", "false",
                "--model.hidden_size", "32", "--model.num_hidden_layers", "1", "--model.intermediate_size", "64"]
        assert main(argv) == 0
        n = len(load_tokenizer(out / "tokenizer").encode(word))
        if frac:
            assert n >= 4, n  # unseen: close to one token per byte
        else:
            assert n <= 2, n  # seen 4000 times: merged


def test_cli_original_design_flags(tiny_run, tmp_path, capsys):
    """`--epochs`, `--batch_size` and `--save_dir` (the course's spelling) work as shorthands: one epoch of N
    training blocks at batch 8 is ceil(N / 8) steps."""
    import math
    import re

    _, argv, _ = tiny_run
    out = tmp_path / "spec"
    args = list(argv)
    i = args.index("--out")
    args[i : i + 2] = ["--save_dir", str(out)]
    capsys.readouterr()
    assert main(args + ["--epochs", "1", "--batch_size", "8"]) == 0
    n_train = int(re.search(r"data: (\d+) train", capsys.readouterr().out).group(1))
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["epochs"] == 1 and run["train"]["batch_size"] == 8
    steps = max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines())
    assert steps == math.ceil(n_train / 8)


def _chat_file(path):
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w}."}]} for w in ("fox", "dog", "box", "jug") * 6]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _sft(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--max_length", "32", "--train.max_steps", "2",
            "--train.batch_size", "2", "--train.progress", "false", "--val_fraction", "0", *extra]


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--lora.rank", "4", "--overwrite"]])
def test_cli_out_that_is_the_input_model_is_refused(tiny_run, tmp_path, capsys, extra):
    import shutil

    src, _, _ = tiny_run
    model = tmp_path / "model"
    shutil.copytree(src, model)
    before = _files(model)
    assert main(_sft(model, _chat_file(tmp_path / "chat.jsonl"), model, *extra)) == 2
    err = capsys.readouterr().err
    assert "is also the --model input" in err and "Traceback" not in err
    assert _files(model) == before  # not one byte changed


def test_cli_out_holding_someone_elses_model_is_kept(tiny_run, tmp_path, capsys):
    """An exported or merged model has no run.json: refused without --overwrite; with it, the
    LoRA run writes its adapter beside the model, replaces only files of the same names (the
    tokenizer's) and deletes none."""
    src, _, _ = tiny_run
    other = tmp_path / "exported"
    assert main(["export", "--model", str(src), "--to", "llama", "--out", str(other)]) == 0
    before = _files(other)
    data = _chat_file(tmp_path / "chat.jsonl")
    assert main(_sft(src, data, other, "--lora.rank", "4")) == 2
    assert "no minigpt run wrote" in capsys.readouterr().err
    assert _files(other) == before
    with pytest.warns(RuntimeWarning, match="did not write"):
        assert main(_sft(src, data, other, "--lora.rank", "4", "--overwrite")) == 0
    after = _files(other)
    assert set(before) <= set(after)  # none of theirs deleted
    assert (after["model.safetensors"], after["config.json"]) == (before["model.safetensors"], before["config.json"])  # their model, untouched
    assert "adapter_model.safetensors" in after


def test_cli_overwrite_never_deletes_a_users_checkpoints_folder(tiny_run, tmp_path, capsys):
    src, _, _ = tiny_run
    user = tmp_path / "mine"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "precious.pt").write_bytes(b"years of work")
    (user / "metrics.jsonl").write_text("{}\n")
    assert main(_sft(src, _chat_file(tmp_path / "chat.jsonl"), user, "--overwrite")) == 2
    assert "no minigpt run recorded as its own" in capsys.readouterr().err
    assert (user / "checkpoints" / "precious.pt").read_bytes() == b"years of work"
    assert (user / "metrics.jsonl").read_text() == "{}\n"


def test_cli_tokenizer_refuses_a_model_folder(tiny_run, tmp_path, capsys):
    import shutil

    src, _, root = tiny_run
    model = tmp_path / "model"
    shutil.copytree(src, model)
    before = _files(model)
    argv = ["tokenizer", "--data", str(root / "corpus.txt"), "--vocab_size", "280", "--out", str(model)]
    assert main(argv) == 2
    assert "holds a model" in capsys.readouterr().err
    assert _files(model) == before
    assert main(argv + ["--overwrite"]) == 0
    assert (model / "model.safetensors").read_bytes() == before["model.safetensors"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sft", "--train.log_interval", "0"], "train.log_interval: must be an integer ≥ 1, got 0"),
        (["sft", "--train.lr=-1e-3"], "train.lr: must be a number > 0"),
        (["sft", "--train.beta2", "1.5"], "train.beta2: must be in [0, 1)"),
        (["sft", "--train.max_time=-1"], "train.max_time: must be None or > 0"),
        (["sft", "--train.epochs", "0"], "train.epochs: must be None or > 0"),
        (["sft", "--train.warmup_steps=-3"], "train.warmup_steps: must be an integer ≥ 0"),
        (["sft", "--train.weight_decay=-0.1"], "train.weight_decay: must be a number ≥ 0"),
        (["sft", "--train.batch_size", "0"], "train.batch_size: must be an integer ≥ 1"),
        (["sft", "--lora.rank=-4"], "--lora.rank: must be ≥ 0"),
        (["sft", "--reasoning_tag_weight=-1"], "--reasoning_tag_weight: must be ≥ 0"),
        (["dpo", "--lora.rank=-4"], "--lora.rank: must be ≥ 0"),
        (["grpo", "--grpo.group_size", "1"], "--grpo.group_size: must be ≥ 2"),
        (["distill", "--distill.alpha", "2"], "alpha must be in [0, 1]"),
    ],
)
def test_cli_nonsense_settings_are_one_clear_line(tiny_run, tmp_path, capsys, argv, message):
    """Values that used to crash mid-run (log_interval 0) or silently train something else
    (a negative LoRA rank became full fine-tuning): refused before anything is written."""
    src, _, _ = tiny_run
    model = ["--teacher", str(src)] if argv[0] == "distill" else ["--model", str(src)]
    out = tmp_path / "out"
    code = main([argv[0], *model, "--data", str(_chat_file(tmp_path / "chat.jsonl")), "--out", str(out), *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def lora_adapter(tiny_run, tmp_path_factory):
    src, _, _ = tiny_run
    root = tmp_path_factory.mktemp("adapter")
    assert main(_sft(src, _chat_file(root / "chat.jsonl"), root / "adapter", "--lora.rank", "4")) == 0
    return root / "adapter"


LOADERS = {
    "generate": ["generate", "--model", "{m}", "--prompt", "hi"],
    "chat": ["chat", "--model", "{m}", "--prompt", "hi"],
    "sft": ["sft", "--model", "{m}", "--data", "{chat}", "--out", "{out}"],
    "distill": ["distill", "--teacher", "{m}", "--data", "{chat}", "--out", "{out}"],
    "dpo": ["dpo", "--model", "{m}", "--data", "{chat}", "--out", "{out}"],
    "reward": ["reward", "--model", "{m}", "--data", "{chat}", "--out", "{out}"],
    "grpo": ["grpo", "--model", "{m}", "--data", "{chat}", "--out", "{out}"],
    "ppo": ["ppo", "--model", "{m}", "--reward", "length", "--data", "{chat}", "--out", "{out}"],
    "merge": ["merge", "--model", "{m}", "--adapter", "{adapter}", "--out", "{out}"],
    "export": ["export", "--model", "{m}", "--to", "llama", "--out", "{out}"],
    "pretrain": ["pretrain", "--data", "{corpus}", "--model.init_from", "{m}", "--out", "{out}", "--tokenizer", "{good}/tokenizer"],
}


@pytest.mark.parametrize("damage", ["truncated", "missing", "pickle"])
@pytest.mark.parametrize("command", sorted(LOADERS))
def test_cli_damaged_weights_are_one_clear_line(tiny_run, lora_adapter, tmp_path, capsys, command, damage):
    """Every command that loads a model: a truncated or missing model.safetensors, or a
    pickle in its place, is one line naming the file, exit 2."""
    import shutil

    src, _, root = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    weights = bad / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:3000])
    else:
        weights.unlink()
        if damage == "pickle":
            torch.save({"w": torch.zeros(2)}, bad / "pytorch_model.bin")
    values = {"m": str(bad), "adapter": str(lora_adapter), "chat": str(_chat_file(tmp_path / "chat.jsonl")), "out": str(tmp_path / "out"), "corpus": str(root / "corpus.txt"), "good": str(src)}
    if command == "pretrain":
        (bad / "tokenizer").mkdir(exist_ok=True)
    code = main([a.format(**values) for a in LOADERS[command]])
    err = capsys.readouterr().err
    expected = {"truncated": "model.safetensors: truncated or corrupt", "missing": "missing weight file model.safetensors", "pickle": "weights are a pickle (pytorch_model.bin)"}[damage]
    assert code == 2 and expected in err and "Traceback" not in err, err[-1500:]
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", sorted(LOADERS))
def test_cli_another_tokenizer_for_the_model_is_one_line(tiny_run, lora_adapter, tmp_path, capsys, command):
    """A smaller tokenizer than the model was trained with (300 ids) put beside it or named
    with --tokenizer: every command that loads a model refuses it, naming both sizes, and
    writes nothing."""
    import shutil

    from minigpt.tokenizer import train_tokenizer

    src, _, root = tiny_run
    bad, adapter, small = tmp_path / "bad", tmp_path / "adapter", tmp_path / "small"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "tokenizer"))
    shutil.copytree(lora_adapter, adapter, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    for d in (bad, adapter, small / "tokenizer"):
        assert len(train_tokenizer([TEXT * 50], vocab_size=280, out_dir=d)) == 280
    values = {"m": str(bad), "adapter": str(adapter), "chat": str(_chat_file(tmp_path / "chat.jsonl")), "out": str(tmp_path / "out"), "corpus": str(root / "corpus.txt"), "good": str(small)}
    code = main([a.format(**values) for a in LOADERS[command]])
    err = capsys.readouterr().err
    assert code == 2 and "has 280 tokens but the model at" in err and "300-token tokenizer" in err, err[-1500:]
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cli_tokenizer_with_other_special_ids_is_one_line(tiny_run, tmp_path, capsys):
    """Same size, but its end-of-text token is another id than the model's eos_token_id."""
    import shutil

    src, _, _ = tiny_run
    tok = tmp_path / "tok"
    shutil.copytree(src / "tokenizer", tok)
    cfg = json.loads((tok / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["eos_token"] = "<|im_end|>"
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    code = main(["generate", "--model", str(src), "--tokenizer", str(tok), "--prompt", "hi", "--sampling.max_new_tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"has eos_token_id \d+ but the model at .* was trained with 0", err), err[-800:]


@pytest.mark.parametrize(
    "template, kind",
    [
        ("{{ cycler.__init__.__globals__ }}", "SecurityError"),  # the sandbox refuses it
        ("{{ raise_exception('no chats here') }}", "TemplateError"),
        ("{% for m in messages %}{{ m.content", "TemplateSyntaxError"),
        ("{{ messages[0].content + 1 }}", "TypeError"),
    ],
)
@pytest.mark.parametrize("command", ["chat", "sft"])
def test_cli_chat_template_that_fails_is_one_line(tiny_run, tmp_path, capsys, template, kind, command):
    import shutil

    src, _, _ = tiny_run
    model = tmp_path / "model"
    shutil.copytree(src, model, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (model / "chat_template.jinja").write_text(template, encoding="utf-8")
    argv = ["chat", "--model", str(model), "--prompt", "hi", "--sampling.max_new_tokens", "2"] if command == "chat" else _sft(model, _chat_file(tmp_path / "c.jsonl"), tmp_path / "out")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and f"its chat template cannot render this conversation ({kind}" in err and str(model) in err, err[-1500:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "device, message",
    [("gpu", "unknown device 'gpu'"), ("cuda:7", "cuda:7"), ("mps", "'mps' asked for")],
)
def test_cli_unavailable_or_unknown_device_is_one_line(tiny_run, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    src, _, _ = tiny_run
    assert main(["generate", "--model", str(src), "--prompt", "hi", "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["pretrain", "sft", "distill", "dpo", "reward", "grpo", "ppo"])
def test_cli_out_that_is_a_file_is_one_line(tiny_run, tmp_path, capsys, command):
    """Every training command, before any data preparation: an --out that is a file is one
    line, and the file is left as it was."""
    src, _, root = tiny_run
    (tmp_path / "taken").write_text("not a folder")
    values = {"m": str(src), "chat": str(_chat_file(tmp_path / "chat.jsonl")), "out": str(tmp_path / "taken"), "corpus": str(root / "corpus.txt"), "good": str(src)}
    assert main([a.format(**values) for a in LOADERS[command]]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and len(err.strip().splitlines()) == 1, err[-800:]
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_cli_out_that_cannot_be_written_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """A read-only mount or a folder without write permission (simulated: the tests may run as
    root, who may write anywhere) is one line naming --out and the reason."""
    import errno

    from minigpt.train import rundir

    src, _, _ = tiny_run
    real_open = rundir.os.open

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(rundir.os, "open", read_only)
    assert main(_sft(src, _chat_file(tmp_path / "chat.jsonl"), tmp_path / "ro")) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'ro'}: cannot use it as a run directory: Read-only file system" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.vocab_size", "5"], "model.vocab_size: must be ≥ 264"),
        (["--model.dropout", "2"], "model.dropout: must be in [0, 1)"),
        (["--model.hidden_size", "0"], "model.hidden_size: must be an integer ≥ 1"),
    ],
)
def test_cli_impossible_model_settings_are_one_line(tiny_run, tmp_path, capsys, extra, message):
    _, _, root = tiny_run
    code = main(["pretrain", "--data", str(root / "corpus.txt"), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_score_bad_batch_size_and_out_directory(tiny_run, tmp_path, capsys):
    src, _, _ = tiny_run
    for extra, message in ((["--batch_size", "0"], "--batch_size: must be an integer ≥ 1"), (["--out", str(tmp_path)], "is a folder")):
        assert main(["score", "--model", str(src), "--prompt", "p", "--response", "r", *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("change, key", [(["--block_size", "16"], "block_size: 32 -> 16"), (["--model.hidden_size", "48"], "model:")])
def test_cli_resume_with_other_shape_settings_is_one_line(tiny_run, tmp_path, capsys, change, key):
    import shutil

    src, argv, _ = tiny_run
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    before = (run / "run.json").read_text()
    resumed = [a if a != str(src) else str(run) for a in argv] + change + ["--resume"]
    assert main(resumed) == 2
    err = capsys.readouterr().err
    assert "--resume with settings that differ" in err and key in err and len(err.strip().splitlines()) == 1
    assert (run / "run.json").read_text() == before


def test_cli_a_run_stopped_before_training_can_be_started_again(tiny_run, tmp_path, capsys):
    """A pretrain run that failed after writing its tokenizer (no run.json yet) left a folder
    marked as a minigpt run's: the same command again is not refused as foreign."""
    _, argv, root = tiny_run
    out = tmp_path / "early"
    # A block far longer than the corpus fails after the tokenizer is trained and saved.
    again = [a if a != str(root / "run") else str(out) for a in argv] + ["--block_size", "1000000",
                                                                          "--model.max_position_embeddings", "1000000"]
    assert main(again) == 2
    assert "lower block_size" in capsys.readouterr().err and (out / "tokenizer").is_dir()
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "lower block_size" in err and "no minigpt run wrote" not in err
    fixed = [a if a != str(root / "run") else str(out) for a in argv]
    assert main(fixed) == 0


def test_flat_spellings_of_grouped_options_are_unknown(tiny_run, capsys):
    """`--sampling.max_new_tokens` is the one spelling: the flat `--max_new_tokens` of earlier
    releases is an unknown option (one line, exit 2), not a silent alias."""
    out, _, _ = tiny_run
    assert main(["generate", "--model", str(out), "--prompt", "The quick", "--max_new_tokens", "5", "--greedy"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["sft", "dpo", "grpo", "ppo"])
def test_lora_group_parses_as_dotted_options_and_nested_yaml(command, tmp_path):
    """`--lora.rank 4 --lora.targets [q_proj]` and `lora: {rank: 4}` in a YAML preset reach the
    command's `LoraOptions`; unset fields keep their defaults."""
    from minigpt.model.options import LoraOptions

    cfg = getattr(build_parser().parse_args([command, "--model", "M", "--lora.rank", "4", "--lora.targets", "[q_proj]"]), command)
    assert (cfg.lora.rank, cfg.lora.targets, cfg.lora.alpha) == (4, ["q_proj"], LoraOptions().alpha)
    preset = tmp_path / "p.yaml"
    preset.write_text("lora:\n  rank: 2\n  alpha: 4.0\n")
    cfg = getattr(build_parser().parse_args([command, "--config", str(preset), "--model", "M"]), command)
    assert (cfg.lora.rank, cfg.lora.alpha) == (2, 4.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grpo", "--sampling.repetition_penalty", "1.2"], "--sampling.repetition_penalty: must be 1.0 in online RL"),
        (["ppo", "--lora.rank", "4", "--lora.dropout", "0.1"], "--lora.dropout: must be 0 in online RL"),
        (["grpo", "--lora.rank", "4", "--lora.dora", "true"], "--lora.dora: must be false"),
        (["sft", "--lora.dora", "true"], "--lora.dora and --lora.qlora need --lora.rank > 0"),
        (["dpo", "--lora.rank=-1"], "--lora.rank: must be ≥ 0"),
    ],
)
def test_grouped_options_are_checked_under_their_own_names(argv, message, tmp_path, capsys):
    assert main([*argv, "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
