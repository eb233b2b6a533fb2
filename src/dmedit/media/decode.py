"""Decoding with PyAV: a stream's frame index (from its packets), its display orientation, and the
frames of a span, upright. FFmpeg's log stays off (media_log.quiet_ffmpeg).

- Frame k is the k-th frame in presentation order: the k-th smallest packet pts. Counting packets
  needs no decoding; a file whose header lists more frames than its packets, or whose last frame
  does not decode, is truncated.
- A span is decoded sequentially from the keyframe at or before its first frame. A packet the
  decoder refuses (garbage in the middle of a file) is skipped; the frames that still decode are
  kept, and asking for one that does not is an InputError naming it.
- Orientation follows FFmpeg's autorotate (the display matrix: quarter turns and flips), so frames
  come out as players show them. Other angles are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from dmedit.core.errors import InputError

SEEK_TRIES = 3  # keyframes tried backwards from a span before decoding from the file's start
VFR_TOLERANCE = Fraction(1, 100)  # a frame interval this far (or one tick) from the mean is irregular


@dataclass(frozen=True)
class StreamIndex:
    """Every frame of a video stream, known from its packets.

    pts: presentation timestamps in display order (`time_base` units), or None when the container
    gives none (then frames are counted as they decode). keyframes: pts of each sync packet, the
    seek targets (FFmpeg's MP4 index is in presentation time). steps: the operations that make a
    decoded frame upright.
    """

    count: int
    time_base: Fraction
    pts: tuple[int, ...] | None
    keyframes: tuple[int, ...]
    steps: tuple[str, ...] = ()

    def times(self) -> tuple[float, ...] | None:
        """Seconds of every frame from the first one, or None without timestamps."""
        if self.pts is None:
            return None
        return tuple(float((stamp - self.pts[0]) * self.time_base) for stamp in self.pts)


def index_packets(*, container, stream, shown: Path) -> StreamIndex:
    """Demux (no decoding) every packet of `stream`; InputError when the file ends early."""
    stamps, keyframes, cut_short = [], [], False
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            cut_short = packet.is_corrupt  # a partial packet at the end: the file was cut
            stamps.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(packet.pts)
    except av.error.FFmpegError:
        cut_short = True
    header = stream.frames
    if header and len(stamps) < header:
        raise InputError(f"{shown}: truncated: its header lists {header} frames, {len(stamps)} are present")
    if cut_short:
        raise InputError(f"{shown}: truncated: its last frame is cut off")
    ordered = None if None in stamps or len(set(stamps)) < len(stamps) else tuple(sorted(stamps))
    return StreamIndex(count=len(stamps), time_base=Fraction(stream.time_base), pts=ordered,
                       keyframes=tuple(sorted(keyframes)))


def is_variable_rate(*, index: StreamIndex) -> bool:
    """True when frame intervals differ from their mean by more than 1% and more than one tick."""
    if index.pts is None or len(index.pts) < 3:
        return False
    intervals = np.diff(np.asarray(index.pts, dtype=np.float64))
    mean = (index.pts[-1] - index.pts[0]) / (len(index.pts) - 1)
    return bool(np.abs(intervals - mean).max() > max(1.0, mean * float(VFR_TOLERANCE)))


def decoded_frames(*, container, stream) -> Iterator[av.VideoFrame]:
    """Frames in presentation order; packets the decoder refuses (damaged data) are skipped."""
    stream.thread_type = "AUTO"
    try:
        for packet in container.demux(stream):
            try:
                decoded = stream.decode(packet)
            except av.error.FFmpegError:
                continue
            yield from decoded
    except av.error.FFmpegError:  # a damaged end: what decoded so far stands
        return


def display_matrix(*, frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's display matrix (9 int32, 16.16 fixed point), or None without one."""
    for data in frame.side_data:
        if data.type == SideDataType.DISPLAYMATRIX:
            values = np.frombuffer(bytes(data), dtype=np.int32)
            return tuple(int(value) for value in values[:9]) if values.size >= 9 else None
    return None


def orientation(*, matrix: Sequence[int] | None, shown: Path) -> tuple[int, tuple[str, ...]]:
    """(rotation, steps): the display matrix's counter-clockwise angle in 0/90/180/270 and the
    operations that make a frame upright, as FFmpeg's autorotate chooses them."""
    if matrix is None:
        return 0, ()
    m = matrix
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale_x or not scale_y:
        return 0, ()
    counter_clockwise = -math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x))
    clockwise = -round(counter_clockwise) % 360
    if clockwise % 90:
        raise InputError(f"{shown}: its display matrix turns the picture by {clockwise} degrees; "
                         "only quarter turns are supported")
    steps = {
        0: ("vflip",) if m[4] < 0 else (),
        90: ("transpose",) if m[3] > 0 else ("clockwise",),
        180: tuple(step for step, flip in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if flip),
        270: ("antitranspose",) if m[3] < 0 else ("counter_clockwise",),
    }[clockwise]
    return (-clockwise) % 360, steps


def upright(*, image: np.ndarray, steps: Iterable[str]) -> np.ndarray:
    """(H,W,C) -> the same pixels turned/flipped by `steps` ((W,H,C) after a quarter turn)."""
    for step in steps:
        image = {
            "clockwise": lambda a: np.rot90(a, k=-1),
            "counter_clockwise": lambda a: np.rot90(a, k=1),
            "transpose": lambda a: a.transpose(1, 0, 2),
            "antitranspose": lambda a: a[::-1, ::-1].transpose(1, 0, 2),
            "hflip": lambda a: a[:, ::-1],
            "vflip": lambda a: a[::-1],
        }[step](image)
    return image


def turns_sideways(*, steps: Iterable[str]) -> bool:
    """True when `steps` swap width and height."""
    return bool({"clockwise", "counter_clockwise", "transpose", "antitranspose"} & set(steps))


def first_frame(*, container, stream) -> av.VideoFrame | None:
    """The first frame that decodes, or None when none does."""
    return next(iter(decoded_frames(container=container, stream=stream)), None)


def last_frame_decodes(*, path: Path, index: StreamIndex) -> bool:
    """Decode from a keyframe before the last frame to the end: does the last frame come out?"""
    if index.pts is None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for _ in decoded_frames(container=container, stream=stream)) >= index.count
    return bool(_scan(path=path, index=index, wanted={index.count - 1}, keep=lambda frame: True))


def read_positions(*, path: Path, index: StreamIndex, positions: Sequence[int]) -> dict[int, np.ndarray]:
    """Decode frames at `positions` (frame numbers) -> {position: (H,W,3) uint8 RGB, upright}.

    Frames that do not decode (damaged data) are missing from the result.
    """
    wanted = set(positions)
    keep = partial(_rgb, steps=index.steps)
    if index.pts is not None:
        return _scan(path=path, index=index, wanted=wanted, keep=keep)
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for position, frame in enumerate(decoded_frames(container=container, stream=stream)):
            if position in wanted:
                found[position] = keep(frame)
            if position >= max(wanted):
                break
    return found


def _rgb(frame: av.VideoFrame, *, steps: tuple[str, ...]) -> np.ndarray:
    return np.ascontiguousarray(upright(image=frame.to_ndarray(format="rgb24"), steps=steps))


def _scan(*, path: Path, index: StreamIndex, wanted: set[int], keep: Callable[[av.VideoFrame], Any]) -> dict:
    """{position: keep(frame)} for the wanted frames, decoded from the nearest keyframe before them.

    A container's seek can land after the keyframe asked for (MPEG-TS seeks by decode time to any
    packet): then an earlier keyframe is tried, up to SEEK_TRIES, then the start of the file. A
    seek that worked but left frames missing is followed by one pass from the start.
    """
    first = index.pts[min(wanted)]
    keys = [key for key in index.keyframes if key <= first][-SEEK_TRIES:]
    for target in [*reversed(keys), None]:
        found = _decode_from(path=path, index=index, target=target, wanted=wanted, keep=keep)
        if found is None:
            continue
        if target is not None and not wanted <= found.keys():
            found |= _decode_from(path=path, index=index, target=None, wanted=wanted, keep=keep) or {}
        return found
    return {}


def _decode_from(*, path: Path, index: StreamIndex, target: int | None, wanted: set[int],
                 keep: Callable[[av.VideoFrame], Any]) -> dict | None:
    """Decode from keyframe pts `target` (None: the file's start) past the last wanted frame;
    None when the seek failed or landed after the first wanted frame."""
    position_of = {stamp: position for position, stamp in enumerate(index.pts)}
    first, last = index.pts[min(wanted)], index.pts[max(wanted)]
    found: dict = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if target is not None and not _seek(container=container, stream=stream, target=target):
            return None
        for count, frame in enumerate(decoded_frames(container=container, stream=stream)):
            if count == 0 and target is not None and (frame.pts is None or frame.pts > first):
                return None
            position = position_of.get(frame.pts)
            if position in wanted:
                found[position] = keep(frame)
            if len(found) == len(wanted) or (frame.pts is not None and frame.pts > last):
                break
        else:
            if target is not None and not found:
                return None
    return found


def _seek(*, container, stream, target: int) -> bool:
    """Seek to the keyframe at or before pts `target`; False when the container cannot seek."""
    try:
        container.seek(target, stream=stream, backward=True)
    except av.error.FFmpegError:
        return False
    return True
