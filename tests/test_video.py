"""video.py without writing: probe (good and bad files), span selection, fit modes, compositing and
output-path checks. Round trips through write_video live in test_video_io.py."""

from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clips import make_clip
from dmedit.core.errors import InputError, NotWritable, UsageError
from dmedit.media.video import check_output_path, probe, select_span, write_video

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def ntsc_info(ntsc_clip: Path):
    return probe(path=ntsc_clip)


@pytest.fixture(scope="module")
def long_ntsc_info(clip_dir: Path):
    """90 frames (3 s) at 29.97 fps."""
    return probe(path=make_clip(clip_dir / "long ntsc.mp4", width=32, height=32, frames=90))


@pytest.fixture(scope="module")
def bad_inputs(clip_dir: Path, ntsc_clip: Path) -> dict[str, Path]:
    """Every kind of unusable input, written once."""
    folder = clip_dir / "bad"
    folder.mkdir()
    whole = ntsc_clip.read_bytes()
    (folder / "cut in half.mp4").write_bytes(whole[: len(whole) // 2])
    faststart = folder / "faststart.mp4"
    frames = np.full((30, 64, 96, 3), 90, dtype=np.uint8)
    frames[:, 10:30, :40] = np.arange(30, dtype=np.uint8)[:, None, None, None] * 8
    write_video(path=faststart, frames=frames, fps=NTSC)
    movie = faststart.read_bytes()
    (folder / "faststart cut.mp4").write_bytes(movie[: len(movie) // 2])
    media_start = movie.index(b"mdat") + 4
    (folder / "zeroed frames.mp4").write_bytes(movie[:media_start] + bytes(len(movie) - media_start))
    (folder / "notes.mp4").write_text("this is a text file, not a video\n")
    (folder / "a folder.mp4").mkdir()
    with av.open(str(folder / "only audio.mp4"), mode="w") as container:
        stream = container.add_stream("aac", rate=44100, layout="mono")
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        silence.sample_rate, silence.pts = 44100, 0
        container.mux(stream.encode(silence))
        container.mux(stream.encode(None))
    return {
        "missing": folder / "missing.mp4",
        "folder": folder / "a folder.mp4",
        "text": folder / "notes.mp4",
        "truncated": folder / "cut in half.mp4",
        "truncated_faststart": folder / "faststart cut.mp4",
        "undecodable": folder / "zeroed frames.mp4",
        "audio_only": folder / "only audio.mp4",
    }


def test_probe_reports_exact_ntsc_rate_count_and_duration(ntsc_info, ntsc_clip: Path):
    assert (ntsc_info.width, ntsc_info.height) == (96, 64)
    assert ntsc_info.fps == NTSC
    assert ntsc_info.frame_count == 24
    assert ntsc_info.duration == pytest.approx(24 * 1001 / 30000)
    assert (ntsc_info.codec, ntsc_info.pix_fmt) == ("h264", "yuv420p")
    assert not ntsc_info.has_audio and ntsc_info.audio_codec is None
    facts = json.loads(json.dumps(ntsc_info.to_dict()))
    assert facts["fps"] == "30000/1001" and facts["fps_float"] == pytest.approx(29.97, abs=1e-3)
    assert facts["path"] == str(ntsc_clip)


def test_probe_reports_25_fps_and_audio(audio_clip: Path):
    info = probe(path=audio_clip)
    assert info.fps == 25 and info.frame_count == 24 and info.duration == pytest.approx(0.96)
    assert info.has_audio and info.audio_codec == "aac"


def test_probe_keeps_odd_sizes(clip_dir: Path):
    info = probe(path=make_clip(clip_dir / "odd size.mp4", width=97, height=65, frames=6))
    assert (info.width, info.height, info.frame_count) == (97, 65, 6)


def test_probe_of_the_real_clip_counts_every_decodable_frame(real_clip: Path):
    info = probe(path=real_clip)
    with av.open(str(real_clip)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert (info.width, info.height, info.fps) == (176, 144, NTSC)
    assert info.frame_count == decoded


@pytest.mark.parametrize(
    "kind", ["missing", "folder", "text", "truncated", "truncated_faststart", "undecodable", "audio_only"]
)
def test_probe_rejects_unusable_input_naming_the_file(bad_inputs: dict[str, Path], kind: str):
    path = bad_inputs[kind]
    with pytest.raises(InputError) as caught:
        probe(path=path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    ("start", "first"), [(None, 0), ("12", 12), ("0.5s", 15), ("0.5", 15), ("1s", 30), ("2.", 60)]
)
def test_start_is_a_frame_index_or_seconds(long_ntsc_info, start: str | None, first: int):
    span = select_span(info=long_ntsc_info, start=start, frames=4)
    assert span.indices == tuple(range(first, first + 4))
    assert span.fps == NTSC
    assert span.start_time == pytest.approx(first * 1001 / 30000)
    assert span.duration == pytest.approx(4 * 1001 / 30000)


def test_stride_takes_every_kth_frame_at_an_exact_lower_rate(ntsc_info):
    span = select_span(info=ntsc_info, start="2", frames=5, stride=3)
    assert span.indices == (2, 5, 8, 11, 14)
    assert span.fps == Fraction(10000, 1001)
    assert span.duration == pytest.approx(5 * 1001 / 10000)


def test_fps_samples_the_nearest_frames(ntsc_info):
    span = select_span(info=ntsc_info, start=None, frames=8, fps=12)
    assert span.indices == (0, 2, 5, 7, 10, 12, 15, 17)
    assert span.fps == 12
    assert json.loads(json.dumps(span.to_dict()))["fps"] == "12/1"


def test_fps_sampling_keeps_an_even_rhythm_on_ties(audio_clip: Path):
    span = select_span(info=probe(path=audio_clip), start=None, frames=8, fps=10)
    assert span.indices == (0, 3, 5, 8, 10, 13, 15, 18)


def test_fps_near_the_source_rate_keeps_every_frame(ntsc_info):
    span = select_span(info=ntsc_info, start=None, frames=10, fps=29.97)
    assert span.indices == tuple(range(10)) and span.fps == NTSC


@pytest.mark.parametrize(
    "arguments",
    [
        {"start": None, "frames": 4, "stride": 2, "fps": 10.0},
        {"start": "abc", "frames": 4},
        {"start": "-3", "frames": 4},
        {"start": None, "frames": 0},
        {"start": None, "frames": 4, "stride": 0},
        {"start": None, "frames": 4, "fps": 60.0},
        {"start": None, "frames": 4, "fps": -1.0},
    ],
)
def test_bad_span_requests_are_usage_errors(ntsc_info, arguments: dict):
    with pytest.raises(UsageError):
        select_span(info=ntsc_info, **arguments)


@pytest.mark.parametrize(
    "arguments",
    [{"start": None, "frames": 30}, {"start": "20", "frames": 5}, {"start": None, "frames": 9, "stride": 3}],
)
def test_span_past_the_end_names_requested_and_available_frames(ntsc_info, arguments: dict):
    with pytest.raises(InputError) as caught:
        select_span(info=ntsc_info, **arguments)
    message = str(caught.value)
    assert str(ntsc_info.path) in message and "only 24 frames" in message


def test_output_may_not_be_the_input_by_any_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = tmp_path / "in.mp4"
    source.write_bytes(b"video")
    (tmp_path / "link.mp4").symlink_to(source)
    (tmp_path / "hard.mp4").hardlink_to(source)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    names = (Path("in.mp4"), tmp_path / "sub" / ".." / "in.mp4", tmp_path / "link.mp4", Path("hard.mp4"))
    for output in names:
        with pytest.raises(UsageError, match="input"):
            check_output_path(output=output, inputs=[source], overwrite=True)


def test_output_path_problems_are_usage_errors(tmp_path: Path):
    existing = tmp_path / "out.mp4"
    existing.write_bytes(b"old")
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        check_output_path(output=existing, inputs=[], overwrite=False)
    check_output_path(output=existing, inputs=[], overwrite=True)
    check_output_path(output=tmp_path / "new" / "folder" / "out.mp4", inputs=[], overwrite=False)
    assert not (tmp_path / "new").exists(), "the run creates a missing folder, the check does not"
    with pytest.raises(UsageError, match="out.mp4 is a file, not a folder"):
        check_output_path(output=existing / "sub" / "out.mp4", inputs=[], overwrite=False)
    with pytest.raises(UsageError, match="is a folder"):
        check_output_path(output=tmp_path, inputs=[], overwrite=True)
    check_output_path(output=tmp_path / "new.mp4", inputs=[], overwrite=False)


def refuses_new_files(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


def test_unwritable_output_folder_is_a_system_error(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        folder = locked if refuses_new_files(locked) else Path("/sys")  # root ignores permission bits
        if not folder.is_dir() or not refuses_new_files(folder):
            pytest.skip("no folder here refuses new files to this user")
        with pytest.raises(NotWritable, match="cannot write") as refused:
            check_output_path(output=folder / "out.mp4", inputs=[], overwrite=False)
        assert refused.value.exit_code == 1, "a refused write is a system error (exit 1), not a usage error"
    finally:
        locked.chmod(0o700)
