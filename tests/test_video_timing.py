"""What write_video produces (issue 9): identical bytes for identical frames, variable frame rate
kept or resampled, and the padding of odd sizes reported."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clips import make_clip, shapes_frame
from dmedit.media import video

NTSC = Fraction(30000, 1001)
AAC_FRAME_SAMPLES = 1024
VFR_INTERVALS = (1 / 30, 1 / 20, 1 / 12, 1 / 30, 1 / 30, 1 / 15)  # seconds, repeated
VFR_TIMES = tuple(float(t) for t in np.cumsum([0.0] + [VFR_INTERVALS[i % 6] for i in range(29)]))


def busy_frames(*, count: int = 24, width: int = 176, height: int = 144) -> np.ndarray:
    """Moving shapes plus fixed noise, so that the encoder has decisions to make."""
    noise = np.random.default_rng(7).integers(0, 24, size=(height, width, 3), dtype=np.uint8)
    return np.stack([shapes_frame(index=i, width=width, height=height) // 2 + noise * (i % 3 == 0)
                     for i in range(count)]).astype(np.uint8)


def stir_the_heap() -> None:
    """Free many non-zero blocks, so that the next allocations do not get fresh zeroed memory."""
    rng = np.random.default_rng(11)
    blocks = [os.urandom(int(size)) for size in rng.integers(1_000, 120_000, size=300)]
    del blocks


def test_identical_frames_give_identical_bytes_from_any_buffer(tmp_path: Path):
    frames = busy_frames()
    padded = np.zeros((frames.shape[0], frames.shape[1], frames.shape[2] + 5, 3), dtype=np.uint8)
    padded[:, :, 3 : 3 + frames.shape[2]] = frames
    view = padded[:, :, 3 : 3 + frames.shape[2]]  # not contiguous, rows 5 pixels apart
    offset = np.empty(frames.nbytes + 5, dtype=np.uint8)[5:].reshape(frames.shape)  # odd address
    offset[...] = frames
    written = []
    for index, variant in enumerate((frames, view, offset, frames)):
        stir_the_heap()
        output = tmp_path / f"take {index}.mp4"
        video.write_video(path=output, frames=variant, fps=NTSC, crf=18)
        written.append(output.read_bytes())
    assert all(data == written[0] for data in written[1:])


WRITE_FROM_NPY = (
    "import sys; from fractions import Fraction; from pathlib import Path; import numpy as np; "
    "from dmedit.media.video import write_video; "
    "write_video(path=Path(sys.argv[2]), frames=np.load(sys.argv[1]), fps=Fraction(25))"
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="MALLOC_PERTURB_ is a glibc feature")
def test_output_does_not_depend_on_uninitialised_memory(tmp_path: Path):
    """glibc fills fresh allocations with MALLOC_PERTURB_'s byte: an encoder reading memory it never
    wrote then writes a different file for each byte (libx264's mb-tree lookahead did)."""
    source = tmp_path / "frames.npy"
    np.save(source, busy_frames(count=16))
    outputs = []
    for fill in ("85", "170"):
        output = tmp_path / f"fill {fill}.mp4"
        environment = {**os.environ, "MALLOC_PERTURB_": fill}
        subprocess.run([sys.executable, "-c", WRITE_FROM_NPY, str(source), str(output)], env=environment, check=True)
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]


def test_odd_size_is_padded_and_reported(tmp_path: Path):
    frames = busy_frames(count=4, width=175, height=143)
    written = video.write_video(path=tmp_path / "odd.mp4", frames=frames, fps=Fraction(25))
    assert (written.width, written.height, written.source_width, written.source_height) == (176, 144, 175, 143)
    assert written.padded and "175x143" in written.note and "176x144" in written.note
    facts = json.loads(json.dumps(written.to_dict()))
    assert facts["padded"] is True and facts["frames"] == 4 and facts["fps"] == "25/1"
    assert (video.probe(path=written.path).width, video.probe(path=written.path).height) == (176, 144)
    even = video.write_video(path=tmp_path / "even.mp4", frames=frames[:, :142, :174], fps=Fraction(25))
    assert not even.padded and even.note is None and (even.width, even.height) == (174, 142)


@pytest.fixture(scope="module")
def vfr_clip(clip_dir: Path) -> Path:
    """30 frames at irregular times (intervals 1/30 to 1/12 s) with an AAC tone."""
    return make_clip(clip_dir / "vfr.mp4", width=96, height=64, frames=30, timestamps=VFR_TIMES, audio=True)


def test_probe_tells_variable_from_constant_frame_rate(vfr_clip: Path, ntsc_clip: Path):
    info = video.probe(path=vfr_clip)
    assert info.variable_rate and info.to_dict()["variable_rate"] is True
    assert info.frame_times() == pytest.approx(VFR_TIMES, abs=1e-4)
    constant = video.probe(path=ntsc_clip)
    assert not constant.variable_rate and constant.to_dict()["variable_rate"] is False


def test_constant_rate_spans_carry_no_timestamps_or_note(ntsc_clip: Path):
    span = video.select_span(info=video.probe(path=ntsc_clip), start="2", frames=5)
    assert span.timestamps is None and span.timing_note is None and not span.variable_rate


def test_variable_rate_span_keeps_the_source_timing_through_the_written_file(vfr_clip: Path, tmp_path: Path):
    info = video.probe(path=vfr_clip)
    span = video.select_span(info=info, start="0.5s", frames=10)
    first = int(np.argmin(np.abs(np.asarray(VFR_TIMES) - 0.5)))
    assert span.indices == tuple(range(first, first + 10))
    assert span.start_time == pytest.approx(VFR_TIMES[first], abs=1e-4)
    expected = [VFR_TIMES[i] - VFR_TIMES[first] for i in span.indices]
    assert span.timestamps == pytest.approx(expected, abs=1e-4)
    assert span.timing_note == "variable frame rate: kept the source's timing"
    assert json.loads(json.dumps(span.to_dict()))["timestamps"] == pytest.approx(expected, abs=1e-4)
    output = tmp_path / "vfr out.mp4"
    written = video.write_video(path=output, frames=video.read_frames(info=info, span=span), fps=span.fps,
                                timestamps=span.timestamps, audio_source=vfr_clip, audio_start=span.start_time,
                                audio_duration=span.duration)
    assert written.timestamps_kept and written.duration == pytest.approx(span.duration)
    again = video.probe(path=output)
    assert again.variable_rate and again.frame_times() == pytest.approx(expected, abs=1e-4)
    with av.open(str(output)) as container:
        audio = container.streams.audio[0]
        seconds, rate = float(audio.duration * audio.time_base), audio.codec_context.sample_rate
    assert abs(seconds - span.duration) <= AAC_FRAME_SAMPLES / rate


def test_fps_resamples_a_variable_rate_source_to_constant_rate(vfr_clip: Path):
    span = video.select_span(info=video.probe(path=vfr_clip), start=None, frames=8, fps=12)
    times = np.asarray(VFR_TIMES)
    nearest = [int(np.flatnonzero(np.isclose(np.abs(times - k / 12), np.abs(times - k / 12).min()))[-1])
               for k in range(8)]
    assert span.indices == tuple(nearest)
    assert span.fps == 12 and span.timestamps is None and span.duration == pytest.approx(8 / 12)
    assert span.timing_note == "variable frame rate: resampled to constant 12 fps"


def test_stride_makes_a_variable_rate_source_constant_rate(vfr_clip: Path):
    info = video.probe(path=vfr_clip)
    span = video.select_span(info=info, start="1", frames=5, stride=2)
    assert span.indices == (1, 3, 5, 7, 9) and span.timestamps is None and span.fps == info.fps / 2
    assert span.timing_note == f"variable frame rate: resampled to constant {float(info.fps / 2):g} fps"


def test_timestamps_must_fit_the_frames(tmp_path: Path):
    frames = busy_frames(count=3, width=32, height=32)
    for stamps in ([0.0, 0.1], [0.0, 0.2, 0.1], [-0.1, 0.0, 0.1]):
        with pytest.raises(ValueError):
            video.write_video(path=tmp_path / "out.mp4", frames=frames, fps=Fraction(10), timestamps=stamps)
    assert list(tmp_path.iterdir()) == []
