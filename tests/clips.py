"""Generated test clips: coloured shapes moving over a textured background, optional audio.

Written with PyAV (libx264, yuv420p) so the suite never depends on ../shared.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

NTSC = Fraction(30000, 1001)
TIMESTAMP_TIME_BASE = Fraction(1, 90000)


def shapes_frame(*, index: int, width: int, height: int) -> np.ndarray:
    """One RGB frame: a smooth textured background, a red square and a blue disc that move."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack(
        [
            110 + 60 * np.sin(xx / 7.0 + index * 0.05),
            120 + 50 * np.cos(yy / 9.0),
            100 + 40 * np.sin((xx + yy) / 11.0),
        ],
        axis=-1,
    )
    frame = background.clip(0, 255).astype(np.uint8)
    side = max(4, min(width, height) // 4)
    x0 = (index * 3) % max(1, width - side)
    y0 = height // 5
    frame[y0 : y0 + side, x0 : x0 + side] = (220, 40, 40)
    cx = width - 1 - (index * 2) % width
    cy = (3 * height) // 4
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= (side // 2) ** 2
    frame[disc] = (40, 60, 220)
    return frame


def make_clip(
    path: Path,
    *,
    width: int = 96,
    height: int = 64,
    frames: int = 24,
    fps: Fraction = NTSC,
    audio: bool = False,
    sample_rate: int = 44100,
    crf: int = 12,
    rotation: int = 0,
    timestamps: Sequence[float] | None = None,
    x264_params: str | None = None,
) -> Path:
    """Write a clip; `width`/`height` may be odd (the encoder pads nothing: yuv444p is used then).

    rotation: a display matrix turning the picture that many degrees counter-clockwise (what
    players and ffprobe read; the pixels stay as shapes_frame draws them). timestamps: each frame's
    presentation time in seconds (irregular spacing makes a variable-frame-rate clip). x264_params:
    e.g. "keyint=12:open-gop=1". The container follows the suffix (.mp4, .mkv, .ts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        odd = width % 2 or height % 2
        stream.pix_fmt = "yuv444p" if odd else "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        if x264_params:
            stream.options = {**stream.options, "x264-params": x264_params}
        if rotation:
            stream.set_display_rotation(rotation)
        if timestamps is not None:
            stream.codec_context.time_base = TIMESTAMP_TIME_BASE
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "stereo"
        for index in range(frames):
            image = av.VideoFrame.from_ndarray(shapes_frame(index=index, width=width, height=height), format="rgb24")
            if timestamps is not None:
                image.pts = round(timestamps[index] / TIMESTAMP_TIME_BASE)
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            seconds = float(frames / fps) if timestamps is None else timestamps[frames - 1] + float(1 / fps)
            _write_tone(container, audio_stream, seconds=seconds, sample_rate=sample_rate)
    return path


def _write_tone(container, stream, *, seconds: float, sample_rate: int) -> None:
    total = int(round(seconds * sample_rate))
    chunk = 1024
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / sample_rate).astype(np.float32)
        tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        samples = np.stack([tone, tone])
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
