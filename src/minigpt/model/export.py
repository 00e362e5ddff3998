"""Export a MiniGPT checkpoint to the plain `transformers` Llama format.

MiniGPT already uses Llama's parameter names and its RoPE / RMSNorm / SwiGLU conventions, so the
export is a config translation plus a re-save: the written directory loads with
`transformers.LlamaForCausalLM.from_pretrained(out_dir)` (and so with vLLM, llama.cpp's
converter, PEFT, …) without `minigpt` installed, and gives the same logits.

    from minigpt.model.export import export_to_llama
    export_to_llama("runs/sft", "runs/sft-llama")

The output directory holds `config.json` (`model_type: llama`), `model.safetensors`,
`generation_config.json`, the tokenizer files when there are any, and `minigpt_export.json`, a
small record of the export that marks the directory as one `export_to_llama` may overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from minigpt.errors import UserError
from minigpt.model.configuration import MiniGPTConfig
from minigpt.model.modeling import MiniGPTForCausalLM

#: Name of the record written into every export; its presence makes a directory overwritable.
EXPORT_MARKER = "minigpt_export.json"

#: Files that make up a `transformers` tokenizer directory (any subset may be present).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

#: `transformers` architectures `export_to_hf` writes.
HF_FORMATS = ("llama", "mistral", "mixtral")


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`"bf16"`-style name (or a torch dtype) -> torch dtype; None / "auto" keep the source's."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[key]


def llama_config_from(config: MiniGPTConfig):
    """Translate a `MiniGPTConfig` into the equivalent `transformers.LlamaConfig`.

    Every field that changes the computation is carried over (sizes, heads, `head_dim`, RMSNorm
    ε, all RoPE settings in `rope_parameters`, tying, biases, special ids, the gate's
    activation `hidden_act`: SiLU, or squared ReLU, which Llama's gated MLP takes too). MiniGPT's `dropout` becomes Llama's `attention_dropout` (Llama
    has no residual dropout; neither matters at inference).

    Raises:
        UserError: an encoder (`use_bidirectional_attention`), QK-norm or logit soft-capping
            (`refuse_speedrun_options`), or shapes with no Llama
            equivalent (Llama requires `hidden_size` to be a multiple of `num_attention_heads`
            even when `head_dim` is set).
    """
    from transformers import LlamaConfig

    if getattr(config, "use_bidirectional_attention", False):
        raise UserError("cannot export to Llama: this is an encoder (use_bidirectional_attention), and Llama is causal")
    refuse_speedrun_options(config, "llama")
    if config.hidden_size % config.num_attention_heads:
        raise UserError(
            f"cannot export to Llama: hidden_size ({config.hidden_size}) is not a multiple of "
            f"num_attention_heads ({config.num_attention_heads}), which LlamaConfig requires"
        )
    return LlamaConfig(**_shared_fields(config), attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)


def refuse_speedrun_options(config: MiniGPTConfig, fmt: str) -> None:
    """Refuse the architecture options `fmt` (llama, mistral, mixtral) has no field for.

    Raises:
        UserError: `qk_norm` or `final_logit_softcapping` is set, naming the option.
    """
    reasons = []
    if getattr(config, "qk_norm", False):
        reasons.append("the model normalises queries and keys (qk_norm)")
    if getattr(config, "final_logit_softcapping", None):
        reasons.append(f"the model soft-caps its logits (final_logit_softcapping={config.final_logit_softcapping:g})")
    if reasons:
        raise UserError(f"cannot export to {fmt}: {' and '.join(reasons)}, which {fmt} does not; "
                        "keep it as a MiniGPT model (it loads in transformers after `import minigpt`)")


def _shared_fields(config: MiniGPTConfig) -> dict[str, Any]:
    """The config fields Llama, Mistral and Mixtral name as MiniGPT does."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act=getattr(config, "hidden_act", "silu"),
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=dict(config.rope_parameters),
        attention_dropout=float(config.dropout),
    )


def hf_config_from(config: MiniGPTConfig, fmt: str):
    """Translate a `MiniGPTConfig` into the `transformers` config of architecture `fmt`.

    - `llama`: a dense model without a sliding window (`llama_config_from`);
    - `mistral`: a dense model, with or without a sliding window (Mistral has no biases);
    - `mixtral`: a mixture-of-experts model (`num_local_experts`, `num_experts_per_tok`,
      `router_aux_loss_coef`), with or without a sliding window.

    Raises:
        UserError: the model needs something `fmt` cannot express, with the format that can.
    """
    from transformers import MistralConfig, MixtralConfig

    if fmt not in HF_FORMATS:
        raise UserError(f"unsupported export format {fmt!r}; supported: {', '.join(HF_FORMATS)}")
    refuse_speedrun_options(config, fmt)
    window = getattr(config, "sliding_window", None)
    moe = getattr(config, "num_local_experts", 0)
    if moe and fmt != "mixtral":
        raise UserError(f"cannot export to {fmt}: this is a mixture-of-experts model ({moe} experts); use --to mixtral")
    if not moe and fmt == "mixtral":
        raise UserError("cannot export to mixtral: this model is dense (num_local_experts is 0); use --to llama or mistral")
    if fmt == "llama":
        if window:
            raise UserError(
                f"cannot export to llama: the model uses sliding-window attention (sliding_window={window}) "
                "and Llama attends to the whole context; use --to mistral"
            )
        return llama_config_from(config)
    if getattr(config, "use_bidirectional_attention", False):
        raise UserError(f"cannot export to {fmt}: this is an encoder (use_bidirectional_attention), and {fmt} is causal")
    if config.attention_bias or config.mlp_bias:
        raise UserError(f"cannot export to {fmt}: it has no attention or MLP biases (attention_bias / mlp_bias are set); use --to llama")
    common = dict(**_shared_fields(config), sliding_window=window or None)
    if fmt == "mistral":
        return MistralConfig(**common)
    return MixtralConfig(
        **common,
        num_local_experts=config.num_local_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        router_aux_loss_coef=config.router_aux_loss_coef,
        output_router_logits=False,
        router_jitter_noise=0.0,
    )


def _hf_state(model: MiniGPTForCausalLM, fmt: str) -> dict[str, torch.Tensor]:
    """MiniGPT's state dict under the parameter names of `fmt`'s `transformers` model.

    Llama and Mistral use MiniGPT's names. Mixtral (transformers ≥ 5) keeps each layer's experts
    as two stacked tensors: `mlp.experts.gate_up_proj (E, 2F, C)`, gate rows then up rows, and
    `mlp.experts.down_proj (E, C, F)`; the router is `mlp.gate.weight (E, C)` in both."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if fmt != "mixtral":
        return state
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        head, sep, rest = key.partition(".mlp.experts.")
        if not sep:
            out[key] = value
            continue
        index, proj = rest.split(".")[:2]
        experts.setdefault(head, {}).setdefault(int(index), {})[proj] = value
    for head, per_expert in experts.items():
        order = sorted(per_expert)
        out[f"{head}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([per_expert[e]["gate_proj"], per_expert[e]["up_proj"]]) for e in order]
        )
        out[f"{head}.mlp.experts.down_proj"] = torch.stack([per_expert[e]["down_proj"] for e in order])
    return out


#: What each non-causal MiniGPT architecture is, for the export's refusal.
_NOT_A_CAUSAL_LM = {
    "MiniGPTRewardModel": "a reward model (it scores replies, it does not generate text)",
    "MiniGPTForMaskedLM": "a masked-language-model encoder (`minigpt mlm`)",
    "MiniGPTForEmbedding": "a sentence embedder (`minigpt contrastive`)",
}


def check_causal_lm(model_dir: Path) -> None:
    """Refuse a MiniGPT directory that holds anything but a causal language model (a reward
    model, an encoder, an embedder): the export formats are text generators.

    Raises:
        UserError: naming what the directory holds (from config.json's `architectures` and
            `use_bidirectional_attention`).
    """
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    other = [a for a in archs if a != "MiniGPTForCausalLM"]
    if other:
        what = _NOT_A_CAUSAL_LM.get(other[0], f"a {other[0]}")
        raise UserError(f"{str(model_dir)!r} holds {what}, not a causal language model (MiniGPTForCausalLM); "
                        "only language models can be exported")
    if config.get("use_bidirectional_attention"):
        raise UserError(f"{str(model_dir)!r} holds an encoder (bidirectional attention), not a causal language "
                        "model; only language models can be exported")


def load_export_source(model_dir: Path) -> MiniGPTForCausalLM:
    """Load a MiniGPT model directory, turning the usual mistakes into `UserError`s."""
    if not model_dir.is_dir():
        raise UserError(f"model directory {str(model_dir)!r} does not exist")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise UserError(
                f"{str(model_dir)!r} holds only LoRA adapters; merge them into the base model "
                "(merge_and_unload) and save the merged model before exporting"
            )
        raise UserError(f"{str(model_dir)!r} is not a model directory: it has no config.json")
    try:
        model_type = json.loads(cfg_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {str(cfg_path)!r}: {e}") from e
    if model_type == "llama":
        raise UserError(f"{str(model_dir)!r} is already a Llama checkpoint")
    if model_type != MiniGPTConfig.model_type:
        raise UserError(f"{str(model_dir)!r} holds a {model_type!r} model, not a MiniGPT one")
    check_causal_lm(model_dir)
    from minigpt.model.loading import load_model_dir

    return load_model_dir(model_dir, MiniGPTForCausalLM, tokenizer=False)[0]


def _check_out_dir(out: Path, sources: list[Path], overwrite: bool = False) -> list[str]:
    """Refuse an `out` that is a file, a source directory, an unwritable place, or a non-empty
    directory that no export made (unless `overwrite`: then files of the export's names are
    replaced and nothing else is touched).

    Returns the files a previous export wrote there (to be replaced), or [] for a new directory.
    """
    from minigpt.errors import check_writable

    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    resolved = out.resolve()
    for src in sources:
        if resolved == src.resolve():
            raise UserError(f"output directory {str(out)!r} is the source directory; choose another")
    check_writable(out)
    if not out.exists() or not any(out.iterdir()):
        return []
    return previous_export_files(out, overwrite)


def previous_export_files(out: Path, overwrite: bool = False) -> list[str]:
    """The files a previous export recorded in `out/minigpt_export.json` (plain names only).

    Raises:
        UserError: `out` holds files but no record (no export made them), unless `overwrite`
            (then [] is returned: no file is counted as the export's own).
    """
    marker = out / EXPORT_MARKER
    if not marker.is_file():
        if overwrite:
            return []
        held = sorted(p.name for p in out.iterdir())
        raise UserError(
            f"output directory {str(out)!r} holds files that no export made ({', '.join(held[:4])}"
            f"{', …' if len(held) > 4 else ''}); choose another --out, or pass --overwrite to write into it "
            "(files of the export's names are replaced, nothing else is touched)"
        )
    try:
        files = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
    except (OSError, json.JSONDecodeError):
        files = []
    # Only plain names inside `out`: never follow a record out of the directory.
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f not in (".", "..")]


@torch.no_grad()
def _verify(source: MiniGPTForCausalLM, llama: torch.nn.Module) -> None:
    """Compare the logits of source and translated model on a few random ids.

    Raises:
        RuntimeError: if they differ (a translation bug, not a user error).
    """
    device = next(source.parameters()).device
    gen = torch.Generator().manual_seed(0)
    t = min(16, source.config.max_position_embeddings)
    ids = torch.randint(0, source.config.vocab_size, (2, t), generator=gen)
    was_training = source.training
    source.eval()
    try:
        ours = source(ids.to(device), use_cache=False).logits.float().cpu()  # (2, t, V)
    finally:
        source.train(was_training)
    theirs = llama(ids, use_cache=False).logits.float()  # (2, t, V)
    dtype = next(llama.parameters()).dtype
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    err = (ours - theirs).abs().max().item()
    scale = max(1.0, ours.abs().max().item())
    if not err <= tol * scale:
        raise RuntimeError(f"exported model disagrees with the source: max |Δlogit| = {err:.3g}")


def export_to_llama(
    model_dir_or_model: str | os.PathLike | MiniGPTForCausalLM,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """`export_to_hf(..., fmt="llama")`: a plain `LlamaForCausalLM` checkpoint."""
    return export_to_hf(model_dir_or_model, out_dir, "llama", tokenizer_dir, dtype, verify, overwrite)


def export_to_hf(
    model_dir_or_model: str | os.PathLike | MiniGPTForCausalLM,
    out_dir: str | os.PathLike,
    fmt: str = "llama",
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write `model_dir_or_model` as a `transformers` checkpoint of architecture `fmt` (`llama`,
    `mistral` or `mixtral`, see `hf_config_from`) in `out_dir`.

    Args:
        model_dir_or_model: a MiniGPT model directory (as written by `save_pretrained`; a run
            directory with the tokenizer files beside the model works) or a
            `MiniGPTForCausalLM` in memory (not modified; PEFT adapters must be merged first).
        out_dir: the directory to write; created if missing. It must be empty, missing, or a
            previous export (it holds `minigpt_export.json`), whose files are then replaced.
        tokenizer_dir: where to take the tokenizer files from; by default the model directory
            (for an in-memory model: the directory it was loaded from, if any). Missing
            tokenizer files in the default place are not an error.
        dtype: weight dtype of the export (`float32`/`fp32`, `bfloat16`/`bf16`,
            `float16`/`fp16`); None or `auto` keeps the source's.
        fmt: the target architecture (`llama`, `mistral`, `mixtral`).
        verify: run both models on random ids before saving and check the logits agree.
        overwrite: write into a non-empty `out_dir` that no export made (files of the
            export's names are replaced; nothing else is touched).

    Returns:
        The output directory as a `Path`.

    Raises:
        UserError: on a missing or non-MiniGPT model, a bad dtype, a tokenizer directory
            without tokenizer files or with a tokenizer that is not the model's
            (`check_tokenizer_fits`), shapes Llama cannot express, or an `out_dir` that is
            non-empty and not a previous export.
        RuntimeError: if `verify` finds the exported model's logits differ from the source's.
    """
    from transformers import GenerationConfig, LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM

    target_class = {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "mixtral": MixtralForCausalLM}.get(fmt)
    if target_class is None:
        raise UserError(f"unsupported export format {fmt!r}; supported: {', '.join(HF_FORMATS)}")
    target_dtype = _parse_dtype(dtype)
    out = Path(out_dir)
    source_dir: Path | None = None
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        source_dir = Path(model_dir_or_model)
        model = load_export_source(source_dir)
    elif isinstance(model_dir_or_model, MiniGPTForCausalLM):
        model = model_dir_or_model
        loaded_from = getattr(model, "name_or_path", "") or ""
        if loaded_from and Path(loaded_from).is_dir():
            source_dir = Path(loaded_from)
    else:
        hint = " (merge LoRA adapters first: model.merge_and_unload())" if hasattr(model_dir_or_model, "merge_and_unload") else ""
        raise UserError(
            f"export_to_llama needs a model directory or a MiniGPTForCausalLM, got "
            f"{type(model_dir_or_model).__name__}{hint}"
        )

    # Tokenizer files: an explicit directory must have some; the default place may have none.
    tok_files: list[Path] = []
    if tokenizer_dir is not None:
        tdir = Path(tokenizer_dir)
        if not tdir.is_dir():
            raise UserError(f"tokenizer directory {str(tdir)!r} does not exist")
        tok_files = [tdir / n for n in TOKENIZER_FILES if (tdir / n).is_file()]
        if not tok_files:
            raise UserError(f"tokenizer directory {str(tdir)!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, …)")
    elif source_dir is not None:
        tok_files = [source_dir / n for n in TOKENIZER_FILES if (source_dir / n).is_file()]
    gen_config_file = source_dir / "generation_config.json" if source_dir is not None else None
    tok_json = [f for f in tok_files if f.name == "tokenizer.json"]
    if tok_json:  # the export must ship the model's own tokenizer
        from minigpt.model.checks import check_tokenizer_fits
        from minigpt.tokenizer import load_tokenizer

        check_tokenizer_fits(load_tokenizer(tok_json[0].parent), model.config, tok_json[0].parent, source_dir or "(in memory)")

    old_files = _check_out_dir(out, [p for p in (source_dir, Path(tokenizer_dir) if tokenizer_dir else None) if p], overwrite)
    if not tok_files:
        import warnings

        warnings.warn(f"{source_dir or 'the model'} holds no tokenizer files: the export has no tokenizer "
                      "(pass --tokenizer DIR to include one)", stacklevel=2)

    llama_config = hf_config_from(model.config, fmt)
    source_dtype = next(model.parameters()).dtype
    llama = target_class(llama_config).to(source_dtype).eval()
    state = _hf_state(model, fmt)
    expected = set(llama.state_dict())
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise UserError(
            f"this model has no {fmt} equivalent: "
            f"parameters without a {fmt} counterpart {extra[:5]}, {fmt} parameters missing {missing[:5]}"
        )
    llama.load_state_dict(state, strict=True)
    if llama_config.tie_word_embeddings:
        llama.tie_weights()
    if verify:
        _verify(model, llama)
    if target_dtype is not None and target_dtype != source_dtype:
        llama = llama.to(target_dtype)
    llama.generation_config = GenerationConfig.from_dict(model.generation_config.to_dict())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        llama.save_pretrained(tmp)  # safetensors: the only format transformers 5 writes
        for f in tok_files:
            shutil.copy2(f, tmp / f.name)
        if gen_config_file is not None and gen_config_file.is_file():
            shutil.copy2(gen_config_file, tmp / gen_config_file.name)
        written = sorted(p.name for p in tmp.iterdir())
        record: dict[str, Any] = {
            "format": fmt,
            "source": str(source_dir) if source_dir is not None else None,
            "dtype": str(next(llama.parameters()).dtype).removeprefix("torch."),
            "files": written + [EXPORT_MARKER],
        }
        try:
            from importlib.metadata import version

            record["minigpt_version"] = version("minigpt")
        except Exception:  # noqa: BLE001 — not installed as a distribution (run from a source tree)
            pass
        (tmp / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

        if out.exists():
            # Replace a previous export: drop what it wrote, keep anything the user added.
            for name in old_files:
                p = out / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
            for p in tmp.iterdir():
                os.replace(p, out / p.name)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["EXPORT_MARKER", "HF_FORMATS", "TOKENIZER_FILES", "export_to_hf", "export_to_llama", "hf_config_from", "llama_config_from"]
