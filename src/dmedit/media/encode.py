"""H.264 encoding for write_video: the stream's settings, even-size padding, timestamps.

Bit-identical output for identical frames (within one machine and library build):
- libx264 (core 165, as bundled with PyAV 18) reads uninitialised heap memory in its macroblock-tree
  lookahead, so with mb-tree on, the bitstream depends on what the allocator hands back: a fresh
  process gets zeroed pages and repeats itself, a long-lived one (torch, earlier encodes) does not.
  Shown with glibc's MALLOC_PERTURB_ (fill fresh allocations with a byte): the same yuv420p input
  gave a different bitstream for each fill byte, with 1 or 3 threads and RGB or YUV input; with
  `mbtree=0` every fill byte gave the same one. mb-tree is therefore off (carphone at crf 18:
  +3% bytes, -0.4 dB at 176x144; +25% bytes, +0.2 dB at 576x320).
- x264's output also depends on its thread count, so that count is fixed (not the CPU count).
- The RGB -> yuv420p conversion (swscale, BT.601 limited range) was deterministic in every test;
  the stream is tagged with that matrix and range so players decode the colours as written.

Odd sizes are padded, not cropped: H.264 crops a 4:2:0 frame in steps of 2 pixels (CropUnitX/Y = 2,
the SPS semantics of clause 7.4.2.1.1), so no SPS crop turns 176x144 into 175x143. FFmpeg's
`h264_metadata` bitstream filter (through PyAV 18's `av.bitstream.BitStreamFilterContext`) refuses
`crop_right=1:crop_bottom=1` on such a stream with EINVAL. The same filter on a yuv444p stream gives
an exact 175x143 file, but in the High 4:4:4 Predictive profile, outside the 4:2:0 profiles (Baseline,
Main, High) that browsers and hardware decoders are expected to play; so odd sizes gain one
repeated edge column/row instead, and WrittenVideo.padded and its note say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

ENCODER_THREADS = 4
X264_PARAMS = "mbtree=0"
TIMESTAMP_TIME_BASE = Fraction(1, 90000)  # pts unit when the caller gives frame times
COLOR_RANGE_LIMITED = 1  # AVCOL_RANGE_MPEG: what swscale writes from RGB by default
COLORSPACE_BT601 = 6  # AVCOL_SPC_SMPTE170M: swscale's default RGB -> YUV matrix


@dataclass(frozen=True)
class WrittenVideo:
    """What write_video wrote. width/height: the file's frame size; source_width/source_height: the
    frames handed in. padded: yuv420p needs even sizes, so an odd width/height gained one column/row
    repeating the edge. timestamps_kept: frames carry the caller's presentation times (variable
    rate) instead of a constant `fps`; duration is in seconds."""

    path: Path
    width: int
    height: int
    source_width: int
    source_height: int
    padded: bool
    frames: int
    fps: Fraction
    duration: float
    timestamps_kept: bool
    has_audio: bool

    @property
    def note(self) -> str | None:
        """One line for the run report when the size was padded, else None."""
        if not self.padded:
            return None
        return (f"padded {self.source_width}x{self.source_height} to {self.width}x{self.height}: "
                "H.264 yuv420p needs even sizes (the extra column/row repeats the edge)")

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "width": self.width, "height": self.height,
            "source_width": self.source_width, "source_height": self.source_height, "padded": self.padded,
            "frames": self.frames, "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "duration": self.duration, "timestamps_kept": self.timestamps_kept, "has_audio": self.has_audio,
            "note": self.note,
        }


def frame_pts(*, count: int, fps: Fraction, timestamps: Sequence[float] | None) -> tuple[Fraction, list[int]]:
    """(time base, pts of each frame): index / fps, or `timestamps` seconds in 1/90000 units."""
    if timestamps is None:
        return 1 / fps, list(range(count))
    if len(timestamps) != count:
        raise ValueError(f"timestamps has {len(timestamps)} entries for {count} frames")
    pts = [round(Fraction(float(t)) / TIMESTAMP_TIME_BASE) for t in timestamps]
    if pts[0] < 0 or any(later <= earlier for earlier, later in zip(pts, pts[1:])):
        raise ValueError("timestamps must start at 0 or later and increase (1/90000 s apart at least)")
    return TIMESTAMP_TIME_BASE, pts


def add_video_stream(*, container, width: int, height: int, fps: Fraction, time_base: Fraction, crf: int):
    """An H.264 yuv420p stream for (height, width) frames, padded to even sizes; settings above."""
    stream = container.add_stream("libx264", rate=fps)
    stream.width = width + width % 2
    stream.height = height + height % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = time_base
    stream.codec_context.thread_count = ENCODER_THREADS
    stream.codec_context.color_range = COLOR_RANGE_LIMITED
    stream.codec_context.colorspace = COLORSPACE_BT601
    stream.options = {"crf": str(crf), "preset": "medium", "x264-params": X264_PARAMS}
    return stream


def pictures(*, frames: np.ndarray, pts: Sequence[int]) -> Iterator[av.VideoFrame]:
    """(T,H,W,3) uint8 -> RGB VideoFrames at even sizes with their pts (the encoder converts them)."""
    for frame, stamp in zip(frames, pts):
        picture = av.VideoFrame.from_ndarray(_even_frame(frame), format="rgb24")
        picture.pts = stamp
        yield picture


def _even_frame(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column once when the height/width is odd (yuv420p needs even sizes)."""
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad, mode="edge") if any(after for _, after in pad) else np.ascontiguousarray(frame)
