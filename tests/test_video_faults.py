"""Inputs users reported as refused or noisy (issue 9): rotated phone video, narrow frames, pipes
and FIFOs, and FFmpeg's log lines leaking before our one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest

from clips import make_clip, shapes_frame
from dmedit.media import video
from dmedit.core.errors import InputError


def read_all(info) -> np.ndarray:
    return video.read_frames(info=info, span=video.select_span(info=info, start=None, frames=info.frame_count))


def psnr(decoded: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((decoded.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / error))


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma: the generated clips lose colour detail to 4:2:0 chroma, not brightness detail."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def drawn(*, frames: int, width: int, height: int, quarter_turns: int = 0) -> np.ndarray:
    """The frames make_clip encodes, turned counter-clockwise `quarter_turns` times."""
    return np.stack([np.rot90(shapes_frame(index=i, width=width, height=height), k=quarter_turns)
                     for i in range(frames)])


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmedit", *arguments], capture_output=True, text=True)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_is_read_upright_as_players_show_it(clip_dir: Path, rotation: int):
    clip = make_clip(clip_dir / f"turned {rotation}.mp4", width=96, height=64, frames=6, rotation=rotation)
    info = video.probe(path=clip)
    sideways = rotation in (90, 270)
    assert (info.width, info.height) == ((64, 96) if sideways else (96, 64))
    assert info.rotation == rotation and info.to_dict()["rotation"] == rotation
    frames = read_all(info)
    assert frames.shape == (6, info.height, info.width, 3)
    # the display matrix turns the picture counter-clockwise by `rotation` (what ffmpeg's autorotate does)
    turned = drawn(frames=6, width=96, height=64, quarter_turns=rotation // 90)
    assert psnr(luma(frames), luma(turned)) > 35


def test_rotated_video_is_written_upright_without_rotation_metadata(clip_dir: Path, tmp_path: Path):
    info = video.probe(path=make_clip(clip_dir / "portrait.mp4", width=96, height=64, frames=6, rotation=270))
    frames = read_all(info)
    written = video.write_video(path=tmp_path / "portrait out.mp4", frames=frames, fps=info.fps)
    again = video.probe(path=written.path)
    assert (again.width, again.height, again.rotation) == (64, 96, 0)
    assert (written.width, written.height) == (64, 96)
    assert psnr(read_all(again), frames) > 35


def test_probe_of_an_unrotated_clip_reports_rotation_zero(ntsc_clip: Path):
    assert video.probe(path=ntsc_clip).to_dict()["rotation"] == 0


@pytest.mark.parametrize("width", [16, 24, 48, 72])
def test_narrow_sources_are_read(clip_dir: Path, width: int):
    info = video.probe(path=make_clip(clip_dir / f"narrow {width}.mp4", width=width, height=32, frames=8))
    frames = read_all(info)
    assert (info.width, info.height, info.frame_count) == (width, 32, 8)
    assert frames.shape == (8, 32, width, 3)
    assert psnr(luma(frames), luma(drawn(frames=8, width=width, height=32))) > 35


def start_writer(target, data: bytes) -> threading.Thread:
    """Write `data` to a FIFO path or a pipe descriptor from a daemon thread, then close it."""

    def write() -> None:
        with (open(target, "wb") if isinstance(target, Path) else os.fdopen(target, "wb")) as sink:
            sink.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_fifo_is_read_through_a_copy_under_the_users_name(ntsc_clip: Path, tmp_path: Path):
    fifo = tmp_path / "clip.fifo"
    os.mkfifo(fifo)
    writer = start_writer(fifo, ntsc_clip.read_bytes())
    with video.readable_input(path=fifo) as readable:
        assert readable != fifo and readable.is_file()
        info = video.probe(path=readable, shown_as=fifo)
        frames = video.read_frames(info=info, span=video.select_span(info=info, start="3", frames=5))
        copy = readable
    writer.join()
    assert not copy.exists()
    assert info.to_dict()["path"] == str(fifo) and info.display_path == fifo and info.frame_count == 24
    regular = video.probe(path=ntsc_clip)
    same_span = video.select_span(info=regular, start="3", frames=5)
    assert np.array_equal(frames, video.read_frames(info=regular, span=same_span))


def test_anonymous_pipe_as_from_process_substitution(ntsc_clip: Path):
    read_end, write_end = os.pipe()
    writer = start_writer(write_end, ntsc_clip.read_bytes())
    pipe = Path(f"/dev/fd/{read_end}")
    try:
        with video.readable_input(path=pipe) as readable:
            info = video.probe(path=readable, shown_as=pipe)
            assert read_all(info).shape == (24, 64, 96, 3)
    finally:
        os.close(read_end)
    writer.join()
    assert info.to_dict()["path"] == str(pipe)


def test_regular_files_are_read_in_place(ntsc_clip: Path):
    with video.readable_input(path=ntsc_clip) as readable:
        assert readable == ntsc_clip


def test_fifo_nobody_writes_to_fails_in_one_line(tmp_path: Path):
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError) as caught:
        with video.readable_input(path=fifo, timeout=0.2):
            pass
    message = str(caught.value)
    assert str(fifo) in message and "\n" not in message and "no data" in message


def test_empty_pipe_fails_in_one_line(tmp_path: Path):
    read_end, write_end = os.pipe()
    os.close(write_end)
    pipe = Path(f"/dev/fd/{read_end}")
    try:
        with pytest.raises(InputError, match="empty"):
            with video.readable_input(path=pipe, timeout=0.2):
                pass
    finally:
        os.close(read_end)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for <(...)")
def test_cli_probe_reads_a_process_substitution(ntsc_clip: Path):
    command = f'"{sys.executable}" -m dmedit probe --json <(cat "{ntsc_clip}")'
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"frame_count": 24' in result.stdout and "/dev/fd/" in result.stdout and result.stderr == ""


@pytest.fixture(scope="module")
def damaged(clip_dir: Path) -> dict[str, Path]:
    """A 48-frame clip, the same with 2 KiB of garbage in the middle of its media data, and cut copies."""
    folder = clip_dir / "damaged"
    clip = make_clip(folder / "intact.mp4", width=96, height=64, frames=48)
    data = clip.read_bytes()
    media = data.index(b"mdat") + 8
    middle = media + (len(data) - media) // 2
    garbage = bytes(range(256)) * 8
    (folder / "garbage.mp4").write_bytes(data[:middle] + garbage + data[middle + len(garbage):])
    (folder / "cut.mp4").write_bytes(data[: len(data) * 4 // 5])  # index (moov) at the end: gone
    video.write_video(path=folder / "faststart.mp4", frames=drawn(frames=30, width=96, height=64), fps=Fraction(25))
    faststart = (folder / "faststart.mp4").read_bytes()
    (folder / "faststart cut.mp4").write_bytes(faststart[: len(faststart) // 2])
    (folder / "last frame cut.mp4").write_bytes(faststart[:-20])
    return {"intact": clip, **{name: folder / f"{name}.mp4" for name in
                               ("garbage", "cut", "faststart cut", "last frame cut")}}


@pytest.mark.parametrize("kind", ["cut", "faststart cut", "last frame cut"])
def test_cli_probe_of_a_truncated_file_prints_one_line(damaged: dict[str, Path], kind: str):
    result = run_cli("probe", str(damaged[kind]))
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1 and str(damaged[kind]) in result.stderr
    assert "truncated" in result.stderr


def test_cli_probe_of_garbage_in_the_middle_prints_nothing_on_stderr(damaged: dict[str, Path]):
    result = run_cli("probe", str(damaged["garbage"]))
    assert result.returncode == 0 and result.stderr == ""
    assert "48" in result.stdout


def test_garbage_in_the_middle_decodes_what_it_can_and_names_the_rest(damaged: dict[str, Path], capfd):
    info, intact = video.probe(path=damaged["garbage"]), video.probe(path=damaged["intact"])
    head = video.select_span(info=info, start=None, frames=10)
    assert np.array_equal(video.read_frames(info=info, span=head), video.read_frames(info=intact, span=head))
    try:
        frames = read_all(info)
    except InputError as error:
        message = str(error)
        assert str(damaged["garbage"]) in message and "\n" not in message and "do not decode" in message
    else:
        assert frames.shape == (48, 64, 96, 3)
    assert capfd.readouterr().err == ""


def test_ffmpeg_stays_quiet_when_something_turned_its_terminal_log_back_on(damaged: dict[str, Path], capfd):
    av.logging.restore_default_callback()  # FFmpeg's own callback prints to stderr
    av.logging.set_libav_level(av.logging.INFO)
    try:
        info = video.probe(path=damaged["garbage"])
        try:
            read_all(info)
        except InputError:
            pass
        with pytest.raises(InputError):
            video.probe(path=damaged["faststart cut"])
    finally:
        av.logging.set_level(None)  # PyAV's silent callback, as `import av` leaves it
    assert capfd.readouterr().err == ""
