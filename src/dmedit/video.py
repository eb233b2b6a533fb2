"""Reading and writing real video: probe, span selection, decoding, model-size fitting,
compositing, and H.264 output with the source's audio.

Rules a user sees:
- Span start: an integer ("12") is a frame index; a number with a decimal point ("1.5", "2.")
  or an "s" suffix ("2s", "1.5s") is seconds, rounded to the nearest frame.
- `--fps F` samples the nearest source frames at rate F (a Fraction with denominator <= 1001, so
  10/3 stays exact). A rate within 1% of the source rate means the source rate (contiguous
  frames); a rate above that is refused, since it would repeat frames.
- Output is MP4 (H.264, yuv420p, +faststart) whatever the suffix. yuv420p needs even sizes, so an
  odd width or height gains one column/row on the right/bottom that repeats the edge pixels; the
  written file then probes one pixel wider/taller.
- Audio copied without re-encoding (aac, mp3, ...) is cut at packet boundaries: a packet is kept
  when its midpoint lies in the span, so each end is within half an audio frame (AAC: 1024 samples,
  23 ms at 44.1 kHz). Other codecs are decoded, cut to the sample and re-encoded to AAC.
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
import cv2
import decord
import numpy as np

from dmedit.errors import InputError, UsageError

FIT_MODES = ("crop", "pad", "stretch")
MP4_COPYABLE_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
SAME_RATE_TOLERANCE = Fraction(1, 100)
_START_PATTERN = re.compile(r"^(?P<number>\d+\.?\d*|\.\d+)(?P<unit>s?)$")


def _rate_text(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
            "path": str(self.path), "width": self.width, "height": self.height,
            "fps": _rate_text(self.fps), "fps_float": float(self.fps),
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
        raise InputError(f"{path}: not a readable video file, or truncated ({_first_line(error)})") from None
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
    return {
        "width": first.width, "height": first.height, "fps": Fraction(rate),
        "codec": video.codec_context.name, "pix_fmt": first.format.name,
        "has_audio": audio is not None, "audio_codec": audio.codec_context.name if audio else None,
        "header_frames": video.frames,
    }


def _decodable_frame_count(*, path: Path, header_frames: int) -> int:
    """decord indexes every packet; decoding the last frame catches a cut-off end."""
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        count = len(reader)
        if count:
            reader[count - 1]
    except (decord.DECORDError, RuntimeError, IndexError) as error:
        raise InputError(f"{path}: cannot decode its frames, truncated or damaged ({_first_line(error)})") from None
    if count == 0:
        raise InputError(f"{path}: has no decodable video frames")
    if header_frames and count < header_frames:
        raise InputError(f"{path}: truncated: the header lists {header_frames} frames, only {count} are present")
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
            "fps": _rate_text(self.fps), "fps_float": float(self.fps),
            "start_time": self.start_time, "duration": self.duration,
        }


def _round_half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)


def _start_frame(*, start: str | None, fps: Fraction) -> int:
    if start is None:
        return 0
    match = _START_PATTERN.match(start.strip())
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
    """Pick `frames` source frame indices from `start`, every `stride`-th or sampled at `fps`."""
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
    except (decord.DECORDError, RuntimeError, IndexError) as error:
        raise InputError(f"{info.path}: cannot decode frames {span.indices[0]}..{span.indices[-1]} ({_first_line(error)})") from None
    frames = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch, dtype=np.uint8)
    if frames.shape != (len(span.indices), info.height, info.width, 3):
        raise InputError(f"{info.path}: decoded frames have shape {frames.shape}, expected {info.width}x{info.height} RGB")
    return np.ascontiguousarray(frames)


@dataclass(frozen=True)
class FitMapping:
    """Source pixels `source_box` (x, y, width, height) fill model pixels `model_box`.

    crop: source_box is the centred crop with the model's aspect, model_box the whole model frame.
    pad: source_box is the whole source, model_box the letterboxed area (the rest is black).
    stretch: both boxes are whole frames.
    """

    mode: str
    source_width: int
    source_height: int
    model_width: int
    model_height: int
    source_box: tuple[int, int, int, int]
    model_box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "source_width": self.source_width, "source_height": self.source_height,
            "model_width": self.model_width, "model_height": self.model_height,
            "source_box": list(self.source_box), "model_box": list(self.model_box),
        }


def _fit_mapping(*, mode: str, source_width: int, source_height: int, width: int, height: int) -> FitMapping:
    source_box = (0, 0, source_width, source_height)
    model_box = (0, 0, width, height)
    source_wider = source_width * height > width * source_height
    if mode == "crop" and source_wider:
        crop_width = max(1, round(source_height * width / height))
        source_box = ((source_width - crop_width) // 2, 0, crop_width, source_height)
    elif mode == "crop":
        crop_height = max(1, round(source_width * height / width))
        source_box = (0, (source_height - crop_height) // 2, source_width, crop_height)
    elif mode == "pad" and source_wider:
        fill_height = max(1, round(source_height * width / source_width))
        model_box = (0, (height - fill_height) // 2, width, fill_height)
    elif mode == "pad":
        fill_width = max(1, round(source_width * height / source_height))
        model_box = ((width - fill_width) // 2, 0, fill_width, height)
    return FitMapping(mode, source_width, source_height, width, height, source_box, model_box)


def _resize(image: np.ndarray, *, width: int, height: int, upscale: int = cv2.INTER_CUBIC) -> np.ndarray:
    """cv2.resize with INTER_AREA when shrinking, `upscale` otherwise; (h,w[,c]) -> (height,width[,c])."""
    if image.shape[:2] == (height, width):
        return image.copy()
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else upscale)


def _check_frames(frames: np.ndarray, *, name: str = "frames") -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(f"{name} must be a (T,H,W,3) uint8 array, got {shape} {getattr(frames, 'dtype', '')}")
    if 0 in frames.shape:
        raise ValueError(f"{name} must not be empty, got shape {frames.shape}")


def to_model_frames(*, frames: np.ndarray, width: int, height: int, fit: str = "crop") -> tuple[np.ndarray, FitMapping]:
    """(T,H,W,3) uint8 -> (T,height,width,3) uint8 and the mapping back to source pixels."""
    _check_frames(frames)
    if fit not in FIT_MODES:
        raise UsageError(f"--fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    if width < 1 or height < 1:
        raise ValueError(f"model size must be positive, got {width}x{height}")
    mapping = _fit_mapping(mode=fit, source_width=frames.shape[2], source_height=frames.shape[1], width=width, height=height)
    x, y, box_width, box_height = mapping.source_box
    mx, my, fill_width, fill_height = mapping.model_box
    model = np.zeros((frames.shape[0], height, width, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        region = frame[y : y + box_height, x : x + box_width]
        model[index, my : my + fill_height, mx : mx + fill_width] = _resize(region, width=fill_width, height=fill_height)
    return model, mapping


def from_model_frames(*, frames: np.ndarray, mapping: FitMapping, source: np.ndarray) -> np.ndarray:
    """Model-size (T,h,w,3) uint8 back to source size (T,H,W,3); pixels outside a crop come from `source`."""
    _check_frames(frames)
    _check_frames(source, name="source")
    if frames.shape[1:3] != (mapping.model_height, mapping.model_width):
        raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the mapping expects {mapping.model_width}x{mapping.model_height}")
    if source.shape[0] != frames.shape[0] or source.shape[1:3] != (mapping.source_height, mapping.source_width):
        raise ValueError(f"source has shape {source.shape}, expected {frames.shape[0]} frames of {mapping.source_width}x{mapping.source_height}")
    x, y, box_width, box_height = mapping.source_box
    mx, my, fill_width, fill_height = mapping.model_box
    restored = source.copy()
    for index, frame in enumerate(frames):
        region = frame[my : my + fill_height, mx : mx + fill_width]
        restored[index, y : y + box_height, x : x + box_width] = _resize(region, width=box_width, height=box_height)
    return restored


def masks_to_model(*, masks: np.ndarray, mapping: FitMapping) -> np.ndarray:
    """(T,H,W) float masks at source size -> (T,h,w) float32 in [0,1] at model size; padding is 0."""
    if masks.ndim != 3 or masks.shape[1:] != (mapping.source_height, mapping.source_width):
        raise ValueError(f"masks must be (T,{mapping.source_height},{mapping.source_width}), got {masks.shape}")
    x, y, box_width, box_height = mapping.source_box
    mx, my, fill_width, fill_height = mapping.model_box
    model = np.zeros((masks.shape[0], mapping.model_height, mapping.model_width), dtype=np.float32)
    for index, mask in enumerate(masks.astype(np.float32)):
        region = np.ascontiguousarray(mask[y : y + box_height, x : x + box_width])
        resized = _resize(region, width=fill_width, height=fill_height, upscale=cv2.INTER_LINEAR)
        model[index, my : my + fill_height, mx : mx + fill_width] = resized
    return np.clip(model, 0.0, 1.0)


def composite(*, source: np.ndarray, edited: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """source*(1-m) + edited*m for (T,H,W,3) uint8 frames and (T,H,W) masks in [0,1] -> uint8."""
    _check_frames(source, name="source")
    _check_frames(edited, name="edited")
    if edited.shape != source.shape or masks.shape != source.shape[:3]:
        raise ValueError(f"shapes differ: source {source.shape}, edited {edited.shape}, masks {masks.shape}")
    weight = np.clip(masks.astype(np.float32), 0.0, 1.0)[..., None]
    blended = source.astype(np.float32) * (1.0 - weight) + edited.astype(np.float32) * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def side_by_side(*, panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels (T,H,W_i,3) with equal T and H -> (T,H,sum W_i,3), left to right."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    for panel in panels:
        _check_frames(panel, name="panel")
    if len({panel.shape[:2] for panel in panels}) != 1:
        raise ValueError(f"panels need equal frame count and height, got {[p.shape for p in panels]}")
    return np.concatenate(list(panels), axis=2)


def write_video(
    *, path: Path, frames: np.ndarray, fps: Fraction, crf: int = 18,
    audio_source: Path | None = None, audio_start: float = 0.0, audio_duration: float | None = None,
) -> None:
    """Write (T,H,W,3) uint8 frames as H.264 MP4 at exactly `fps`, atomically.

    Audio of `audio_source` from `audio_start` for `audio_duration` seconds (default: the video's
    length) is muxed when that file has audio. The file appears under `path` only when complete.
    """
    _check_frames(frames)
    fps = Fraction(fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
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
                audio_packets = _audio_packets(
                    container=container, stack=stack, source=Path(audio_source), start=audio_start, end=audio_start + duration
                )
            _mux_interleaved(container=container, video=video, frames=frames, audio_packets=audio_packets)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _add_video_stream(*, container: av.container.OutputContainer, frames: np.ndarray, fps: Fraction, crf: int):
    stream = container.add_stream("libx264", rate=fps)
    stream.width = frames.shape[2] + frames.shape[2] % 2
    stream.height = frames.shape[1] + frames.shape[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / fps
    stream.options = {"crf": str(crf), "preset": "medium"}
    return stream


def _even_frame(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column once when the height/width is odd (yuv420p needs even sizes)."""
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad, mode="edge") if any(after for _, after in pad) else frame


def _mux_interleaved(*, container, video, frames: np.ndarray, audio_packets: list) -> None:
    pending = list(reversed(audio_packets))
    for index, frame in enumerate(frames):
        picture = av.VideoFrame.from_ndarray(_even_frame(frame), format="rgb24")
        picture.pts = index
        for packet in video.encode(picture):
            while pending and _packet_seconds(pending[-1]) <= _packet_seconds(packet):
                container.mux(pending.pop())
            container.mux(packet)
    container.mux(video.encode())
    container.mux(list(reversed(pending)))


def _packet_seconds(packet: av.Packet) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None else 0.0


def _audio_packets(*, container, stack: ExitStack, source: Path, start: float, end: float) -> list:
    """Add an audio stream for `source`'s first audio track; return its packets for [start, end)."""
    try:
        source_container = stack.enter_context(av.open(str(source)))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{source}: cannot read its audio ({_first_line(error)})") from None
    if not source_container.streams.audio:
        return []
    source_audio = source_container.streams.audio[0]
    if source_audio.codec_context.name in MP4_COPYABLE_AUDIO:
        output_audio = container.add_stream_from_template(source_audio)
        return _copied_audio(source_container=source_container, source_audio=source_audio, output_audio=output_audio, start=start, end=end)
    return _encoded_audio(container=container, source_container=source_container, source_audio=source_audio, start=start, end=end)


def _copied_audio(*, source_container, source_audio, output_audio, start: float, end: float) -> list:
    time_base = source_audio.time_base
    if start > 0:
        source_container.seek(int(start / time_base), stream=source_audio, backward=True)
    packets, offset = [], None
    for packet in source_container.demux(source_audio):
        if packet.pts is None or not packet.size:
            continue
        middle = float((packet.pts + (packet.duration or 0) / 2) * time_base)
        if middle >= end:
            break
        if middle < start:
            continue
        offset = packet.pts if offset is None else offset
        packet.pts, packet.dts = packet.pts - offset, packet.pts - offset
        packet.stream = output_audio
        packets.append(packet)
    return packets


def _encoded_audio(*, container, source_container, source_audio, start: float, end: float) -> list:
    """Decode, cut to the sample, and encode to AAC (planar float, source rate and layout)."""
    rate = source_audio.codec_context.sample_rate
    layout = source_audio.codec_context.layout.name
    output_audio = container.add_stream("aac", rate=rate, layout=layout)
    to_planar = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    first_sample, end_sample = round(start * rate), round(end * rate)
    packets, written = [], 0
    for decoded in source_container.decode(source_audio):
        for planar in to_planar.resample(decoded):
            begin = round(float(planar.pts * planar.time_base) * rate) if planar.pts is not None else first_sample + written
            samples = planar.to_ndarray()
            keep = samples[:, max(0, first_sample - begin) : max(0, end_sample - begin)]
            if keep.shape[1] == 0:
                continue
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(keep), format="fltp", layout=layout)
            piece.sample_rate, piece.pts, piece.time_base = rate, written, Fraction(1, rate)
            written += keep.shape[1]
            packets.extend(output_audio.encode(piece))
    packets.extend(output_audio.encode(None))
    return packets


def check_output_path(*, output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """UsageError unless `output` can be written: not an input, folder exists and is writable."""
    output = Path(output)
    target = output.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
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
