"""Files that appear whole or not at all: each is written under a hidden temporary name in its
folder, then renamed over the final name (`os.replace`), so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


@contextmanager
def replaced_atomically(*, path: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` (ending in `suffix`, for writers that go by it); when
    the block ends normally it replaces `path`; the temporary file never outlives the block."""
    temporary = path.with_name(f".{path.stem if suffix else path.name}.partial-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(*, path: Path, text: str) -> None:
    """UTF-8 text at `path`, atomically."""
    with replaced_atomically(path=path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(*, path: Path, data: Mapping[str, Any]) -> None:
    """Indented JSON at `path`, atomically; paths, NumPy numbers and tuples become JSON values."""
    write_text(path=path, text=json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
