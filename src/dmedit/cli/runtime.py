"""What every `dmedit` command does around its work: the process environment set before anything
imports torch or huggingface_hub, and errors, Ctrl-C and SIGTERM turned into exit codes with one
line on stderr. Light: `dmedit --version` and `-h` import this without torch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import typer

from dmedit.core.console import Reporter
from dmedit.core.disk import failed_io_line
from dmedit.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, DmeditError, Terminated
from dmedit.core.threads import configure_threads
from dmedit.models.hub import set_offline
from dmedit.runs.signals import terminate_as_exception

EXIT_CODES_HELP = (
    "Exit codes: 0 ok (also a skipped existing output), 1 system error (e.g. disk full), 2 usage, "
    "3 bad input video or mask, 4 model missing or unloadable, 5 out of memory, 130 interrupted, "
    "143 terminated."
)
HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}


@contextmanager
def exit_codes(reporter: Reporter) -> Iterator[None]:
    """DmeditError -> its exit code with one line on stderr; Ctrl-C -> 130; SIGTERM -> 143;
    a refused system read or write -> 1. Every one of them without a traceback."""
    try:
        with terminate_as_exception():
            yield
    except DmeditError as error:
        reporter.error(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        reporter.error("interrupted; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        reporter.error("terminated; nothing was written")
        raise typer.Exit(EXIT_TERMINATED) from None
    except OSError as error:
        reporter.error(failed_io_line(error=error))
        raise typer.Exit(EXIT_FAILURE) from None


def prepare_environment(*, offline: bool) -> None:
    """CPU threads, offline hub and quiet downloads: before anything imports torch or huggingface_hub."""
    configure_threads()
    if offline:
        set_offline()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
