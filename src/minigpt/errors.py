"""Errors that are the user's to fix (bad data, bad paths, bad config).

The CLI prints these as one clear line instead of a traceback; everything else is a bug and
keeps its traceback.
"""


class UserError(ValueError):
    """A problem with user input: the message names the file and line, or the field, at fault."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """`error`'s message cut to its first line and `limit` characters, for a one-line report
    (torch's C++ errors and jinja's run over many lines); the exception's type name when the
    message is empty."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


class DiskFullError(OSError):
    """A write failed because the device is full (or over quota). Raised with a message that
    says what was being written and what was kept; the CLI prints it as one line."""


#: What full-disk failures look like when a library wraps the OS error in its own: torch's zip
#: writer ("unexpected pos", "file write failed") and safetensors ("StorageFull").
_FULL_DISK_SIGNS = ("no space left on device", "storagefull", "disk quota exceeded", "unexpected pos", "file write failed")


def is_disk_full(error: BaseException) -> bool:
    """True when `error` (or an exception it was raised from) is a full disk or quota.

    Matches `OSError` with errno ENOSPC or EDQUOT, and the messages `torch.save` and
    `safetensors` give for the same failure, which are not `OSError`s.
    """
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(error).lower() for sign in _FULL_DISK_SIGNS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _path_errnos() -> tuple[int, ...]:
    import errno

    return (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG)


def is_unwritable(error: BaseException) -> bool:
    """True when `error` (or an exception it was raised from) is the system refusing a path:
    permission denied, a read-only file system, or a path that cannot exist (a missing or
    non-folder parent, a name too long: errno EACCES, EPERM, EROFS, ENOENT, ENOTDIR, EISDIR,
    ENAMETOOLONG) on an `OSError` that names the path."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _path_errnos() and error.filename:
            return True
        error = error.__cause__ or error.__context__
    return False


def unwritable_message(error: BaseException) -> str:
    """One line for an `is_unwritable` error: the file, and why it could not be used."""
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _path_errnos() and error.filename:
            where = f" {error.filename}"
            if error.errno == errno.EROFS:
                return f"cannot write{where}: read-only file system"
            if error.errno in (errno.EACCES, errno.EPERM):
                return f"cannot open{where}: permission denied"
            return f"cannot use{where}: {(error.strerror or 'invalid path').lower()}"
        error = error.__cause__ or error.__context__
    return "permission denied"


def check_writable(path, option: str = "--out") -> None:
    """Refuse, before any work, an output `path` (a file or folder, to be created or replaced)
    that this process cannot write: the nearest folder that exists on the way to it must be a
    writable folder (not on a read-only file system, and with write permission).

    Raises:
        UserError: naming `option`, the path, and why (read-only file system, permission
            denied, or a file where a folder is needed).
    """
    import os
    from pathlib import Path

    target = Path(path).absolute()
    probe = target if target.is_dir() else target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is a file, not a folder")
    effective = os.access in os.supports_effective_ids  # writes are checked against the effective user
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=effective):
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise UserError(f"{option} {path}: cannot write there: {probe} {why}; choose another {option}")


def check_output_file(path, option: str = "--out", inputs: dict | None = None) -> None:
    """Refuse, before any work, an output file that would destroy an input or cannot be written.

    Args:
        path: the file the command will write (atomically replacing it if it exists).
        option: the option that named it, for the message.
        inputs: option name -> path, list of paths, or None: the command's inputs. `path` may
            not be one of them (the same file, by any name), nor an existing file inside an
            input folder (a model directory).

    Raises:
        UserError: `path` is a folder, is an input or inside an input folder, or cannot be
            written (`check_writable`).
    """
    import os
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name inside it (e.g. {target / 'out.json'})")
    for name, value in (inputs or {}).items():
        for source in value if isinstance(value, (list, tuple)) else [value]:
            if not source or not Path(source).exists():
                continue
            same = target.exists() and os.path.samefile(target, source)
            inside = target.exists() and Path(source).is_dir() and Path(source).resolve() in target.resolve().parents
            if same or inside:
                what = "is" if same else "is inside"
                raise UserError(f"{option} {path} {what} the --{name} input {source}; writing it would destroy "
                                f"that input: choose another {option}")
    check_writable(target, option)


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The seeds `torch.manual_seed` and `torch.Generator.manual_seed` accept."""


def check_seed(seed, option: str = "--seed") -> None:
    """Refuse a seed that torch cannot take (it would fail mid-run with an overflow).

    Raises:
        UserError: `seed` is not None and not an integer in [-2**63, 2**64 - 1].
    """
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX:
        raise UserError(f"{option}: must be an integer in [-2**63, 2**64 - 1], got {seed!r}")

def check_probability(value: object, field: str) -> float:
    """`value` as a float in [0, 1].

    Raises:
        UserError: anything else, naming `field`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{field}: must be a number in [0, 1], got {value!r}")
    return float(value)


def check_count(n: object, field: str = "n") -> int:
    """`n` as a non-negative integer.

    Raises:
        UserError: anything else, naming `field`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"{field}: must be a non-negative integer, got {n!r}")
    return n
