"""Signals during a run. Ctrl-C (SIGINT) and SIGTERM (what `timeout`, batch schedulers and container
stops send) are handled alike:

- anywhere in a command, SIGTERM raises `Terminated` (as SIGINT raises KeyboardInterrupt), so
  every `finally` runs and no partial file is left behind (exit 143, or 130 for Ctrl-C);
- inside the step loop, the first SIGINT or SIGTERM asks the loop to stop after the current
  step and write a checkpoint; a second one interrupts at once;
- while a finished bundle is renamed into place, both are held back and delivered afterwards,
  so the bundle appears whole or not at all.

Handlers are installed only in the main thread (Python delivers signals there).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from dmedit.core.errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While active, SIGTERM raises Terminated in the main thread."""
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: _raise_for(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_after_step() -> Iterator[Callable[[], int]]:
    """Yields a function returning the number of the first SIGINT/SIGTERM received (0: none);
    a second signal raises KeyboardInterrupt or Terminated at once."""
    requested = [0]

    def ask_to_stop(signum: int, frame: object) -> None:
        if requested[0]:
            _raise_for(signum)
        requested[0] = signum

    if not _in_main_thread():
        yield lambda: requested[0]
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, ask_to_stop)
    try:
        yield lambda: requested[0]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM for the block (a few renames); they are delivered on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
