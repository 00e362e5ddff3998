"""How many CPU threads torch uses (`minigpt --threads N|auto`).

torch's default is one thread per physical core, whatever else the machine is doing. On a
small, shared CPU that loses badly: with the other core busy, 10 tiny pretraining steps took
53 s at torch's default against 8 s at one thread, and batch-1 decoding of a small model spends
more time synchronising threads than computing (`benchmarks/bench_threads.py` measures both).
`auto` therefore picks:

* decoding commands (generate, chat, serve, eval, score, embed): 1 thread: one token of a
  small model is too little work to split;
* every other command: the usable cores (its CPU affinity) minus the cores other processes
  keep busy right now (CPU time in /proc/stat over 0.2 s, rounded; the 1-minute load average
  where there is no /proc, though it lags: a command that just ended still counts), at least 1;
  under torchrun each local rank gets its share of those.

An `OMP_NUM_THREADS` the user set is kept when `--threads` is `auto`. No torch import here:
the choice is applied before torch loads (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`) and again with
`torch.set_num_threads` once it has.
"""

from __future__ import annotations

import os

from minigpt.errors import UserError

#: Commands whose time goes to batch-1 decoding.
DECODING_COMMANDS = frozenset({"generate", "chat", "serve", "eval", "score", "embed"})


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pick_threads(command: str, requested: str | int | None = "auto") -> tuple[int, str]:
    """`(threads, why)` for `command`: `requested` if it is a number, else the `auto` rule of
    the module docstring. `why` is a few words for the start-up line.

    Raises:
        UserError: `requested` is neither `auto` nor an integer ≥ 1.
    """
    if requested not in (None, "auto"):
        try:
            n = int(requested)
        except (TypeError, ValueError):
            n = 0
        if n < 1 or str(requested).strip() != str(n):
            raise UserError(f"--threads: must be auto or an integer ≥ 1, got {requested!r}")
        return n, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    if command in DECODING_COMMANDS:
        return 1, "auto: batch-1 decoding"
    busy = busy_cores()
    free = max(1, min(cores, cores - busy))
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    n = max(1, free // max(1, ranks))
    return n, f"auto: {cores} cores, {busy} busy" + (f", {ranks} local ranks" if ranks > 1 else "")


def _cpu_times() -> tuple[int, int] | None:
    """`(busy, total)` jiffies of all CPUs from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def busy_cores(sample: float = 0.2) -> int:
    """Cores kept busy by other processes: the machine's CPU use over `sample` seconds (this
    process is idle meanwhile), in cores, rounded; the 1-minute load average without /proc."""
    import time

    first = _cpu_times()
    if first is None:
        try:
            return int(os.getloadavg()[0] + 0.5)
        except (AttributeError, OSError):
            return 0
    time.sleep(sample)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    cpus = os.cpu_count() or 1
    return int(busy / total * cpus + 0.5) if total > 0 else 0


def set_threads(n: int):
    """Make torch use `n` intra-op threads: through the environment before torch is imported
    (OpenMP and MKL read it once), and `torch.set_num_threads` if it already is.

    Returns a function that restores the previous settings (for callers inside a longer-lived
    process, such as a test runner calling `minigpt.cli.main`)."""
    import sys

    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    torch = sys.modules.get("torch")
    saved_threads = torch.get_num_threads() if torch is not None else None
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    if torch is not None:
        torch.set_num_threads(n)

    def restore() -> None:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if saved_threads is not None:
            sys.modules["torch"].set_num_threads(saved_threads)

    return restore


__all__ = ["DECODING_COMMANDS", "busy_cores", "pick_threads", "set_threads", "usable_cores"]
