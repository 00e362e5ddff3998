"""Device choice and `torchrun` data parallelism (DDP: gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from minigpt.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if available, then Apple MPS, then CPU; `cpu`, `cuda`, `cuda:N` and `mps`
    are checked against this machine.

    Raises:
        UserError: an unknown device name, or a device this machine does not have.
    """
    if name != "auto":
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise UserError(f"device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"device: {name!r} asked for, but this machine has no usable CUDA GPU (use auto or cpu)")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise UserError(f"device: {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        elif device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError(f"device: {name!r} asked for, but Apple MPS is not available here (use auto or cpu)")
        elif device.type not in ("cpu", "cuda", "mps"):
            raise UserError(f"device: {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


#: x86 CPU capabilities (`torch.backends.cpu.get_cpu_capability()`) whose oneDNN bf16 matmuls
#: run natively. On AVX2-only CPUs bf16 is emulated: `benchmarks/bench_precision.py` on a 2-core
#: AMD EPYC measured a 1024³ bf16 matmul at 0.008× fp32's speed and a `tiny` training step at
#: 0.076× (11.4 s vs 0.86 s).
_FAST_BF16_CPU = ("AVX512", "AMX")


def pick_precision(name: str, device: torch.device) -> str:
    """`auto` → `bf16` where bf16 is the fast path (CUDA with bf16 support, MPS, x86 CPUs with
    AVX-512), else `fp32`; `bf16`, `fp16` and `fp32` are returned unchanged.

    Raises:
        ValueError: any other name.
    """
    if name in ("bf16", "fp16", "fp32"):
        return name
    if name != "auto":
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, not {name!r}")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "mps":
        return "bf16"
    if device.type == "cpu":
        return "bf16" if torch.backends.cpu.get_cpu_capability() in _FAST_BF16_CPU else "fp32"
    return "fp32"


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
