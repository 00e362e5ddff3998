"""One process per run directory: an exclusive lock on OUT, held until the process exits.

A training command takes the lock before it prepares any data, so a second command on the same
`--out` (a second run, a second `--resume`, an `--overwrite`) is refused at once with the PID of
the holder, instead of overwriting the first run's tokenizer or checkpoints under it.

The lock is `fcntl.flock` on `OUT/.minigpt.lock`, which holds the owner's PID as text. The
kernel drops a flock when its process dies, however it dies (SIGKILL included), so a lock file
left behind by a crashed run never blocks the next one: there are no stale locks to detect. On
platforms without `fcntl` (Windows) no lock is taken.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path

from minigpt.errors import UserError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover — Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".minigpt.lock"
#: Written into an empty or new run directory when a training command claims it, before any data
#: preparation: the folder is a minigpt run's even before its `run.json` exists.
RUN_MARKER = ".minigpt-run"

# Run directory (resolved) -> (open file descriptor holding its lock, whether we created it).
_held: dict[Path, tuple[int, bool]] = {}


def _is_main_rank() -> bool:
    """Under torchrun every rank runs the command; only rank 0 owns the directory."""
    return int(os.environ.get("RANK", "0")) == 0


def lock_run_dir(out_dir: str | Path) -> bool:
    """Take the exclusive lock on run directory `out_dir` (created if missing) until
    `unlock_run_dir` or the end of the process; a no-op when this process already holds it, on
    ranks other than 0, and where `fcntl` is missing.

    Returns True if this call took the lock (the caller may then release it), else False.

    Raises:
        UserError: another live process holds the lock (the message gives its PID), or
            `out_dir` cannot be created or written (an existing file, no permission, a
            read-only file system).
    """
    if fcntl is None or not _is_main_rank():
        return False
    path = Path(out_dir).resolve()
    if path in _held:
        return False
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise UserError(
                    f"{out_dir} is in use by another minigpt process (PID {holder}); wait for it to "
                    "finish, stop it, or choose another --out"
                ) from None
            # The holder we waited on may have removed the file between our open and our lock:
            # then we locked an orphan inode, and must lock the file now at that path instead.
            try:
                same = os.stat(path / LOCK_FILE).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot use it as a run directory: {e.strerror or e}") from None
    _held[path] = (fd, created)
    return True


def unlock_run_dir(out_dir: str | Path) -> None:
    """Release this process's lock on `out_dir` (if held) and remove the lock file, and the
    directory too if the lock created it and nothing else was written there."""
    path = Path(out_dir).resolve()
    fd, created = _held.pop(path, (None, False))
    if fd is None:
        return
    try:
        (path / LOCK_FILE).unlink(missing_ok=True)
        left = [p for p in path.iterdir() if p.name != RUN_MARKER]
        if created and not left:
            (path / RUN_MARKER).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass
    os.close(fd)


@atexit.register
def release_all_locks() -> None:
    """Release every run-directory lock this process holds (also run at exit)."""
    for path in list(_held):
        unlock_run_dir(path)


def remove_partial_writes(out_dir: str | Path) -> list[Path]:
    """Delete what an interrupted write left in a run directory: hidden temporary checkpoint
    folders (`checkpoints/.tmp-*`, `checkpoints/.old-*`) and staging folders (`.final-tmp`,
    `.tok-tmp`). Call it only while holding the directory's lock, so no live writer owns them.

    Returns the paths removed.
    """
    root = Path(out_dir)
    found = [p for p in (root / ".final-tmp", root / ".tok-tmp") if p.exists()]
    if (root / "checkpoints").is_dir():
        found += [p for p in (root / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".old-"))]
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found
