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
