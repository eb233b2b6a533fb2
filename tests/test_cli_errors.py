"""Bad input through real `dmedit` processes: one line on stderr naming the problem, the documented
exit code, no traceback, no output file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clips import make_clip
from warm_dmedit import dmedit

EXIT_USAGE, EXIT_INPUT, EXIT_MODEL = 2, 3, 4


def assert_clean_failure(result: subprocess.CompletedProcess, *, code: int, mentions: str, folder: Path) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    assert mentions in lines[0], lines[0]
    leftovers = [p.name for p in folder.iterdir() if ".dmedit" in p.name or "partial" in p.name]
    assert leftovers == [], f"output files left behind: {leftovers}"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return tmp_path


def run_tiny(video: Path, *extra: str) -> subprocess.CompletedProcess:
    return dmedit("run", str(video), "--src", "a square", "--tgt", "a circle", "--model", "tiny", "--mask", "full",
                  "--steps", "1", *extra)


def test_missing_file(folder: Path) -> None:
    result = run_tiny(folder / "nope.mp4")
    assert_clean_failure(result, code=EXIT_INPUT, mentions="nope.mp4", folder=folder)


def test_a_directory(folder: Path) -> None:
    target = folder / "clips.mp4"
    target.mkdir()
    result = run_tiny(target)
    assert_clean_failure(result, code=EXIT_INPUT, mentions="clips.mp4", folder=folder)


def test_a_text_file_named_mp4(folder: Path) -> None:
    fake = folder / "notes.mp4"
    fake.write_text("this is not a video\n")
    result = run_tiny(fake)
    assert_clean_failure(result, code=EXIT_INPUT, mentions="notes.mp4", folder=folder)


def test_a_truncated_mp4(folder: Path, ntsc_clip: Path) -> None:
    data = ntsc_clip.read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    result = run_tiny(cut)
    assert_clean_failure(result, code=EXIT_INPUT, mentions="cut.mp4", folder=folder)


def test_a_video_with_zero_decodable_frames(folder: Path) -> None:
    import av

    empty = folder / "empty.mp4"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    result = run_tiny(empty)
    assert_clean_failure(result, code=EXIT_INPUT, mentions="empty.mp4", folder=folder)


def test_a_video_shorter_than_the_span(folder: Path, ntsc_clip: Path) -> None:
    result = run_tiny(ntsc_clip, "--frames", "8", "--start", "20", "-o", str(folder / "short.dmedit.mp4"))
    assert_clean_failure(result, code=EXIT_INPUT, mentions="frames", folder=folder)


def test_output_equal_to_input(folder: Path) -> None:
    clip = make_clip(folder / "same.mp4", frames=4)
    before = clip.read_bytes()
    result = run_tiny(clip, "-o", str(clip), "--overwrite")
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert "same.mp4" in result.stderr
    assert clip.read_bytes() == before, "the input was never touched"


def test_output_in_an_unwritable_folder(folder: Path, ntsc_clip: Path) -> None:
    blocker = folder / "a-file"
    blocker.write_text("x")
    result = run_tiny(ntsc_clip, "-o", str(blocker / "out.mp4"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="a-file", folder=folder)
    result = run_tiny(ntsc_clip, "-o", "/proc/dmedit-out.mp4")
    assert result.returncode == 1 and "Traceback" not in result.stderr, "a refused write is a system error"
    assert "/proc" in result.stderr


@pytest.mark.parametrize("flag", ["--src", "--tgt"])
def test_empty_prompts(folder: Path, ntsc_clip: Path, flag: str) -> None:
    args = {"--src": "a square", "--tgt": "a circle", flag: "  "}
    result = dmedit("run", str(ntsc_clip), "--src", args["--src"], "--tgt", args["--tgt"], "--model", "tiny",
                    "-o", str(folder / "x.dmedit.mp4"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions=flag, folder=folder)


def test_an_existing_output_needs_overwrite_and_skip_existing_exits_zero(folder: Path, ntsc_clip: Path) -> None:
    existing = folder / "done.dmedit.mp4"
    existing.write_bytes(b"previous result")
    result = run_tiny(ntsc_clip, "-o", str(existing))
    assert result.returncode == EXIT_USAGE and "--overwrite" in result.stderr
    skipped = run_tiny(ntsc_clip, "-o", str(existing), "--skip-existing")
    assert skipped.returncode == 0, skipped.stderr
    assert existing.read_bytes() == b"previous result"


def test_unknown_model_suggests_the_closest(folder: Path, ntsc_clip: Path) -> None:
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "zeroscop", "-o", str(folder / "o.mp4"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="zeroscope", folder=folder)


def test_zeroscope_offline_is_a_clear_model_error(folder: Path, ntsc_clip: Path) -> None:
    result = dmedit("run", str(ntsc_clip), "--src", "a square", "--tgt", "a circle", "--model", "zeroscope",
                    "--mask", "full", "--offline", "-o", str(folder / "z.mp4"))
    assert_clean_failure(result, code=EXIT_MODEL, mentions="zeroscope", folder=folder)
    assert "dmedit models pull zeroscope" in result.stderr and "path" in result.stderr


def test_a_mask_with_the_wrong_frame_count(folder: Path, ntsc_clip: Path) -> None:
    import cv2
    import numpy as np

    masks = folder / "masks"
    masks.mkdir()
    for index in range(3):
        cv2.imwrite(str(masks / f"{index:05d}.png"), np.full((64, 96), 255, np.uint8))
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4",
                    "--mask", str(masks), "-o", str(folder / "m.dmedit.mp4"))
    assert_clean_failure(result, code=EXIT_INPUT, mentions="3", folder=folder)
    assert "4" in result.stderr
