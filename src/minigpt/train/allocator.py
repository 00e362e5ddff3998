"""Keep freed CPU memory in the process instead of returning it to the OS.

glibc serves large allocations (activations, logits) with fresh `mmap`s and unmaps them on
free, so every training step page-faults its buffers in again; in a VM that first touch is
a large share of a step (see `benchmarks/bench_train.py`, which runs with this on). Turning off mmap
for malloc and raising the trim threshold makes freed blocks reusable, which is what
tcmalloc/jemalloc achieve when preloaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_done = False


def keep_freed_memory() -> bool:
    """Apply the glibc settings once per process (Linux/glibc only); returns whether applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave the allocator alone
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    _done = ok
    return ok
