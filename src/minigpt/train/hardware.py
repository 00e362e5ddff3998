"""The machine a run trains on: what it is (recorded beside the run as `OUT/environment.json`),
what its matrix multiply peaks at, and how many FLOPs a decoder spends per token, so that a
report can state throughput as model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import torch

ENVIRONMENT_FILE = "environment.json"


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field : value` line of `/proc/cpuinfo` (None off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip().lower() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux, else `platform.processor()`), or the
    machine type when neither says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU features that decide the fast precision on CPU (AMX, AVX-512 BF16, AVX2), as
    `/proc/cpuinfo` lists them; empty where that file does not exist."""
    have = set((_cpuinfo("flags") or "").split())
    return [flag for flag in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "avx_ne_convert") if flag in have]


def environment(device: torch.device, precision: str, world_size: int = 1) -> dict[str, Any]:
    """A JSON-able description of the machine and software a run uses.

    Args:
        device: the training device (`cpu`, `cuda:0`, ...).
        precision: the resolved precision (`fp32`, `bf16`, `fp16`).
        world_size: processes training together.

    Returns keys `host`, `cpu`, `cpu_flags`, `cpu_count`, `torch_threads`, `device`, `gpu`
    (None on CPU), `precision`, `world_size`, `platform`, `python`, and the versions of
    `torch`, `transformers` and `minigpt`.
    """
    import transformers

    import minigpt

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": gpu,
        "precision": precision,
        "world_size": world_size,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "minigpt": minigpt.__version__,
    }


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, min_seconds: float = 0.3) -> float:
    """Measured dense matrix-multiply throughput of this CPU in `dtype`, in FLOP/s: an `(n, n)`
    by `(n, n)` product (2·n³ FLOPs) repeated for at least `min_seconds` after a warm-up, with
    torch's current thread count. The denominator of MFU (Chowdhery et al. 2022, PaLM,
    arXiv:2204.02311, appendix B)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * n**3 * reps / elapsed


def flops_per_token(num_parameters: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token of a decoder: `6·N` for the weights (forward + backward) plus
    `12·L·C·T` for attention scores and values over a context of `T` tokens (Kaplan et al. 2020,
    arXiv:2001.08361, table 1; PaLM's MFU, arXiv:2204.02311, appendix B). `N` excludes nothing:
    callers pass the count they want (embeddings included or not)."""
    return 6.0 * num_parameters + 12.0 * num_layers * hidden_size * seq_len


__all__ = ["ENVIRONMENT_FILE", "cpu_flags", "cpu_name", "environment", "flops_per_token", "matmul_peak"]
