"""Errors a user can act on, each with the exit code the CLI returns for it.

Exit codes (also in the README and `dmedit --help`):
1 system error (disk full, permissions), 2 usage, 3 bad input video or mask, 4 model missing or
unloadable, 5 out of memory, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import signal

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OOM = 5
EXIT_BATCH_FAILED = 6
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class DmeditError(Exception):
    """Base class: `str(error)` is the one line shown to the user."""

    exit_code = EXIT_FAILURE


class NotWritable(DmeditError):
    """An output folder refuses new files (permissions, a read-only file system): a system error."""

    exit_code = EXIT_FAILURE


class UsageError(DmeditError):
    """Bad flags, bad config or registry file, bad output path."""

    exit_code = EXIT_USAGE


class InputError(DmeditError):
    """The input video or mask cannot be used."""

    exit_code = EXIT_INPUT


class ModelError(DmeditError):
    """A model's weights are missing or cannot be loaded, or the model produced NaN."""

    exit_code = EXIT_MODEL


class OutOfMemoryError(DmeditError):
    """The device ran out of memory."""

    exit_code = EXIT_OOM


class BatchFailed(DmeditError):
    """`dmedit batch` ran every job, and some of them failed (each one is in the summary)."""

    exit_code = EXIT_BATCH_FAILED


class InterruptedRun(DmeditError):
    """The run stopped on a signal (Ctrl-C: 130, SIGTERM: 143); a checkpoint may have been written."""

    def __init__(self, message: str, *, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Terminated(BaseException):
    """Raised by the SIGTERM handler (like KeyboardInterrupt for SIGINT), so cleanup runs."""
