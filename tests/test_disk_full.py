"""A write that fails for want of space is exit 1 with one line naming the file and the free space,
and leaves nothing partial (issue 23, item 1). Without root: RLIMIT_FSIZE in the child makes every
write past the limit fail with EFBIG (Python ignores SIGXFSZ), as a full disk would."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

FILE_SIZE_LIMIT = 8 * 1024
"""Bytes a file of the child may reach: more than the lock file, less than a checkpoint."""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing(
        tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "dmedit", "run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny",
         "--mask", "full", "--frames", "4", "--steps", "3", "--checkpoint-every", "1", "--quiet", "-o", str(output)],
        capture_output=True, text=True, env=os.environ.copy(), stdin=subprocess.DEVNULL, timeout=240,
        preexec_fn=_limited)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "checkpoint.pt" in lines[0] and "cannot write the checkpoint" in lines[0], lines[0]
    assert "MiB free on its disk" in lines[0], lines[0]
    left = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert left == [], left
