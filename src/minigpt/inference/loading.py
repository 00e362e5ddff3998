"""Load a saved model (or a LoRA adapter on its base) with its tokenizer, ready to decode."""

from __future__ import annotations

from pathlib import Path

import torch

from minigpt.errors import UserError

#: Decoding precisions of the fast engine by their command-line names.
ENGINE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "int8": torch.int8}


def engine_dtype(name: str) -> torch.dtype | None:
    """The `GenerationEngine` dtype of a command-line name (fp32, bf16, int8).

    Raises:
        UserError: an unknown name.
    """
    if name not in ENGINE_DTYPES:
        raise UserError(f"dtype must be one of {sorted(ENGINE_DTYPES)}, not {name!r}")
    return ENGINE_DTYPES[name]


def load_model_and_tokenizer(
    model_dir: str | Path, device: str = "auto", tokenizer_dir: str | None = None, allow_base_mismatch: bool = False
):
    """Load a saved model directory (and the tokenizer saved beside it) for inference.

    `model_dir` may also be a LoRA/DoRA adapter directory (adapter_config.json, no
    config.json, as `minigpt sft --lora.rank N` writes): its base is loaded from the
    `base_model_name_or_path` recorded in adapter_config.json (a local model directory, absolute
    or relative to the adapter) and the adapter is applied (not merged); a base whose
    fingerprint differs from the one recorded in `adapter_base.json` is refused unless
    `allow_base_mismatch`. The tokenizer and generation config then come from the adapter
    directory when it has them, else from the base.

    Returns `(model in eval mode on the device, tokenizer)`.

    Raises:
        UserError: missing directory, no tokenizer, a tokenizer that is not the model's
            (`check_tokenizer_fits`), or an adapter whose base is not a local model directory,
            is not the one it was trained on, or does not fit it.
    """
    from minigpt.model.loading import load_model_dir
    from minigpt.train.distributed import pick_device

    model, tok = load_model_dir(
        model_dir, tokenizer=tokenizer_dir or True, adapters=True, allow_base_mismatch=allow_base_mismatch
    )
    return model.to(pick_device(device)).eval(), tok


__all__ = ["ENGINE_DTYPES", "engine_dtype", "load_model_and_tokenizer"]
