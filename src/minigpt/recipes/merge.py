"""`minigpt merge`: fold a LoRA/DoRA adapter into its base model and write a full model directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


from minigpt.errors import UserError

# Files of a previous model in OUT that a new save might not overwrite (other shard counts).
_STALE = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "adapter_model.safetensors", "adapter_config.json", "adapter_base.json")


def _tokenizer_dir(*dirs: Path) -> Path | None:
    return next((d for d in dirs if (d / "tokenizer.json").is_file()), None)


def _check_out(out: Path, sources: list[Path], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    for src in sources:
        if out.resolve() == src.resolve():
            raise UserError(f"--out {out} is an input directory ({src}); choose another")
    from minigpt.errors import check_writable

    check_writable(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} already exists and is not empty; pass --overwrite to replace the model in it, or choose another --out")
        if not ((out / "config.json").is_file() or (out / "adapter_config.json").is_file()):
            raise UserError(f"--out {out} is not empty and holds no model (no config.json); refusing to overwrite it")


def _max_logit_gap(model, probe, reference) -> float:
    """Largest |logit difference| between `model` on `probe` `(1, T)` and `reference` `(1, T, V)`."""
    import torch

    with torch.no_grad():
        return float((model(input_ids=probe, use_cache=False).logits.float() - reference).abs().max())


def merge(model: str, adapter: str, out: str, overwrite: bool = False, allow_base_mismatch: bool = False) -> str:
    """Merge a LoRA/DoRA adapter into its base model and save the result as a full model.

    The adapter's update is folded into the base weights by `peft` (`W + alpha/r · B A`), so the
    output is a plain model directory (safetensors weights, config, generation config,
    tokenizer) that `minigpt generate/chat` and `AutoModelForCausalLM` load without `peft`,
    and runs as fast as the base. The merged logits are checked against the adapted model's on
    a probe sequence before anything is written.

    The generation config comes from the adapter directory when it has one (an SFT run's, with
    `<|im_end|>` as EOS), else from the base; the tokenizer likewise (adapter dir first).
    Returns the output directory.

    Args:
        model: base model directory the adapter was trained on.
        adapter: adapter directory (adapter_config.json + adapter_model.safetensors), e.g. the
            output of `minigpt sft --lora.rank 8`.
        out: directory to write the merged model to.
        overwrite: replace the model already in --out.
        allow_base_mismatch: merge even when --model is not the base the adapter was trained
            on (its fingerprint differs from the one recorded in adapter_base.json).

    Raises:
        UserError: missing base (no config.json) or adapter (no adapter_config.json), an
            adapter trained for other layers or shapes than this base or (without
            --allow_base_mismatch) on another base's weights, a non-LoRA adapter, an --out that
            is an input or already holds files (without --overwrite).
    """
    import torch

    from transformers import GenerationConfig

    from minigpt.model.lora import adapter_base_path, load_adapter, merge_lora, read_adapter_config
    from minigpt.tokenizer import load_tokenizer

    base_dir, adapter_dir, out_dir = Path(model), Path(adapter), Path(out)
    if not (base_dir / "config.json").is_file():
        hint = " (it is an adapter directory: pass it as --adapter)" if (base_dir / "adapter_config.json").is_file() else ""
        raise UserError(f"--model {base_dir} is not a model directory (no config.json){hint}")
    read_adapter_config(adapter_dir)  # a clear error for a folder that is no adapter
    _check_out(out_dir, [base_dir, adapter_dir], overwrite)
    try:
        recorded = adapter_base_path(adapter_dir)
    except UserError:
        recorded = None  # no local base recorded: --model is the only base there is
    if recorded is not None and recorded.resolve() != base_dir.resolve():
        print(f"note: the adapter records its base as {recorded}; merging it into {base_dir}")

    from minigpt.model.checks import check_model_dir, check_tokenizer_fits
    from minigpt.model.loading import load_model_dir

    check_model_dir(adapter_dir, "--adapter")
    net = load_model_dir(base_dir, tokenizer=False)[0].eval()
    tok_dir = _tokenizer_dir(adapter_dir, base_dir)
    tok = load_tokenizer(tok_dir) if tok_dir is not None else None
    if tok is not None:
        check_tokenizer_fits(tok, net.config, tok_dir, base_dir)
    load_adapter(net, adapter_dir, check_base=not allow_base_mismatch)
    if (adapter_dir / "generation_config.json").is_file():
        net.generation_config = GenerationConfig.from_pretrained(str(adapter_dir))

    probe = torch.arange(min(16, net.config.max_position_embeddings))[None] % net.config.vocab_size  # (1, T)
    with torch.no_grad():
        adapted = net(input_ids=probe, use_cache=False).logits.float()  # (1, T, V)
    merge_lora(net)
    gap = _max_logit_gap(net, probe, adapted)
    tol = 100 * torch.finfo(next(net.parameters()).dtype).eps * max(1.0, float(adapted.abs().max()))
    if not gap <= tol:
        raise RuntimeError(f"merged logits differ from the adapted model's by {gap:.3g} (> {tol:.3g}); nothing written")

    tmp = out_dir.parent / f".{out_dir.name}.merge-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp))
    if tok is not None:
        tok.save_pretrained(str(tmp))
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in _STALE:
        for old in out_dir.glob(pattern):
            old.unlink()
    for f in tmp.iterdir():
        os.replace(f, out_dir / f.name)
    tmp.rmdir()
    print(f"merged {adapter_dir} into {base_dir} -> {out_dir}" + ("" if tok is not None else " (no tokenizer found beside either; copy one in)"))
    return str(out_dir)
