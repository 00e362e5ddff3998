"""Check a model directory before `from_pretrained` reads it, so a bad one is one clear line.

`from_pretrained` on a folder with a missing or truncated `model.safetensors`, a pickle where
weights belong, or a broken `config.json` ends in a traceback from deep inside transformers or
safetensors. `check_model_dir` finds each of these first and names the file at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.errors import UserError

__all__ = ["check_model_dir"]

_PICKLES = ("pytorch_model.bin", "model.pt", "model.pth", "pytorch_model.bin.index.json")


def check_model_dir(path: str | Path, option: str = "--model", adapter_ok: bool = True) -> Path:
    """Raise a `UserError` naming the file at fault unless `path` holds a loadable model.

    A loadable model directory has a `config.json` that is a JSON object and its weights as
    safetensors: `model.safetensors`, or the shards a `model.safetensors.index.json` lists;
    every weight file must have a complete header and all the bytes it declares. With
    `adapter_ok`, an adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
    passes too; its base is checked when it is loaded.

    Args:
        path: the directory.
        option: the command-line option that named it, for the message.
        adapter_ok: accept an adapter directory.

    Returns:
        `path` as a `Path`.

    Raises:
        UserError: missing directory or file, unreadable JSON, a pickle (`pytorch_model.bin`)
            instead of safetensors, or a truncated or corrupt safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{option} {path}: no such directory")
    adapter = adapter_ok and (path / "adapter_config.json").is_file()
    config = path / ("adapter_config.json" if adapter else "config.json")
    if not config.is_file():
        raise UserError(f"{option} {path}: not a model directory (no config.json)")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{config}: not a readable JSON file ({e})") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{config}: expected a JSON object")
    if adapter:
        weights = [path / "adapter_model.safetensors"]
    elif (path / "model.safetensors.index.json").is_file():
        index = path / "model.safetensors.index.json"
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a readable safetensors index ({e})") from None
        weights = [path / name for name in shards]
    else:
        weights = [path / "model.safetensors"]
    for w in weights:
        if not w.is_file():
            pickles = [p for p in _PICKLES if (path / p).exists()]
            if pickles:
                raise UserError(
                    f"{option} {path}: weights are a pickle ({pickles[0]}), which minigpt does not load because "
                    "unpickling can run code; convert them to safetensors"
                )
            raise UserError(f"{option} {path}: missing weight file {w.name}")
        try:
            with safe_open(str(w), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 — safetensors raises its own error types
            raise UserError(f"{w}: truncated or corrupt safetensors file ({e})") from None
    return path
