"""Adapter methods besides LoRA: bottleneck adapters (Houlsby / Pfeiffer), IA³, prompt tuning.

- **Bottleneck adapters.** A small residual MLP on a sublayer's output,
  `h ← h + W_up · f(W_down · h)` with `W_down (C/r, C)`, `W_up (C, C/r)` and `W_up = 0` at the
  start, so training begins from the base model's function exactly. Houlsby et al. 2019
  ("Parameter-Efficient Transfer Learning for NLP", arXiv:1902.00751) put one after the
  attention and one after the feed-forward of every block; Pfeiffer et al. 2021 ("AdapterFusion",
  arXiv:2005.00247) only after the feed-forward. AdapterHub's `adapters` library implements
  them, but its releases pin transformers 4.x, and PEFT has no bottleneck method, so the
  modules are ours (this file); they are saved and loaded in PEFT's file layout
  (`adapter_config.json` with `peft_type: "MINIGPT_BOTTLENECK"` + `adapter_model.safetensors`),
  so `minigpt chat/generate/serve --model ADAPTER_DIR` find the base as for LoRA. Being
  non-linear they cannot be merged into the weights; `remove_bottleneck_adapters` takes them out.
- **IA³** (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
  In-Context Learning", arXiv:2205.05638): learned per-channel scales of the keys, values and
  feed-forward activations; PEFT's `IA3Config`, injected in place like LoRA (mergeable).
- **Prompt tuning** (Lester et al. 2021, arXiv:2104.08691): learned embeddings of virtual
  tokens prepended to every input; PEFT's `PromptTuningConfig`, returned as a wrapper like
  prefix tuning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from minigpt.errors import UserError

#: `peft_type` written in `adapter_config.json` for bottleneck adapters.
BOTTLENECK_TYPE = "MINIGPT_BOTTLENECK"
BOTTLENECK_CONFIGS = ("houlsby", "pfeiffer")


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """`h + up(f(down(h)))`: `(..., C) -> (..., C)`, with `up` zero-initialised (identity at start)."""

    def __init__(self, hidden_size: int, bottleneck: int, non_linearity: str = "relu") -> None:
        super().__init__()
        self.adapter_down = nn.Linear(hidden_size, bottleneck)
        self.act = _ACTIVATIONS[non_linearity]()
        self.adapter_up = nn.Linear(bottleneck, hidden_size)
        nn.init.normal_(self.adapter_down.weight, std=0.01)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """`(..., C) -> (..., C)`."""
        return h + self.adapter_up(self.act(self.adapter_down(h)))


class WithAdapter(nn.Module):
    """A block's output projection (`o_proj` / `down_proj`) followed by a `BottleneckAdapter`;
    `base_layer` keeps the original module (and its parameter names under that prefix)."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`adapter(base_layer(x))`."""
        return self.adapter(self.base_layer(x))


def _blocks(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise UserError(f"bottleneck adapters need a MiniGPT decoder (model.layers); got {type(model).__name__}")
    return list(layers)


def has_bottleneck_adapters(model: nn.Module) -> bool:
    """True when `model` carries bottleneck adapters (`apply_bottleneck_adapters`)."""
    return any(isinstance(m, WithAdapter) for m in model.modules())


def apply_bottleneck_adapters(
    model: nn.Module, config: str = "houlsby", reduction_factor: int = 16, non_linearity: str = "relu", verbose: bool = True
) -> nn.Module:
    """Insert bottleneck adapters into every block of `model` in place and freeze everything else.

    Args:
        model: a dense `MiniGPTForCausalLM`.
        config: `houlsby` (after attention and after the feed-forward) or `pfeiffer` (after
            the feed-forward only).
        reduction_factor: r; the bottleneck is `hidden_size // r` wide (≥ 1).
        non_linearity: relu, gelu, silu or tanh.
        verbose: print the trainable share.

    Returns:
        The same model; only the adapters' parameters are trainable.

    Raises:
        UserError: an unknown config or activation, r < 1, a mixture-of-experts model, or a
            model that already has adapters.
    """
    from minigpt.model.lora import has_lora

    if config not in BOTTLENECK_CONFIGS:
        raise UserError(f"bottleneck adapter config must be one of {', '.join(BOTTLENECK_CONFIGS)}, got {config!r}")
    if non_linearity not in _ACTIVATIONS:
        raise UserError(f"adapter non_linearity must be one of {', '.join(_ACTIVATIONS)}, got {non_linearity!r}")
    if reduction_factor < 1:
        raise UserError(f"adapter reduction_factor must be ≥ 1, got {reduction_factor}")
    if has_bottleneck_adapters(model) or has_lora(model):
        raise UserError("the model already carries adapters; add bottleneck adapters to a fresh base model")
    if getattr(model.config, "num_local_experts", 0):
        raise UserError("bottleneck adapters are not supported on mixture-of-experts models; use LoRA (it reaches every expert)")
    hidden = model.config.hidden_size
    width = max(1, hidden // reduction_factor)
    model.requires_grad_(False)
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    for block in _blocks(model):
        if config == "houlsby":
            block.self_attn.o_proj = WithAdapter(block.self_attn.o_proj, BottleneckAdapter(hidden, width, non_linearity).to(device, dtype))
        block.mlp.down_proj = WithAdapter(block.mlp.down_proj, BottleneckAdapter(hidden, width, non_linearity).to(device, dtype))
    model.__dict__["bottleneck_adapter_config"] = {
        "peft_type": BOTTLENECK_TYPE, "config": config, "reduction_factor": reduction_factor, "non_linearity": non_linearity,
        "bottleneck": width, "base_model_name_or_path": _base_path(model),
    }
    if verbose:
        from minigpt.model.lora import trainable_summary

        print(f"{config} bottleneck adapters (width {width}): {trainable_summary(model)}")
    return model


def _base_path(model: nn.Module) -> str | None:
    """The base's local directory (absolute), also recording its fingerprint on the model for
    the saved adapter's `adapter_base.json`, as LoRA does; None when not loaded from one."""
    from minigpt.model.checks import model_fingerprint

    name = model.__dict__.get("name_or_path") or ""
    if not (name and (Path(name) / "config.json").is_file()):
        return None
    model.__dict__["base_model_sha256"] = model_fingerprint(name)
    return str(Path(name).resolve())


def bottleneck_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors alone, keyed by their names in `model`."""
    return {k: v for k, v in model.state_dict().items() if ".adapter.adapter_" in k}


def save_bottleneck_adapters(model: nn.Module, out_dir: str | os.PathLike, final_dir: str | os.PathLike | None = None) -> None:
    """Write the adapters alone to `out_dir`: `adapter_config.json` (`peft_type`
    MINIGPT_BOTTLENECK, config, sizes, the base's path relative to the adapter folder) and
    `adapter_model.safetensors`; each file goes to a temporary name, then is renamed.

    Raises:
        UserError: the model carries no bottleneck adapters.
    """
    from minigpt.model.lora import relative_base_path, write_adapter_files

    if not has_bottleneck_adapters(model):
        raise UserError("the model carries no bottleneck adapters to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(model.__dict__["bottleneck_adapter_config"])
    config["base_model_name_or_path"] = relative_base_path(config.get("base_model_name_or_path"), Path(final_dir or out))
    state = {k: v.detach().contiguous().cpu() for k, v in bottleneck_state_dict(model).items()}

    def write_config(folder: Path) -> None:
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_adapter_files(out, write_config, state, model.__dict__.get("base_model_sha256"))


def load_bottleneck_adapters(model: nn.Module, adapter_dir: str | os.PathLike, trainable: bool = False) -> nn.Module:
    """Insert the adapters saved in `adapter_dir` into the base `model` (in place).

    Raises:
        UserError: not a bottleneck adapter directory, or tensors that do not fit this base.
    """
    from safetensors.torch import load_file

    from minigpt.model.lora import read_adapter_config, resolved_base

    path = Path(adapter_dir)
    cfg = read_adapter_config(path)
    if cfg.get("peft_type") != BOTTLENECK_TYPE:
        raise UserError(f"{path}: not a bottleneck adapter (peft_type {cfg.get('peft_type')!r})")
    apply_bottleneck_adapters(model, cfg["config"], int(cfg["reduction_factor"]), cfg.get("non_linearity", "relu"), verbose=False)
    state = load_file(str(path / "adapter_model.safetensors"))
    expected = bottleneck_state_dict(model)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        remove_bottleneck_adapters(model)
        raise UserError(f"{path}: the adapter's tensors do not fit this base model (trained on a different size?)")
    model.load_state_dict(state, strict=False)
    model.__dict__["bottleneck_adapter_config"]["base_model_name_or_path"] = resolved_base(path, cfg.get("base_model_name_or_path"))
    for name, p in model.named_parameters():
        p.requires_grad_(trainable and ".adapter.adapter_" in name)
    return model


def remove_bottleneck_adapters(model: nn.Module) -> nn.Module:
    """Take the adapters out: every wrapped projection is its original module again (all
    parameters trainable, as a plain model). Bottleneck adapters are non-linear, so there is
    nothing to merge; this gives the base model back.

    Raises:
        UserError: the model carries no bottleneck adapters.
    """
    if not has_bottleneck_adapters(model):
        raise UserError("the model carries no bottleneck adapters to remove")
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, WithAdapter)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.base_layer)
    model.__dict__.pop("bottleneck_adapter_config", None)
    model.requires_grad_(True)
    return model


def apply_ia3(
    model: nn.Module, target_modules: Sequence[str] | None = None, feedforward_modules: Sequence[str] | None = None, verbose: bool = True
) -> nn.Module:
    """Inject IA³ scaling vectors (PEFT's `IA3Config`) into `model` in place; freeze the rest.

    By default the keys, the values and the feed-forward's hidden activations are rescaled
    (`k_proj`, `v_proj` outputs; `down_proj` input), as in the paper. Saved, loaded (`load_adapter`)
    and merged (`merge_lora`) through the same PEFT paths as LoRA.

    Raises:
        UserError: the model already has adapters, or a target that names no linear layer.
    """
    from peft import IA3Config, inject_adapter_in_model

    from minigpt.model.lora import trainable_summary, resolve_target_modules, record_base_path, has_lora

    if has_lora(model) or has_bottleneck_adapters(model):
        raise UserError("the model already carries adapters; apply IA³ to a fresh base model")
    targets = resolve_target_modules(model, list(target_modules or ("k_proj", "v_proj", "down_proj")))
    feedforward = list(feedforward_modules if feedforward_modules is not None else [t for t in targets if t in ("down_proj", "up_proj", "gate_proj")])
    model.requires_grad_(False)
    inject_adapter_in_model(IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM"), model)
    record_base_path(model)
    if verbose:
        print(f"IA³ on {', '.join(targets)}: {trainable_summary(model)}")
    return model


def apply_prompt_tuning(model: nn.Module, num_virtual_tokens: int = 20, init_text: str | None = None, tokenizer=None, verbose: bool = True):
    """Wrap `model` for prompt tuning (PEFT's `PromptTuningConfig`): `num_virtual_tokens`
    learned input embeddings are prepended to every sequence; every model weight is frozen.

    Returns peft's `PeftModelForCausalLM` (as `apply_prefix_tuning`): train it, call its
    `generate`; `save_pretrained(dir)` writes the prompt alone and
    `peft.PeftModel.from_pretrained(base, dir)` loads it. Its logits cover the virtual tokens
    too (`(B, n + T, V)`); the LM objectives read the last T.

    Args:
        init_text: initialise the virtual tokens from this text's token embeddings (needs
            `tokenizer`); default: random.

    Raises:
        UserError: `num_virtual_tokens` < 1, or `init_text` without a tokenizer.
    """
    from peft import PromptTuningConfig, PromptTuningInit

    from minigpt.model.lora import wrap_with_peft

    if num_virtual_tokens < 1:
        raise UserError(f"num_virtual_tokens must be >= 1, not {num_virtual_tokens}")
    kwargs = {}
    if init_text is not None:
        if tokenizer is None:
            raise UserError("prompt tuning from init_text needs the tokenizer")
        kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=init_text,
                      tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None))
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, **kwargs)
    return wrap_with_peft(model, config, f"prompt tuning ({num_virtual_tokens} virtual tokens)", verbose)
