"""Reading and writing real video: probe, span selection, decoding, and H.264 output with the
source's audio. Fitting frames to the model's size and compositing live in fit.py.

Rules a user sees:
- Span start: an integer ("12") is a frame index; a number with a decimal point ("1.5", "2.")
  or an "s" suffix ("2s", "1.5s") is seconds, rounded to the nearest frame.
- `--fps F` samples the nearest source frames at rate F (a Fraction with denominator <= 1001, so
  10/3 stays exact). A rate within 1% of the source rate means the source rate (contiguous
  frames); a rate above that is refused, since it would repeat frames.
- Output is MP4 (H.264, yuv420p, +faststart) whatever the suffix. yuv420p needs even sizes, so an
  odd width or height gains one column/row on the right/bottom that repeats the edge pixels; the
  written file then probes one pixel wider/taller.
- The source's audio for the span goes along (see audio.py for copy vs AAC and precision).
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import decord
import numpy as np

from dmedit.audio import audio_packets, mux_interleaved
from dmedit.errors import InputError, UsageError
from dmedit.fit import check_frames

SAME_RATE_TOLERANCE = Fraction(1, 100)
_START_PATTERN = re.compile(r"^(?P<number>\d+\.?\d*|\.\d+)(?P<unit>s?)$")


def _rate_fields(rate: Fraction) -> dict:
    return {"fps": f"{rate.numerator}/{rate.denominator}", "fps_float": float(rate)}


def _reason(error: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input") without the errno noise."""
    return getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learned about a video; duration = frame_count / fps in seconds."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration: float
    codec: str
    pix_fmt: str
    has_audio: bool
    audio_codec: str | None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "width": self.width, "height": self.height, **_rate_fields(self.fps),
            "frame_count": self.frame_count, "duration": self.duration, "codec": self.codec,
            "pix_fmt": self.pix_fmt, "has_audio": self.has_audio, "audio_codec": self.audio_codec,
        }


def probe(*, path: Path) -> VideoInfo:
    """Read a video's metadata and count its decodable frames; InputError names the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a video file")
    try:
        with av.open(str(path)) as container:
            info = _stream_info(container=container, path=path)
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{path}: not a readable video file, or truncated ({_reason(error)})") from None
    frame_count = _decodable_frame_count(path=path, header_frames=info.pop("header_frames"))
    return VideoInfo(path=path, frame_count=frame_count, duration=float(frame_count / info["fps"]), **info)


def _stream_info(*, container: av.container.InputContainer, path: Path) -> dict:
    if not container.streams.video:
        raise InputError(f"{path}: has no video stream")
    video = container.streams.video[0]
    rate = video.average_rate or video.guessed_rate or video.base_rate
    if not rate:
        raise InputError(f"{path}: the video stream has no frame rate")
    try:
        first = next(iter(container.decode(video)), None)
    except av.error.FFmpegError:
        first = None
    if first is None:
        raise InputError(f"{path}: has no decodable video frames (damaged or empty video stream)")
    audio = container.streams.audio[0] if container.streams.audio else None
    audio_codec = audio.codec_context.codec.canonical_name if audio else None
    return {
        "width": first.width, "height": first.height, "fps": Fraction(rate),
        "codec": video.codec_context.codec.canonical_name, "pix_fmt": first.format.name,
        "has_audio": audio is not None, "audio_codec": audio_codec,
        "header_frames": video.frames,
    }


def _decodable_frame_count(*, path: Path, header_frames: int) -> int:
    """decord indexes every packet; decoding the last frame catches a cut-off end."""
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        count = len(reader)
        if count:
            reader[count - 1]
    except (decord.DECORDError, RuntimeError, IndexError):
        raise InputError(f"{path}: cannot decode all of its frames; it is truncated or damaged") from None
    if count == 0:
        raise InputError(f"{path}: has no decodable video frames")
    if header_frames and count < header_frames:
        raise InputError(f"{path}: truncated: its header lists {header_frames} frames, {count} are present")
    return count


@dataclass(frozen=True)
class Span:
    """The source frames to edit and the rate they play at; duration = len(indices) / fps."""

    indices: tuple[int, ...]
    fps: Fraction
    start_time: float
    duration: float

    def to_dict(self) -> dict:
        return {
            "start_frame": self.indices[0], "frames": len(self.indices), "indices": list(self.indices),
            **_rate_fields(self.fps), "start_time": self.start_time, "duration": self.duration,
        }


def _round_half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)


def _start_frame(*, start: str | None, fps: Fraction) -> int:
    if start is None:
        return 0
    match = _START_PATTERN.match(str(start).strip())
    if match is None:
        raise UsageError(f"start {start!r} is neither a frame index (12) nor seconds (1.5 or 1.5s)")
    number = match["number"]
    if match["unit"] or "." in number:
        return _round_half_up(Fraction(number) * fps)
    return int(number)


def _sampling_rate(*, fps: float, info: VideoInfo) -> Fraction:
    if not fps > 0:
        raise UsageError(f"--fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    if abs(rate - info.fps) <= info.fps * SAME_RATE_TOLERANCE:
        return info.fps
    if rate > info.fps:
        raise UsageError(f"--fps {fps} exceeds the source rate {float(info.fps):.3f} of {info.path}")
    return rate


def select_span(
    *, info: VideoInfo, start: str | None, frames: int, stride: int | None = None, fps: float | None = None
) -> Span:
    """Pick `frames` source frame indices from `start`, every `stride`-th or sampled at `fps`.

    `start` "12" is frame 12; "1.5", "2." or "1.5s" are seconds (nearest frame); None is frame 0.
    """
    if frames < 1:
        raise UsageError(f"frames must be at least 1, got {frames}")
    if stride is not None and fps is not None:
        raise UsageError("--stride and --fps cannot be used together; pick one")
    first = _start_frame(start=start, fps=info.fps)
    if stride is not None:
        if stride < 1:
            raise UsageError(f"--stride must be at least 1, got {stride}")
        rate = info.fps / stride
        indices = tuple(first + stride * i for i in range(frames))
    else:
        rate = info.fps if fps is None else _sampling_rate(fps=fps, info=info)
        step = info.fps / rate
        indices = tuple(first + _round_half_up(step * i) for i in range(frames))
    if indices[-1] >= info.frame_count:
        raise InputError(
            f"{info.path}: the span needs {frames} frames from frame {first} up to frame {indices[-1]}, "
            f"but the video has only {info.frame_count} frames (0..{info.frame_count - 1})"
        )
    return Span(indices=indices, fps=rate, start_time=float(first / info.fps), duration=float(frames / rate))


def read_frames(*, info: VideoInfo, span: Span) -> np.ndarray:
    """Decode the span's frames at source size -> (T,H,W,3) uint8 RGB."""
    try:
        reader = decord.VideoReader(str(info.path), ctx=decord.cpu(0))
        batch = reader.get_batch(list(span.indices))
    except (decord.DECORDError, RuntimeError, IndexError):
        first, last = span.indices[0], span.indices[-1]
        raise InputError(f"{info.path}: cannot decode frames {first}..{last}; the file is damaged") from None
    frames = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch, dtype=np.uint8)
    if frames.shape != (len(span.indices), info.height, info.width, 3):
        raise InputError(f"{info.path}: decoded {frames.shape}, not {info.width}x{info.height} RGB frames")
    return np.ascontiguousarray(frames)


def write_video(
    *, path: Path, frames: np.ndarray, fps: Fraction, crf: int = 18,
    audio_source: Path | None = None, audio_start: float = 0.0, audio_duration: float | None = None,
) -> None:
    """Write (T,H,W,3) uint8 frames as H.264 MP4 at exactly `fps`, atomically.

    Audio of `audio_source` from `audio_start` for `audio_duration` seconds (default: the video's
    length) is muxed when that file has audio. An odd width/height gains one repeated edge
    column/row. The file appears under `path` only when complete (a hidden partial file is renamed).
    """
    check_frames(frames)
    fps = Fraction(fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        raise UsageError(f"--crf must be between 0 and 51, got {crf}")
    path = Path(path)
    duration = float(len(frames) / fps) if audio_duration is None else audio_duration
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}.mp4")
    try:
        with ExitStack() as stack:
            container = stack.enter_context(
                av.open(str(partial), mode="w", format="mp4", container_options={"movflags": "+faststart"})
            )
            video = _add_video_stream(container=container, frames=frames, fps=fps, crf=crf)
            audio_packets = []
            if audio_source is not None:
                span = {"start": audio_start, "end": audio_start + duration}
                source = Path(audio_source)
                audio_packets = _audio_packets_or_error(container=container, stack=stack, source=source, **span)
            mux_interleaved(container=container, video=video, frames=(_even_frame(f) for f in frames),
                            audio_packets=audio_packets)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _add_video_stream(*, container, frames: np.ndarray, fps: Fraction, crf: int):
    stream = container.add_stream("libx264", rate=fps)
    stream.width = frames.shape[2] + frames.shape[2] % 2
    stream.height = frames.shape[1] + frames.shape[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / fps
    stream.options = {"crf": str(crf), "preset": "medium"}
    return stream


def _audio_packets_or_error(*, container, stack: ExitStack, source: Path, start: float, end: float) -> list:
    try:
        source_container = stack.enter_context(av.open(str(source)))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{source}: cannot read its audio ({_reason(error)})") from None
    return audio_packets(container=container, source_container=source_container, start=start, end=end)


def _even_frame(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column once when the height/width is odd (yuv420p needs even sizes)."""
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad, mode="edge") if any(after for _, after in pad) else np.ascontiguousarray(frame)


def check_output_path(*, output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """UsageError unless `output` can be written: not an input, folder exists and is writable."""
    output = Path(output)
    target = output.resolve()
    for source in map(Path, inputs):
        same_file = source.exists() and target.exists() and os.path.samefile(source, target)
        if same_file or source.resolve() == target:
            raise UsageError(f"{output}: the output is the input file {source}; choose another output name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{output}: the folder {folder} does not exist")
    if target.is_dir():
        raise UsageError(f"{output}: is a folder; give a file name such as {output / 'edited.mp4'}")
    if target.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{output}: cannot write in the folder {folder} ({error.strerror})") from None
