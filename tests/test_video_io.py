"""write_video/read_frames round trips: exact rate and duration, quality, odd sizes, audio kept in
step with the span, unusual paths, and that a failed write leaves nothing behind."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import dmedit.media.encode
import dmedit.media.video
from clips import make_clip
from dmedit.media.video import probe, read_frames, select_span, write_video

NTSC = Fraction(30000, 1001)
AAC_FRAME_SAMPLES = 1024


@pytest.fixture(scope="module")
def long_audio_clip(clip_dir: Path) -> Path:
    """90 frames (3 s) at 29.97 fps with an AAC tone."""
    return make_clip(clip_dir / "long audio.mp4", width=64, height=48, frames=90, audio=True)


def read_all(path: Path) -> tuple[dmedit.media.video.VideoInfo, np.ndarray]:
    info = probe(path=path)
    return info, read_frames(info=info, span=select_span(info=info, start=None, frames=info.frame_count))


def psnr(decoded: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((decoded.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / error))


def luma(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2YUV)[..., 0] for frame in frames])


def audio_stream_facts(path: Path) -> tuple[str, float, int]:
    """(codec, playable seconds as the container states them, sample rate) of the first audio track."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        seconds = float(stream.duration * stream.time_base)
        return stream.codec_context.name, seconds, stream.codec_context.sample_rate


def decoded_audio(path: Path) -> np.ndarray:
    """First channel of the first audio track as float samples."""
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])


def test_round_trip_keeps_count_rate_duration_size_audio_and_quality(audio_clip: Path, tmp_path: Path):
    info, frames = read_all(audio_clip)
    output = tmp_path / "out.mp4"
    write_video(path=output, frames=frames, fps=info.fps, crf=18, audio_source=audio_clip)
    written, decoded = read_all(output)
    assert (written.width, written.height) == (info.width, info.height)
    assert written.fps == Fraction(25) and written.frame_count == 24 and written.duration == info.duration
    assert (written.codec, written.pix_fmt) == ("h264", "yuv420p")
    assert written.has_audio and written.audio_codec == "aac"
    codec, seconds, rate = audio_stream_facts(output)
    assert abs(seconds - written.duration) <= AAC_FRAME_SAMPLES / rate
    assert psnr(decoded, frames) > 35


def test_ntsc_round_trip_is_exact_and_silent_when_the_source_has_no_audio(ntsc_clip: Path, tmp_path: Path):
    info, frames = read_all(ntsc_clip)
    output = tmp_path / "ntsc.mp4"
    write_video(path=output, frames=frames, fps=info.fps, audio_source=ntsc_clip)
    written, decoded = read_all(output)
    assert written.fps == NTSC and written.frame_count == 24
    assert written.duration == pytest.approx(24 * 1001 / 30000, abs=1e-12)
    assert not written.has_audio
    with av.open(str(output)) as container:
        assert len(container.streams.audio) == 0
    assert psnr(decoded, frames) > 35


def test_copied_audio_starts_cleanly(long_audio_clip: Path, tmp_path: Path):
    info, frames = read_all(long_audio_clip)
    output = tmp_path / "from start.mp4"
    write_video(path=output, frames=frames[:30], fps=info.fps, audio_source=long_audio_clip)
    source, written = decoded_audio(long_audio_clip), decoded_audio(output)
    assert np.abs(written[:4096] - source[:4096]).max() < 1e-3


def test_audio_of_a_later_span_matches_that_span(long_audio_clip: Path, tmp_path: Path):
    info = probe(path=long_audio_clip)
    span = select_span(info=info, start="1.0s", frames=20)
    output = tmp_path / "later span.mp4"
    write_video(path=output, frames=read_frames(info=info, span=span), fps=span.fps,
                audio_source=long_audio_clip, audio_start=span.start_time, audio_duration=span.duration)
    codec, seconds, rate = audio_stream_facts(output)
    assert codec == "aac" and abs(seconds - span.duration) <= AAC_FRAME_SAMPLES / rate
    source, written = decoded_audio(long_audio_clip), decoded_audio(output)[:4096]
    expected = round(span.start_time * rate)
    offsets = range(expected - AAC_FRAME_SAMPLES // 2, expected + AAC_FRAME_SAMPLES // 2 + 1)
    assert min(np.abs(source[o : o + len(written)] - written).max() for o in offsets) < 1e-3


def test_audio_that_mp4_cannot_carry_is_reencoded_to_aac(ntsc_clip: Path, tmp_path: Path):
    wav = tmp_path / "voice.wav"
    with av.open(str(wav), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=48000, layout="mono")
        tone = (8000 * np.sin(np.arange(72000) * 2 * np.pi * 300 / 48000)).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info, frames = read_all(ntsc_clip)
    output = tmp_path / "dubbed.mp4"
    write_video(path=output, frames=frames, fps=info.fps, audio_source=wav, audio_start=0.2)
    codec, seconds, rate = audio_stream_facts(output)
    assert (codec, rate) == ("aac", 48000)
    assert abs(seconds - info.duration) <= AAC_FRAME_SAMPLES / rate


def test_odd_size_is_padded_to_even_by_repeating_the_edge(clip_dir: Path, tmp_path: Path):
    info, frames = read_all(make_clip(clip_dir / "odd 97x65.mp4", width=97, height=65, frames=8))
    output = tmp_path / "odd.mp4"
    write_video(path=output, frames=frames, fps=info.fps)
    written, decoded = read_all(output)
    assert (written.width, written.height, written.frame_count) == (98, 66, 8)
    inside = decoded[:, :65, :97]
    assert psnr(luma(inside), luma(frames)) > 35  # the 4:4:4 source loses chroma detail to 4:2:0
    assert np.abs(decoded[:, :65, -1].astype(int) - frames[:, :, -1]).mean() < 4
    assert np.abs(decoded[:, -1, :97].astype(int) - frames[:, -1, :]).mean() < 4


def test_stride_span_is_read_exactly_and_written_at_the_lower_rate(long_audio_clip: Path, tmp_path: Path):
    info, every_frame = read_all(long_audio_clip)
    span = select_span(info=info, start="1", frames=10, stride=3)
    frames = read_frames(info=info, span=span)
    assert np.array_equal(frames, every_frame[1:30:3])
    output = tmp_path / "stride.mp4"
    write_video(path=output, frames=frames, fps=span.fps)
    written = probe(path=output)
    assert written.fps == Fraction(10000, 1001) and written.frame_count == 10
    assert written.duration == pytest.approx(span.duration, abs=1e-12)


def test_paths_with_spaces_and_non_ascii_letters(tmp_path: Path):
    folder = tmp_path / "clips ünï cødé ✓"
    source = make_clip(folder / "vidéo d'entrée.mp4", width=64, height=48, frames=6, fps=Fraction(24))
    info, frames = read_all(source)
    output = folder / "édité ✓ final.mp4"
    write_video(path=output, frames=frames, fps=info.fps)
    written, decoded = read_all(output)
    assert (written.fps, written.frame_count, written.path) == (Fraction(24), 6, output)
    assert psnr(decoded, frames) > 35


def test_real_clip_span_round_trip(real_clip: Path, tmp_path: Path):
    info = probe(path=real_clip)
    span = select_span(info=info, start="1.0s", frames=30)
    frames = read_frames(info=info, span=span)
    assert frames.shape == (30, 144, 176, 3)
    output = tmp_path / "carphone span.mp4"
    write_video(path=output, frames=frames, fps=span.fps, audio_source=real_clip)
    written, decoded = read_all(output)
    assert (written.width, written.height, written.fps, written.frame_count) == (176, 144, NTSC, 30)
    assert not written.has_audio
    assert psnr(decoded, frames) > 35


def test_written_file_can_stream_before_it_is_fully_loaded(ntsc_clip: Path, tmp_path: Path):
    info, frames = read_all(ntsc_clip)
    output = tmp_path / "web.mp4"
    write_video(path=output, frames=frames, fps=info.fps)
    data = output.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_frames_of_the_wrong_shape_write_nothing(tmp_path: Path):
    with pytest.raises(ValueError):
        write_video(path=tmp_path / "out.mp4", frames=np.zeros((3, 16, 16, 4), np.uint8), fps=Fraction(25))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_partial_file_and_keeps_the_old_output(
    ntsc_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    info, frames = read_all(ntsc_clip)
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous result")
    real_even_frame, partial_seen = dmedit.media.encode._even_frame, []

    def interrupt_late(frame: np.ndarray) -> np.ndarray:
        partial_seen.append([p.name for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")])
        if len(partial_seen) == 70:  # after x264's look-ahead, so the partial file holds frames
            raise KeyboardInterrupt
        return real_even_frame(frame)

    monkeypatch.setattr(dmedit.media.encode, "_even_frame", interrupt_late)
    with pytest.raises(KeyboardInterrupt):
        write_video(path=output, frames=np.concatenate([frames] * 3), fps=info.fps)
    assert partial_seen[-1], "the interruption came before anything was written"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert output.read_bytes() == b"previous result"


@pytest.mark.parametrize("name", ["open gop.mp4", "keyframes.mkv", "keyframes.ts"])
def test_spans_equal_a_full_decode_whatever_the_container_seeks_by(clip_dir: Path, name: str):
    """Spans start from a keyframe found by seeking; MPEG-TS seeks by decode time to any packet."""
    clip = make_clip(clip_dir / name, width=64, height=48, frames=60, x264_params="keyint=12:open-gop=1")
    info = probe(path=clip)
    with av.open(str(clip)) as container:
        every_frame = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert info.frame_count == len(every_frame) == 60
    for start, count in [(0, 5), (13, 4), (29, 11), (47, 13), (59, 1)]:
        span = select_span(info=info, start=str(start), frames=count)
        assert np.array_equal(read_frames(info=info, span=span), every_frame[start : start + count])
