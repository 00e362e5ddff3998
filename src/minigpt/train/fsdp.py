"""Fully sharded data parallelism (FSDP2) for the training loop, with sharded checkpoints.

`shard_model` applies PyTorch's `torch.distributed.fsdp.fully_shard` to every decoder layer and
then to the root (Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data
Parallel", arXiv:2304.11277; ZeRO-3, Rajbhandari et al. 2020, arXiv:1910.02054): each rank keeps
1/world_size of every parameter, gradient and optimizer state, gathers a layer's weights just
before it runs and frees them after, and reduce-scatters gradients. Under `torchrun` it runs on
CUDA (nccl) and on CPU (gloo).

Checkpoints are written by `torch.distributed.checkpoint` (DCP): every rank writes its own
shards of the model and optimizer into `sharded/`, next to the trainer state that rank 0
writes; `load_sharded` reads them back into a sharded model (resume), and `consolidate` turns
such a checkpoint into a plain model directory without any process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Sub-directory of a checkpoint holding the DCP shards.
SHARDED_DIR = "sharded"


def shard_model(model: nn.Module) -> nn.Module:
    """`fully_shard` each block in `model.model.layers` (any module list named `layers` found
    through `.model`), then the whole model; in place. Returns `model` (now an `FSDPModule`).

    Raises:
        ValueError: the model has no `layers` list to shard.
    """
    from torch.distributed.fsdp import fully_shard

    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers (model.layers) to shard")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (FSDP2's `set_requires_gradient_sync(False)`): the
    counterpart of DDP's `no_sync` for the micro-batches before the last of a step."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict, gathered on every rank (a collective: call it on all ranks);
    on the CPU, so rank 0 can save it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
    """Write this rank's shards of the model and optimizer to `directory/sharded` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(Path(directory) / SHARDED_DIR))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
    """Read the shards `save_sharded` wrote into the (sharded) `model` and `optimizer` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(Path(directory) / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def consolidated_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a sharded checkpoint, read in one process (no process
    group): DCP's `dcp_to_torch_save` joins the shards into a temporary file, which is loaded."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(Path(checkpoint_dir) / SHARDED_DIR), str(target))
        full = torch.load(target, map_location="cpu", weights_only=True)
    return {k: v for k, v in full["model"].items()}


def consolidate(checkpoint_dir: str | Path, out_dir: str | Path, model_class: Any = None) -> Path:
    """Turn a sharded checkpoint into a plain model directory (`save_pretrained`), in one process.

    Args:
        checkpoint_dir: `OUT/checkpoints/step_N` of an FSDP run (it holds `config.json`).
        out_dir: where to write the model (and the tokenizer files the checkpoint holds).
        model_class: the class to build (default `transformers.AutoModelForCausalLM` from the
            saved config, which knows MiniGPT after `import minigpt`).

    Returns:
        `out_dir`.

    Raises:
        ValueError: the shards do not match the model the saved config builds.
    """
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint_dir, out = Path(checkpoint_dir), Path(out_dir)
    config = AutoConfig.from_pretrained(checkpoint_dir)
    model = AutoModelForCausalLM.from_config(config) if model_class is None else model_class(config)
    missing, unexpected = model.load_state_dict(consolidated_state_dict(checkpoint_dir), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ValueError(f"{checkpoint_dir}: shards do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(out)
    for f in checkpoint_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja", ".txt") and f.name not in ("config.json",) and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    return out
