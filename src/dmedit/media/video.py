"""Reading and writing real video: probe, span selection (spans.py), decoding (decode.py, PyAV) and
H.264 output (encode.py) with the source's audio (audio.py). Fitting to the model is fit.py.

Rules a user sees:
- Frames come out upright, as players show them: a display matrix of 90/180/270 degrees (portrait
  phone video) is applied to the pixels, so VideoInfo.width/height are the displayed size and the
  written file needs no rotation metadata. `rotation` reports the matrix's angle.
- Pipes, FIFOs and devices (`dmedit run <(cat clip.mp4)`) are read through `readable_input`, which
  copies them to a temporary file; a FIFO nobody writes to fails after INPUT_WAIT_SECONDS.
- Output is MP4 (H.264, yuv420p, BT.601 limited range, +faststart) whatever the suffix, identical
  bytes for identical frames (encode.py says why that needs care). yuv420p needs even sizes, so an
  odd width or height gains one column/row on the right/bottom repeating the edge pixels (an SPS
  crop cannot remove it: encode.py says why); WrittenVideo.padded records it.
- Span rules (start, --fps, --stride, variable frame rate) are in spans.py.
- The source's audio for the span goes along (see audio.py for copy vs AAC and precision).
- Every failure is one line (InputError/UsageError); FFmpeg's own log never reaches the terminal.
"""

from __future__ import annotations

import dataclasses
import os
import select
import stat
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from dmedit.media import decode
from dmedit.media.audio import audio_packets, mux_interleaved
from dmedit.media.encode import WrittenVideo, add_video_stream, frame_pts, pictures
from dmedit.core.config import DEFAULT_CRF
from dmedit.core.files import replaced_atomically
from dmedit.core.errors import InputError, NotWritable, UsageError
from dmedit.media.fit import check_frames
from dmedit.media.ffmpeg_log import ffmpeg_reason, quiet_ffmpeg
from dmedit.media.spans import SAME_RATE_TOLERANCE, Span, rate_fields, select_span

__all__ = [
    "INPUT_WAIT_SECONDS", "SAME_RATE_TOLERANCE", "Span", "VideoInfo", "WrittenVideo", "check_output_path",
    "probe", "read_frames", "readable_input", "select_span", "write_video",
]

INPUT_WAIT_SECONDS = 10.0  # how long a pipe/FIFO may stay silent before readable_input gives up
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learned about a video; duration = frame_count / fps in seconds.

    path: the file decoded. shown_as: the name the user gave (a pipe readable_input copied), used
    in to_dict and every message; None means `path`. width/height: the displayed (upright) size.
    rotation: the display matrix's counter-clockwise angle, 0/90/180/270 (ffprobe prints 270 as
    -90; phone portrait video is 90 or 270). variable_rate: frame intervals are uneven; fps is then
    the average rate. index: the frame index decode.py reads spans with.
    """

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
    rotation: int = 0
    variable_rate: bool = False
    shown_as: Path | None = None
    index: decode.StreamIndex | None = field(default=None, repr=False, compare=False)

    @property
    def display_path(self) -> Path:
        return self.shown_as if self.shown_as is not None else self.path

    def frame_times(self) -> tuple[float, ...] | None:
        """Every frame's presentation time in seconds from the first frame (None if unknown)."""
        return self.index.times() if self.index is not None else None

    def to_dict(self) -> dict:
        return {
            "path": str(self.display_path), "width": self.width, "height": self.height,
            "rotation": self.rotation, **rate_fields(self.fps), "variable_rate": self.variable_rate,
            "frame_count": self.frame_count, "duration": self.duration, "codec": self.codec,
            "pix_fmt": self.pix_fmt, "has_audio": self.has_audio, "audio_codec": self.audio_codec,
        }


def probe(*, path: Path, shown_as: Path | None = None) -> VideoInfo:
    """Read a video's metadata, count its frames (packets) and decode its first and last frames.

    InputError (one line) names `shown_as` when given (the user's name for a copied pipe), else `path`.
    """
    path = Path(path)
    shown = Path(shown_as) if shown_as is not None else path
    if not path.exists():
        raise InputError(f"{shown}: no such file")
    if path.is_dir():
        raise InputError(f"{shown}: is a folder, not a video file")
    if not path.is_file():
        raise InputError(f"{shown}: is a pipe or device, not a regular file")
    with quiet_ffmpeg():
        with _opened(path=path, shown=shown) as (container, stream):
            facts = _stream_facts(container=container, stream=stream, shown=shown)
            index = decode.index_packets(container=container, stream=stream, shown=shown)
        with _opened(path=path, shown=shown) as (container, stream):
            picture = decode.first_frame(container=container, stream=stream)
            if picture is None or not index.count:
                raise InputError(f"{shown}: has no decodable video frames (damaged or empty video stream)")
            rotation, steps = decode.orientation(matrix=decode.display_matrix(frame=picture), shown=shown)
            sideways = decode.turns_sideways(steps=steps)
            width, height = (picture.height, picture.width) if sideways else (picture.width, picture.height)
            pix_fmt = picture.format.name
        with _ffmpeg_errors(shown=shown):
            if not decode.last_frame_decodes(path=path, index=index):
                raise InputError(f"{shown}: cannot decode its last frame; it is truncated or damaged")
    index = dataclasses.replace(index, steps=steps)
    return VideoInfo(path=path, width=width, height=height, frame_count=index.count,
                     duration=float(index.count / facts["fps"]), pix_fmt=pix_fmt, rotation=rotation,
                     variable_rate=decode.is_variable_rate(index=index), shown_as=None if shown_as is None else shown,
                     index=index, **facts)


@contextmanager
def _ffmpeg_errors(*, shown: Path) -> Iterator[None]:
    """FFmpeg's errors (and the OS's) become one-line InputErrors naming `shown`."""
    try:
        yield
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{shown}: not a readable video file, or truncated ({ffmpeg_reason(error)})") from None


@contextmanager
def _opened(*, path: Path, shown: Path) -> Iterator[tuple]:
    """(container, first video stream) of `path`, errors as in _ffmpeg_errors."""
    with _ffmpeg_errors(shown=shown), av.open(str(path)) as container:
        if not container.streams.video:
            raise InputError(f"{shown}: has no video stream")
        yield container, container.streams.video[0]


def _stream_facts(*, container, stream, shown: Path) -> dict:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise InputError(f"{shown}: the video stream has no frame rate")
    audio = container.streams.audio[0] if container.streams.audio else None
    return {
        "fps": Fraction(rate), "codec": stream.codec_context.codec.canonical_name,
        "has_audio": audio is not None, "audio_codec": audio.codec_context.codec.canonical_name if audio else None,
    }


def read_frames(*, info: VideoInfo, span: Span) -> np.ndarray:
    """Decode the span's frames, upright -> (T, info.height, info.width, 3) uint8 RGB.

    T = len(span.indices); repeated indices give repeated frames. A frame that does not decode
    (damaged data) is a one-line InputError naming it.
    """
    shown = info.display_path
    index = info.index if info.index is not None else probe(path=info.path, shown_as=info.shown_as).index
    with quiet_ffmpeg():
        try:
            found = decode.read_positions(path=info.path, index=index, positions=span.indices)
        except (av.error.FFmpegError, OSError) as error:
            raise InputError(f"{shown}: cannot decode frames {span.indices[0]}..{span.indices[-1]} "
                             f"({ffmpeg_reason(error)})") from None
    missing = sorted(set(span.indices) - found.keys())
    if missing:
        raise InputError(f"{shown}: frames {_numbers(missing)} do not decode (damaged data); "
                         "choose a span without them")
    shape = (info.height, info.width, 3)
    for position in span.indices:
        if found[position].shape != shape:
            height, width = found[position].shape[:2]
            raise InputError(f"{shown}: frame {position} is {width}x{height}, not {info.width}x{info.height} "
                             "(the frame size changes mid-stream)")
    return np.stack([found[position] for position in span.indices])


def _numbers(values: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9' (at most five runs, then '...')."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    text = [f"{a}..{b}" if b > a else f"{a}" for a, b in runs[:5]]
    return ", ".join(text + (["..."] if len(runs) > 5 else []))


def write_video(
    *, path: Path, frames: np.ndarray, fps: Fraction, crf: int = DEFAULT_CRF,
    audio_source: Path | None = None, audio_start: float = 0.0, audio_duration: float | None = None,
    timestamps: Sequence[float] | None = None,
) -> WrittenVideo:
    """Write (T,H,W,3) uint8 frames as H.264 MP4, atomically; returns what was written.

    Frames play at exactly `fps`, or at `timestamps` (T presentation times in seconds, increasing,
    e.g. Span.timestamps of a variable-rate source; `fps` then sets the last frame's length). Audio
    of `audio_source` from `audio_start` for `audio_duration` seconds (default: the video's length)
    is muxed when that file has audio. An odd width/height gains one repeated edge column/row.
    The file appears under `path` only when complete (a hidden partial file is renamed); a failed
    write (a full disk) is an OSError naming `path` (core.files.replaced_atomically).
    """
    check_frames(frames)
    fps = Fraction(fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        raise UsageError(f"--crf must be between 0 and 51, got {crf}")
    path = Path(path)
    time_base, pts = frame_pts(count=len(frames), fps=fps, timestamps=timestamps)
    length = float(len(frames) / fps) if timestamps is None else float(timestamps[-1]) + float(1 / fps)
    duration = length if audio_duration is None else audio_duration
    height, width = frames.shape[1:3]
    with replaced_atomically(path=path, suffix=".mp4") as partial, quiet_ffmpeg(), ExitStack() as stack:
        container = stack.enter_context(
            av.open(str(partial), mode="w", format="mp4", container_options={"movflags": "+faststart"})
        )
        video = add_video_stream(container=container, width=width, height=height, fps=fps,
                                 time_base=time_base, crf=crf)
        sound = [] if audio_source is None else _audio_packets_or_error(
            container=container, stack=stack, source=Path(audio_source), start=audio_start,
            end=audio_start + duration)
        mux_interleaved(container=container, video=video, pictures=pictures(frames=frames, pts=pts),
                        audio_packets=sound)
    return WrittenVideo(path=path, width=video.width, height=video.height, source_width=width,
                        source_height=height, padded=(video.width, video.height) != (width, height),
                        frames=len(frames), fps=fps, duration=length, timestamps_kept=timestamps is not None,
                        has_audio=bool(sound))


def _audio_packets_or_error(*, container, stack: ExitStack, source: Path, start: float, end: float) -> list:
    try:
        source_container = stack.enter_context(av.open(str(source)))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{source}: cannot read its audio ({ffmpeg_reason(error)})") from None
    return audio_packets(container=container, source_container=source_container, start=start, end=end)


def check_output_path(*, output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """UsageError unless `output` can be written (not an input; its folder, or the nearest existing
    folder above a missing one, is a folder); NotWritable (exit 1) when that folder refuses new
    files. A missing folder is the caller's to create (core.files.created_folders)."""
    output = Path(output)
    target = output.resolve()
    for source in map(Path, inputs):
        same_file = source.exists() and target.exists() and os.path.samefile(source, target)
        if same_file or source.resolve() == target:
            raise UsageError(f"{output}: the output is the input file {source}; choose another output name")
    folder = next(parent for parent in target.parents if parent.exists())
    if not folder.is_dir():
        raise UsageError(f"{output}: {folder} is a file, not a folder; choose another output")
    if target.is_dir():
        raise UsageError(f"{output}: is a folder; give a file name such as {output / 'edited.mp4'}")
    if target.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise NotWritable(f"{output}: cannot write in the folder {folder} ({error.strerror})") from None


@contextmanager
def readable_input(*, path: Path, timeout: float = INPUT_WAIT_SECONDS) -> Iterator[Path]:
    """Yield a path that can be opened, read and seeked as often as needed.

    A regular file (or a missing/odd path, which probe then explains) is yielded unchanged. A pipe,
    FIFO or character device (`dmedit run <(cat clip.mp4)`, i.e. /dev/fd/63) is copied into a
    temporary file, deleted when the block ends; InputError (one line, naming `path`) when no data
    arrives for `timeout` seconds, e.g. a FIFO nobody opens for writing, or the stream is empty.
    Keep the user's name for messages and reports: `probe(path=yielded, shown_as=path)`, whose
    VideoInfo.path (the copy) serves read_frames and write_video(audio_source=...) while the block
    lasts and whose to_dict() shows `path`.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dmedit-input-") as folder:
        copy = Path(folder) / f"input{path.suffix if path.suffix.isascii() else ''}"
        _copy_stream(source=path, target=copy, timeout=timeout)
        yield copy


def _copy_stream(*, source: Path, target: Path, timeout: float) -> None:
    """Copy a pipe/FIFO/device to `target`, waiting at most `timeout` seconds for each chunk."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise InputError(f"{source}: cannot open it ({error.strerror})") from None
    total = 0
    try:
        poller = select.poll()
        poller.register(descriptor, select.POLLIN | select.POLLPRI)
        with open(target, "wb") as copy:
            while True:
                if not poller.poll(timeout * 1000):
                    raise InputError(f"{source}: no data arrived for {timeout:g} s (a pipe or FIFO nobody writes to?)")
                try:
                    chunk = os.read(descriptor, _COPY_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                copy.write(chunk)
                total += len(chunk)
    finally:
        os.close(descriptor)
    if not total:
        raise InputError(f"{source}: the stream is empty")
