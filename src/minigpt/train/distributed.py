"""Device choice and `torchrun` data parallelism (DDP: gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if available, then Apple MPS, then CPU; anything else is passed to torch."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by `torchrun` (RANK/WORLD_SIZE set).

    Returns `(rank, world_size, device)`; on CUDA each rank takes `cuda:LOCAL_RANK`. Without
    torchrun: `(0, 1, device)`.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    """Wait for every rank (no-op outside `torchrun`)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
