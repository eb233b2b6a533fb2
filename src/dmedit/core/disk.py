"""What a failed read or write says about the disk: whether the cause was a want of space (a full
disk, a quota, a file size limit), and the one line a user reads, with the free space left.

A batch stops starting jobs when one fails for want of space (they would fail the same way), so
the cause is read from the error numbers of the exception and of the errors it was raised from
(`__cause__`, `__context__`: a torch.save RuntimeError keeps the OSError of its write there),
never from a message's words.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""No space left on the device, the disk quota exceeded, a file past the size limit (RLIMIT_FSIZE)."""
CHAIN_LIMIT = 16
"""Errors followed through `__cause__`/`__context__` at most (a chain can loop back on itself)."""


def space_error(*, error: BaseException) -> OSError | None:
    """`error`, or the error it was raised from, that is an OSError for want of disk space; None
    when there is none."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < CHAIN_LIMIT:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUT_OF_SPACE_ERRNOS:
            return current
        pending += [current.__cause__, current.__context__]
    return None


def out_of_space(*, error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, is an OSError for want of disk space."""
    return space_error(error=error) is not None


def free_space_note(*, path: str | os.PathLike | None) -> str:
    """"; N MiB free on its disk" for the nearest existing folder of `path` ("" when unknown)."""
    if not path:
        return ""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder if folder.is_dir() else folder.parent).free
    except OSError:
        return ""
    return f"; {free / 2**20:.1f} MiB free on its disk"


def failed_io_line(*, error: OSError) -> str:
    """"FILE: reason; N MiB free on its disk": a refused read or write in one line."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}{free_space_note(path=error.filename)}"
