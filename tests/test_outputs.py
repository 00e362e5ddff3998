"""No command writes over what it reads or what a user owns, and an output that cannot be
written is one line and exit status 2 before any work: eval's report and generations, embed,
export (GGUF and Llama), and every command on a read-only mount or an unwritable folder. Export
refuses what is not a causal language model, and a GGUF export without a tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from minigpt.cli import main

from tiny_models import save_tiny_chat_model

TEXTS = ["hello world, the cat sat on the mat.", "a dog ran in the park; 1 + 2 = 3"] * 10


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny chat model, a LoRA adapter on it, a reward model, and small data files, in a
    folder anyone may read (the non-root test runs as `nobody`)."""
    import torch

    from minigpt.model import MiniGPTForCausalLM
    from minigpt.model.lora import apply_lora
    from minigpt.model.reward_model import MiniGPTRewardModel

    root = Path(tempfile.mkdtemp(prefix="minigpt-outputs-"))
    root.chmod(0o755)
    save_tiny_chat_model(root / "model", TEXTS)
    net = MiniGPTForCausalLM.from_pretrained(root / "model")
    apply_lora(net, rank=2, alpha=4, verbose=False).save_pretrained(root / "adapter")
    torch.manual_seed(0)
    rm = MiniGPTRewardModel(net.config)
    rm.save_pretrained(root / "rm")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (root / "model" / name).is_file():
            shutil.copy2(root / "model" / name, root / "rm" / name)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (root / "preds.jsonl").write_text("".join(json.dumps({"prediction": t, "reference": t}) + "\n" for t in TEXTS[:4]))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": "hi", "response": t}) + "\n" for t in TEXTS[:2]))
    (root / "heldout.jsonl").write_text("".join(json.dumps({"prompt": "say", "reference": t}) + "\n" for t in TEXTS[:2]))
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    yield {"root": root, "model": root / "model", "adapter": root / "adapter", "rm": root / "rm",
           "texts": root / "texts.txt", "preds": root / "preds.jsonl", "pairs": root / "pairs.jsonl",
           "heldout": root / "heldout.jsonl"}
    shutil.rmtree(root, ignore_errors=True)


def run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------
# eval and embed never replace an input, and say so when --out is a folder
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--out", "--save_generations"])
def test_eval_refuses_to_write_over_its_data(files, tmp_path, capsys, option):
    data = tmp_path / "heldout.jsonl"
    shutil.copy2(files["heldout"], data)
    before = data.read_bytes()
    code, err = run(["eval", "--model", files["model"], "--data", data, "--metrics", "bleu", option, data], capsys)
    one_line_error(code, err, option, "--data input")
    assert data.read_bytes() == before


def test_eval_refuses_to_write_over_its_predictions_or_into_the_model(files, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    shutil.copy2(files["preds"], preds)
    before = preds.read_bytes()
    link = tmp_path / "other-name.jsonl"
    link.symlink_to(preds)  # the same file under another name
    for out in (preds, link):
        code, err = run(["eval", "--predictions", preds, "--metrics", "bleu", "--out", out], capsys)
        one_line_error(code, err, "--predictions input")
    assert preds.read_bytes() == before
    config = files["model"] / "config.json"
    config_before = config.read_bytes()
    code, err = run(["eval", "--model", files["model"], "--data", files["heldout"], "--metrics", "bleu",
                     "--save_generations", config], capsys)
    one_line_error(code, err, "inside the --model input")
    assert config.read_bytes() == config_before


def test_eval_and_embed_with_a_folder_as_out_say_so_before_the_work(files, tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    code, err = run(["eval", "--predictions", files["preds"], "--metrics", "bleu", "--out", folder], capsys)
    one_line_error(code, err, "is a folder")
    code, err = run(["embed", "--model", files["model"], "--data", files["texts"], "--out", folder], capsys)
    one_line_error(code, err, "is a folder")
    code, err = run(["embed", "--model", files["model"], "--data", files["texts"], "--out", files["texts"]], capsys)
    one_line_error(code, err, "--data input")
    assert list(folder.iterdir()) == []
    # A file name inside the folder works.
    code, err = run(["eval", "--predictions", files["preds"], "--metrics", "bleu", "--out", folder / "r.json"], capsys)
    assert code == 0, err
    assert json.loads((folder / "r.json").read_text())["bleu"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# export: GGUF and Llama outputs never replace files no export made
# ------------------------------------------------------------------------------------------


def test_gguf_export_refuses_an_existing_file_and_a_users_modelfile(files, tmp_path, capsys):
    pytest.importorskip("gguf")
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"my own weights")
    code, err = run(["export", "--model", files["model"], "--to", "gguf", "--out", mine], capsys)
    one_line_error(code, err, "already exists", "--overwrite")
    assert mine.read_bytes() == b"my own weights"

    folder = tmp_path / "ollama"
    folder.mkdir()
    (folder / "Modelfile").write_text("FROM llama3\n")
    code, err = run(["export", "--model", files["model"], "--to", "gguf", "--out", folder], capsys)
    one_line_error(code, err, "no export made", "--overwrite")
    assert (folder / "Modelfile").read_text() == "FROM llama3\n" and len(list(folder.iterdir())) == 1
    # --out FILE.gguf beside the user's Modelfile: the Modelfile is theirs.
    code, err = run(["export", "--model", files["model"], "--to", "gguf", "--out", folder / "new.gguf"], capsys)
    one_line_error(code, err, "Modelfile already exists")
    assert not (folder / "new.gguf").exists()

    code, err = run(["export", "--model", files["model"], "--to", "gguf", "--out", mine, "--overwrite"], capsys)
    assert code == 0, err
    assert mine.read_bytes()[:4] == b"GGUF"


def test_gguf_export_into_its_own_folder_again_needs_no_overwrite(files, tmp_path, capsys):
    pytest.importorskip("gguf")
    out = tmp_path / "gguf"
    for _ in range(2):
        code, err = run(["export", "--model", files["model"], "--to", "gguf", "--out", out], capsys)
        assert code == 0, err
    record = json.loads((out / "minigpt_export.json").read_text())
    assert set(record["files"]) == {"model.gguf", "Modelfile", "minigpt_export.json"}
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "minigpt_export.json", "model.gguf"]


def test_llama_export_into_a_users_folder_needs_overwrite_and_keeps_their_files(files, tmp_path, capsys):
    out = tmp_path / "llama"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run(["export", "--model", files["model"], "--to", "llama", "--out", out], capsys)
    one_line_error(code, err, "no export made", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, err = run(["export", "--model", files["model"], "--to", "llama", "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").is_file()


@pytest.mark.parametrize("to", ["llama", "mistral", "mixtral", "gguf"])
def test_export_refuses_a_reward_model_naming_what_it_is(files, tmp_path, capsys, to):
    code, err = run(["export", "--model", files["rm"], "--to", to, "--out", tmp_path / "x"], capsys)
    one_line_error(code, err, "reward model", "not a causal language model")
    assert not (tmp_path / "x").exists()


def test_export_without_a_tokenizer_says_so(files, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (files["model"] / name).is_file():
            shutil.copy2(files["model"] / name, bare / name)
    pytest.importorskip("gguf")
    code, err = run(["export", "--model", bare, "--to", "gguf", "--out", tmp_path / "g"], capsys)
    one_line_error(code, err, "no tokenizer", "--tokenizer")
    with pytest.warns(UserWarning, match="no tokenizer files"):
        code = main(["export", "--model", str(bare), "--to", "llama", "--out", str(tmp_path / "l")])
    assert code == 0 and (tmp_path / "l" / "config.json").is_file()


# ------------------------------------------------------------------------------------------
# Unwritable outputs: a read-only mount (as root) and a folder without permission (as nobody)
# ------------------------------------------------------------------------------------------


def commands(files: dict[str, Path], out: Path) -> dict[str, list]:
    """One cheap invocation per command that writes, each with its output under `out`."""
    return {
        "tokenizer": ["tokenizer", "--data", files["texts"], "--vocab_size", 300, "--out", out / "tok"],
        "score": ["score", "--model", files["rm"], "--data", files["pairs"], "--out", out / "scores.jsonl"],
        "export-llama": ["export", "--model", files["model"], "--to", "llama", "--out", out / "llama"],
        "export-gguf": ["export", "--model", files["model"], "--to", "gguf", "--out", out / "gguf"],
        "merge": ["merge", "--model", files["model"], "--adapter", files["adapter"], "--out", out / "merged"],
        "eval": ["eval", "--predictions", files["preds"], "--metrics", "bleu", "--out", out / "report.json"],
        "embed": ["embed", "--model", files["model"], "--data", files["texts"], "--out", out / "e.npy"],
        "pretrain": ["pretrain", "--data", files["texts"], "--tokenizer", files["model"], "--model.preset", "tiny",
                     "--train.max_steps", 1, "--out", out / "run"],
        "sft": ["sft", "--model", files["model"], "--data", files["heldout"], "--train.max_steps", 1, "--out", out / "sft"],
        "gym": ["gym", "--algo", "qlearning", "--env", "FrozenLake-v1", "--total_steps", 10, "--out", out / "gym"],
    }


@pytest.fixture
def read_only_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mount = tmp_path / "ro"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", list(commands({k: Path() for k in ("texts", "rm", "pairs", "model", "adapter", "preds", "heldout")}, Path())))
def test_every_command_on_a_read_only_mount_is_one_line(files, read_only_dir, capsys, command):
    if command == "export-gguf":
        pytest.importorskip("gguf")
    code, err = run(commands(files, read_only_dir / "sub")[command], capsys)
    one_line_error(code, err, "read-only file system")


def test_every_command_on_an_unwritable_folder_as_a_non_root_user_is_one_line(files, capsys):
    """Run as `nobody` (effective user id, switched back after) when the tests run as root; as
    the user itself otherwise. The folder belongs to root (or is mode 0555)."""
    locked = Path(tempfile.mkdtemp(prefix="minigpt-locked-"))
    locked.chmod(0o555)
    switched = False
    try:
        if os.geteuid() == 0:
            os.setegid(65534)
            os.seteuid(65534)
            switched = True
        for command, argv in commands(files, locked / "sub").items():
            if command == "export-gguf" and not _has("gguf"):
                continue
            code, err = run(argv, capsys)
            one_line_error(code, err, "permission denied")
    finally:
        if switched:
            os.seteuid(0)
            os.setegid(0)
        locked.chmod(0o755)
        shutil.rmtree(locked, ignore_errors=True)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
