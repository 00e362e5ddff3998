"""Check a model directory before `from_pretrained` reads it, so a bad one is one clear line.

`from_pretrained` on a folder with a missing or truncated `model.safetensors`, a pickle where
weights belong, or a broken `config.json` ends in a traceback from deep inside transformers or
safetensors. `check_model_dir` finds each of these first and names the file at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.errors import UserError

__all__ = ["check_model_dir", "check_tokenizer_fits", "model_fingerprint"]

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


# Keys of config.json that change when the same weights are saved again by another release or
# from another folder; they are left out of the fingerprint.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")


def model_fingerprint(path: str | Path) -> str:
    """A SHA-256 that identifies a saved model: its configuration and every weight tensor.

    The digest covers `config.json` (parsed, keys sorted, without `transformers_version` and
    `_name_or_path`) and, for each tensor of the safetensors weights in name order, its name,
    dtype, shape and bytes. It is therefore the same for the same model saved again (another
    shard layout, another transformers release, another folder) and differs as soon as one
    weight or one architecture field does. Reading costs one pass over the weights
    (about 1 s per GB).

    Args:
        path: a model directory that `check_model_dir(path, adapter_ok=False)` accepts.

    Returns:
        64 hex digits.

    Raises:
        UserError: the directory is not a loadable model (see `check_model_dir`).
    """
    import hashlib

    import torch
    from safetensors import safe_open

    path = check_model_dir(path, adapter_ok=False)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    handles = [safe_open(str(path / name), framework="pt") for name in files]
    where = {key: f for f in handles for key in f.keys()}
    for key in sorted(where):
        tensor = where[key].get_tensor(key).contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


#: Model types whose vocabulary is exactly their tokenizer's: minigpt builds the embedding with
#: one row per token id, so a tokenizer of another size is not the one the model was trained with.
_EXACT_VOCAB_TYPES = ("minigpt",)


def check_tokenizer_fits(tokenizer, config, tokenizer_source: str | Path, model_source: str | Path) -> None:
    """Refuse a tokenizer that is not the one `config`'s model was trained with.

    Checked: the number of token ids (at most `config.vocab_size`, and exactly it for a
    MiniGPT model, whose embedding has one row per token id; other models may pad their
    embedding) and the special-token ids the config records (`eos_token_id`, which may be a
    list, `pad_token_id`, `bos_token_id`) against the tokenizer's. A tokenizer of the same
    size and special ids but other merges cannot be told apart from the config alone.

    Args:
        tokenizer: a `transformers` tokenizer (`len()`, `eos_token_id`, …).
        config: the model's `PretrainedConfig`.
        tokenizer_source: where the tokenizer came from, for the message.
        model_source: where the model came from, for the message.

    Raises:
        UserError: naming both directories and what differs.
    """
    size, vocab = len(tokenizer), config.vocab_size
    hint = "pass the tokenizer the model was trained with (the one saved beside it)"
    if size > vocab:
        raise UserError(
            f"tokenizer at {tokenizer_source} has {size} tokens but the model at {model_source} has vocab_size {vocab}; {hint}"
        )
    base_type = getattr(config, "model_type", None)
    if size < vocab and base_type in _EXACT_VOCAB_TYPES:
        raise UserError(
            f"tokenizer at {tokenizer_source} has {size} tokens but the model at {model_source} was trained with a "
            f"{vocab}-token tokenizer (vocab_size); {hint}"
        )
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        want, have = getattr(config, name, None), getattr(tokenizer, name, None)
        if want is None or have is None:
            continue
        if have not in (want if isinstance(want, (list, tuple)) else [want]):
            raise UserError(
                f"tokenizer at {tokenizer_source} has {name} {have} but the model at {model_source} was trained with "
                f"{want}; {hint}"
            )
