"""A write that fails for want of space is exit 1 with one line naming the file and the free space,
and leaves nothing partial (issue 23, item 1). Without root: RLIMIT_FSIZE in the child makes every
write past the limit fail with EFBIG (Python ignores SIGXFSZ), as a full disk would."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
import pytest

from warm_dmedit import dmedit

FILE_SIZE_LIMIT = 8 * 1024
"""Bytes a file of the child may reach: more than the lock file, less than a checkpoint."""
BUNDLE_FILE_LIMIT = 16 * 1024
"""More than a 2-step tiny run's checkpoint (about 12 KB), its MP4 at the default crf (about 8 KB)
and its report (about 5 KB); less than its MP4 at --crf 0 (about 24 KB), that compare video (about
42 KB), the loss plot (about 49 KB), the run's page (the loss plot inside it) and a report holding a 21,000-character --tgt (about 26 KB)."""
LONG_TARGET = "a blue square " * 1500


def _limited_dmedit(*args: str, limit: int) -> subprocess.CompletedProcess:
    """A `dmedit` process whose files cannot grow past `limit` bytes."""
    return dmedit(*args, file_size_limit=limit)


def _one_line_naming(result: subprocess.CompletedProcess, path: Path) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert "MiB free on its disk" in lines[0], lines[0]
    return lines[0]


def _everything_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def _tiny_run(video: Path, output: Path, *extra: str) -> list[str]:
    return ["run", str(video), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full", "--frames", "4",
            "--quiet", "-o", str(output), *extra]


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing(
        tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "out.mp4"
    done = _limited_dmedit(*_tiny_run(ntsc_clip, output, "--steps", "3", "--checkpoint-every", "1"),
                           limit=FILE_SIZE_LIMIT)
    line = _one_line_naming(done, output.with_name("out.run") / "checkpoint.pt")
    assert "cannot write the checkpoint" in line, line
    assert _everything_under(tmp_path) == [], "no partial checkpoint, and no empty out.run/ folder"


SAVE_A_LARGER_CHECKPOINT = """
import sys
from pathlib import Path
import torch
from dmedit.engine.checkpoints import Checkpoint, save_checkpoint
checkpoint = Checkpoint(fingerprint="run", step=2, latents=torch.zeros(100_000), optimizer={},
                        generator=torch.zeros(8, dtype=torch.uint8), history={"dds": [0.5, 0.25]})
try:
    save_checkpoint(checkpoint=checkpoint, path=Path(sys.argv[1]))
except OSError as error:
    sys.exit(f"{error.filename}: {error.strerror}")
"""


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    import resource

    import torch

    from dmedit.engine.checkpoints import Checkpoint, load_checkpoint, save_checkpoint

    path = tmp_path / "out.run" / "checkpoint.pt"
    save_checkpoint(path=path, checkpoint=Checkpoint(
        fingerprint="run", step=1, latents=torch.ones(16), optimizer={}, generator=torch.zeros(8, dtype=torch.uint8),
        history={"dds": [0.5]}))
    limit = 64 * 1024  # more than the first checkpoint, less than the second (about 400 KB)
    failed = subprocess.run([sys.executable, "-c", SAVE_A_LARGER_CHECKPOINT, str(path)], capture_output=True,
                            text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert failed.returncode == 1 and failed.stderr.strip() == (
        f"{path}: cannot write the checkpoint (File too large)"), failed.stderr
    kept = load_checkpoint(path=path, fingerprint="run", steps=5)
    assert kept.step == 1 and torch.equal(kept.latents, torch.ones(16)) and kept.history == {"dds": [0.5]}
    assert sorted(child.name for child in path.parent.iterdir()) == ["checkpoint.pt"], "no partial file"


@pytest.mark.parametrize("extra, failing", [
    (["--compare", "--crf", "0"], "out.compare.mp4"),
    (["--plot"], "out.loss.png"),
    (["--crf", "0"], "out.mp4"),
    (["--tgt", LONG_TARGET], "out.json"),
    ([], "out.html"),
])
def test_a_bundle_file_that_cannot_be_written_is_one_line_naming_it(
        tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path, extra: list[str], failing: str) -> None:
    output = tmp_path / "out.mp4"
    done = _limited_dmedit(*_tiny_run(ntsc_clip, output, "--steps", "2", *extra), limit=BUNDLE_FILE_LIMIT)
    _one_line_naming(done, tmp_path / failing)
    assert _everything_under(tmp_path) == ["out.run", "out.run/checkpoint.pt"], \
        "no staging folder, partial or lock; only the finished optimisation's checkpoint, for --resume"


def test_resume_after_a_failed_bundle_write_writes_it(tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "new" / "out.mp4"
    failed = _limited_dmedit(*_tiny_run(ntsc_clip, output, "--steps", "2", "--crf", "0"), limit=BUNDLE_FILE_LIMIT)
    _one_line_naming(failed, output)
    resumed = dmedit(*[arg for arg in _tiny_run(ntsc_clip, output, "--steps", "2", "--crf", "0", "--resume")
                       if arg != "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "load model" in resumed.stderr and "step 1/2" not in resumed.stderr, "no step optimised again"
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["steps_done"] == 2 and output.stat().st_size > BUNDLE_FILE_LIMIT
    assert not output.with_name("out.run").exists(), "the checkpoint goes once the bundle is written"


def test_only_a_full_disk_stops_a_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiler that is missing still sends the run back to eager (compile_failure decides)."""
    from dmedit.engine.compilation import CACHE_ENV, cache_write_failure

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    for number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        full_disk = RuntimeError("InductorError")
        full_disk.__cause__ = OSError(number, os.strerror(number))
        failure = cache_write_failure(full_disk)
        assert failure is not None and failure.filename == str(tmp_path) and failure.errno == number
        assert os.strerror(number) in failure.strerror
    missing_compiler = RuntimeError("InductorError")
    missing_compiler.__cause__ = FileNotFoundError(errno.ENOENT, "No such file or directory", "g++")
    assert cache_write_failure(missing_compiler) is None


def test_eval_scores_that_cannot_be_written_leave_no_file_and_no_folder(tmp_path: Path, ntsc_clip: Path) -> None:
    out = tmp_path / "scores" / "eval.json"
    done = _limited_dmedit("eval", str(ntsc_clip), str(ntsc_clip), "--scorers", "none", "--out", str(out),
                           limit=FILE_SIZE_LIMIT)
    _one_line_naming(done, out.with_suffix(".png"))
    assert _everything_under(tmp_path) == [], "neither file, nor the folder created for them"


@pytest.fixture(scope="module")
def tiny_detector_dir(hermetic_environment: Path) -> Path:
    """The tiny detector, built before a child that could not write its weights needs it."""
    from dmedit.models.hub import resolve_weights
    from dmedit.models.registry import load_registry

    return resolve_weights(entry=load_registry().detector("tiny-detector"))


def test_a_mask_preview_that_cannot_be_written_leaves_neither_output(
        tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path, tiny_detector_dir: Path) -> None:
    base = tmp_path / "bird"
    done = _limited_dmedit("mask", str(ntsc_clip), "--mask-prompt", "a red square", "--model", "tiny", "--frames", "6",
                           "--quiet", "-o", str(base), limit=4096)
    _one_line_naming(done, tmp_path / "bird.mask.mp4")
    assert _everything_under(tmp_path) == [], "no preview, no masks folder, no staging folder"


def test_a_model_build_that_cannot_be_written_is_one_line_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder's weights go through safetensors, which raises no OSError: still exit 1, not 4."""
    monkeypatch.setenv("DMEDIT_CACHE", str(tmp_path / "cache"))
    done = _limited_dmedit("models", "pull", "tiny", limit=64 * 1024)
    _one_line_naming(done, tmp_path / "cache" / "tiny.build1")
    assert list((tmp_path / "cache").iterdir()) == [], "no half-built model, no staging folder"
