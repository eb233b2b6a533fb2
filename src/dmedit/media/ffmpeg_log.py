"""FFmpeg's log kept off the terminal: dmedit's own one-line errors are all a user sees.

PyAV installs a silent log callback when imported, but anything in the process may turn FFmpeg's
log back on (`av.logging.set_level`, `restore_default_callback`); then a damaged file prints lines
such as "[h264 @ 0x...] error while decoding MB" or "partial file" before our error. Every PyAV call
in dmedit runs inside `quiet_ffmpeg()`. Nothing here runs at import time.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import av
import av.logging


@contextmanager
def quiet_ffmpeg() -> Iterator[None]:
    """FFmpeg logs nothing inside the block (errors still raise); a PyAV log level set by someone
    else (Python logging) is restored on exit. FFmpeg's default terminal callback is not restored:
    it is the one that leaked library lines onto stderr."""
    previous = av.logging.get_level()
    av.logging.set_level(None)
    try:
        yield
    finally:
        if previous is not None:
            av.logging.set_level(previous)


def ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input") without the errno noise."""
    text = getattr(error, "strerror", None) or str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0]
