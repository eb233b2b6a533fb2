"""Files that appear whole or not at all: each is written under a hidden temporary name in its
folder, then renamed over the final name (`os.replace`), so a reader never sees half a file; a
failed write is an OSError naming that final name (`write_error`: what the CLI prints as one line
with the free space); output folders created when missing and removed again when the work that
needed them fails; and the check that an output folder takes new files at all."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from dmedit.core.errors import NotWritable, UsageError


@contextmanager
def replaced_atomically(*, path: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` (ending in `suffix`, for writers that go by it); when
    the block ends normally it replaces `path`; the temporary file never outlives the block. An
    OSError of the block about the temporary file or no file (a full disk: ENOSPC, or EFBIG past a
    file size limit; PyAV's errors are OSErrors too, safetensors' carry the errno in their message)
    becomes `write_error` naming `path`."""
    temporary = path.with_name(f".{path.stem if suffix else path.name}.partial-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        if isinstance(error.filename, (str, os.PathLike)) and os.fspath(error.filename) != os.fspath(temporary):
            raise  # about another file (a source the writer reads): its own name
        raise write_error(error=error, path=path) from None
    except Exception as error:
        number = errno_in_message(error)
        if number is None:
            raise
        raise write_error(error=OSError(number, os.strerror(number)), path=path) from None
    finally:
        temporary.unlink(missing_ok=True)


def errno_in_message(error: BaseException) -> int | None:
    """The errno in the message of a writer built in Rust (safetensors' SafetensorError: "I/O error:
    File too large (os error 27)"), which raises no OSError; None when there is none."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found else None


def write_error(*, error: BaseException, path: Path) -> OSError:
    """`error`, raised while writing `path`, as an OSError naming `path` with the error's number
    (EIO when it has none) and reason: cli.runtime prints it as one line with the free space."""
    number = getattr(error, "errno", None) or errno.EIO
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = getattr(error, "strerror", None) or (lines[0] if lines else type(error).__name__)
    return OSError(number, reason, str(path))


@contextmanager
def created_folders(*, folder: Path, scratch: Sequence[Path] = ()) -> Iterator[None]:
    """Create `folder` and its missing parents (`writable_folder`) for the block. When the block
    fails, the folders it created and the `scratch` folders (ones the work inside makes, such as
    a checkpoint folder) are removed if they are empty, so a failure leaves no empty folder."""
    folder = Path(folder)
    missing = []
    for parent in (folder, *folder.parents):
        if os.path.lexists(parent):
            break
        missing.append(parent)
    try:
        writable_folder(folder=folder)
        yield
    except BaseException:
        for empty in (*scratch, *missing):  # deepest first: a parent empties once its child goes
            try:
                Path(empty).rmdir()
            except OSError:
                pass
        raise


def writable_folder(*, folder: Path) -> None:
    """Create `folder` (and its parents) when missing and check that a file can be made in it:
    UsageError when a file stands where a folder is needed, NotWritable (exit 1) when it refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{folder}: a file stands where this folder should be; choose another folder") from None
    except OSError as error:
        raise NotWritable(f"{folder}: cannot write in this folder ({error.strerror or error})") from None


def write_bytes(*, path: Path, data: bytes) -> None:
    """`data` at `path`, atomically."""
    with replaced_atomically(path=path) as temporary:
        temporary.write_bytes(data)


def write_text(*, path: Path, text: str) -> None:
    """UTF-8 text at `path`, atomically."""
    write_bytes(path=path, data=text.encode("utf-8"))


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
