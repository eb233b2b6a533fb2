"""Output files of a run: one run per output at a time (a lock), stale partial files of killed
runs removed, and the bundle (MP4, report, companions) appearing all at once or not at all.

Every file is first written in a hidden staging folder beside the output, `.OUT.bundle-PID/`, then
renamed into place with signals held (MP4 last). A run killed with SIGKILL leaves its staging
folder or hidden `.OUT...partial-PID...` files; the next run on the same output removes those
whose process is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dmedit.core.errors import UsageError
from dmedit.core.files import write_error
from dmedit.engine.checkpoints import checkpoint_path
from dmedit.runs.signals import signals_held

_OWNER = re.compile(r"\.(?:partial|bundle)-(\d+)")


def companion(*, output: Path, suffix: str) -> Path:
    """OUT.mp4 -> OUT<suffix> (e.g. '.json', '.compare.mp4', '.loss.png', '.run')."""
    return output.with_name(f"{output.stem}{suffix}")


def _lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text.isdigit() else "another process"


@contextmanager
def output_lock(*, output: Path) -> Iterator[None]:
    """Hold an exclusive lock on `output` (and so on its companions and checkpoint folder) for the
    block; UsageError naming the holder when another dmedit run holds it."""
    path = _lock_path(output)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UsageError(f"{output} is being written by another dmedit run ({_holder(path)}); "
                             "wait for it to finish or choose another -o") from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)  # the holder removed the file between our open and lock: try again
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(*, output: Path) -> list[Path]:
    """Remove hidden partial files and staging folders of `output` (and of its checkpoint folder)
    left by dmedit processes that no longer run; returns what was removed."""
    removed = []
    folders = [output.parent, companion(output=output, suffix=".run")]
    prefixes = (f".{output.stem}", ".checkpoint")
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            owner = _OWNER.search(path.name)
            if not path.name.startswith(prefixes) or owner is None or _alive(int(owner.group(1))):
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def staged_bundle(*, output: Path) -> Iterator[Path]:
    """Yields a hidden staging folder beside `output`. Write every file of the bundle into it
    under its final name; when the block ends normally they are renamed into place (the file
    named like `output` last) with signals held; otherwise the folder is removed. A failed write
    (a full disk) is an OSError naming the file's final place, never the staging folder
    (core.files.write_error: one line with the free space)."""
    staging = output.with_name(f".{output.stem}.bundle-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        files = sorted(staging.iterdir(), key=lambda path: path.name == output.name)
        with signals_held():
            for path in files:
                _move_into_place(path=path, target=output.with_name(path.name))
    except OSError as error:
        raise _named_in_place(error=error, staging=staging, output=output) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _named_in_place(*, error: OSError, staging: Path, output: Path) -> OSError:
    """`error` naming where the staged file it names goes (`output` when it names none); an error
    about a file outside the staging folder (a source read, say) already names it."""
    named = os.path.abspath(error.filename if isinstance(error.filename, (str, os.PathLike)) else staging)
    try:
        inside = Path(named).relative_to(os.path.abspath(staging))
    except ValueError:
        return error
    return write_error(error=error, path=output.parent.joinpath(*inside.parts) if inside.parts else output)


def _move_into_place(*, path: Path, target: Path) -> None:
    """`os.replace`, except that a staged folder (OUT.masks/) replaces a folder of the same name:
    the old one is first renamed to a hidden partial name (cleaned up as stale if we are killed)."""
    if not (path.is_dir() and target.is_dir()):
        os.replace(path, target)
        return
    old = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(path, target)
    shutil.rmtree(old, ignore_errors=True)


def is_complete(*, output: Path) -> bool:
    """The output is a finished run's: it exists, its report (OUT.json) names it and has every step
    of its settings done, and no checkpoint (OUT.run/checkpoint.pt) waits to be resumed."""
    report = companion(output=output, suffix=".json")
    checkpoint = checkpoint_path(folder=companion(output=output, suffix=".run"))
    if not output.is_file() or not report.is_file() or checkpoint.exists():
        return False
    try:
        record = json.loads(report.read_text(encoding="utf-8"))
        return (record["written"]["path"] == str(output)
                and int(record["steps_done"]) >= int(record["edit"]["steps"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False
