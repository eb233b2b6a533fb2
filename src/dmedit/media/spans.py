"""Which source frames a run edits and when they play: `select_span` -> `Span`.

Rules a user sees:
- Span start: an integer ("12") is a frame index; a number with a decimal point ("1.5", "2.")
  or an "s" suffix ("2s", "1.5s") is seconds: the nearest frame (ties go to the later one).
- `--fps F` samples the nearest source frames at rate F (a Fraction with denominator <= 1001, so
  10/3 stays exact). A rate within 1% of the source rate means the source rate (contiguous
  frames of a constant-rate source); a rate above that is refused, since it would repeat frames.
  A variable-rate source is sampled by time: the frame nearest each tick. `--stride K` takes every
  K-th frame at the source rate / K.
- A variable-frame-rate source without --fps/--stride keeps its timing: the span carries each
  frame's presentation time (write_video(timestamps=...)) and `timing_note` says so; with --fps or
  --stride it becomes constant-rate and `timing_note` says that instead.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, Sequence

from dmedit.core.errors import InputError, UsageError

SAME_RATE_TOLERANCE = Fraction(1, 100)
_START_PATTERN = re.compile(r"^(?P<number>\d+\.?\d*|\.\d+)(?P<unit>s?)$")


class VideoInfo(Protocol):
    """What span selection reads of a probed video (video.VideoInfo has it): the exact average
    rate, the frame count, whether the rate varies, each frame's time, the name to show."""

    fps: Fraction
    frame_count: int
    variable_rate: bool

    @property
    def display_path(self) -> Path: ...

    def frame_times(self) -> tuple[float, ...] | None: ...


def rate_fields(rate: Fraction) -> dict:
    return {"fps": f"{rate.numerator}/{rate.denominator}", "fps_float": float(rate)}


@dataclass(frozen=True)
class Span:
    """The source frames to edit and when they play.

    indices: source frame numbers in presentation order. fps: the output rate (with kept variable
    timing, the source's average rate). start_time: seconds from the source's first frame to the
    span's first; duration: seconds the span plays (the audio cut follows start_time and duration).
    timestamps: None for a constant `fps`; for a variable-rate source without --fps/--stride, each
    frame's presentation time in seconds from the span's first frame (timestamps[0] == 0).
    variable_rate: the source's frame rate is variable.
    """

    indices: tuple[int, ...]
    fps: Fraction
    start_time: float
    duration: float
    timestamps: tuple[float, ...] | None = None
    variable_rate: bool = False

    @property
    def timing_note(self) -> str | None:
        """The one-line warning for a variable-rate source, else None."""
        if not self.variable_rate:
            return None
        if self.timestamps is not None:
            return "variable frame rate: kept the source's timing"
        return f"variable frame rate: resampled to constant {float(self.fps):g} fps"

    def to_dict(self) -> dict:
        return {
            "start_frame": self.indices[0], "frames": len(self.indices), "indices": list(self.indices),
            **rate_fields(self.fps), "start_time": self.start_time, "duration": self.duration,
            "variable_rate": self.variable_rate,
            "timestamps": None if self.timestamps is None else list(self.timestamps),
        }


def _round_half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)


def _nearest(times: Sequence[float], target: float) -> int:
    """Index of the frame time nearest `target` (ties: the later frame)."""
    after = bisect_left(times, target)
    if after == 0:
        return 0
    if after == len(times):
        return len(times) - 1
    return after if times[after] - target <= target - times[after - 1] else after - 1


def _start_frame(*, start: str | None, fps: Fraction, times: Sequence[float] | None) -> int:
    if start is None:
        return 0
    match = _START_PATTERN.match(str(start).strip())
    if match is None:
        raise UsageError(f"start {start!r} is neither a frame index (12) nor seconds (1.5 or 1.5s)")
    number = match["number"]
    if not (match["unit"] or "." in number):
        return int(number)
    if times is not None:
        return _nearest(times, float(Fraction(number)))
    return _round_half_up(Fraction(number) * fps)


def _sampling_rate(*, fps: float, info: VideoInfo) -> Fraction:
    if not fps > 0:
        raise UsageError(f"--fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    if abs(rate - info.fps) <= info.fps * SAME_RATE_TOLERANCE:
        return info.fps
    if rate > info.fps:
        raise UsageError(f"--fps {fps} exceeds the source rate {float(info.fps):.3f} of {info.display_path}")
    return rate


def _sampled_indices(*, first: int, frames: int, rate: Fraction, info: VideoInfo,
                     times: Sequence[float] | None) -> tuple[int, ...]:
    """`frames` indices from `first` at `rate`: by frame count (constant rate) or by time (variable)."""
    if times is None:
        step = info.fps / rate
        return tuple(first + _round_half_up(step * i) for i in range(frames))
    end = times[-1] + float(1 / info.fps) / 2
    targets = [times[first] + float(i / rate) for i in range(frames)]
    return tuple(_nearest(times, target) if target <= end else len(times) for target in targets)


def select_span(
    *, info: VideoInfo, start: str | None, frames: int | None, stride: int | None = None,
    fps: float | None = None,
) -> Span:
    """Pick `frames` source frame indices from `start`, every `stride`-th or sampled at `fps`;
    frames None takes every frame to the end of the video that way.

    `start` "12" is frame 12; "1.5", "2." or "1.5s" are seconds (nearest frame); None is frame 0.
    """
    if frames is None:
        frames = _frames_to_the_end(info=info, start=start, stride=stride, fps=fps)
    if frames < 1:
        raise UsageError(f"frames must be at least 1, got {frames}")
    if stride is not None and fps is not None:
        raise UsageError("--stride and --fps cannot be used together; pick one")
    times = info.frame_times() if info.variable_rate else None
    first = _start_frame(start=start, fps=info.fps, times=times)
    if stride is not None:
        if stride < 1:
            raise UsageError(f"--stride must be at least 1, got {stride}")
        rate = info.fps / stride
        indices = tuple(first + stride * i for i in range(frames))
    else:
        rate = info.fps if fps is None else _sampling_rate(fps=fps, info=info)
        indices = _sampled_indices(first=first, frames=frames, rate=rate, info=info,
                                   times=times if fps is not None else None)
    if indices[-1] >= info.frame_count:
        raise InputError(
            f"{info.display_path}: the span needs {frames} frames from frame {first} up to frame {indices[-1]}, "
            f"but the video has only {info.frame_count} frames (0..{info.frame_count - 1})"
        )
    if times is None:
        return Span(indices=indices, fps=rate, start_time=float(first / info.fps), duration=float(frames / rate))
    if stride is not None or fps is not None:
        return Span(indices=indices, fps=rate, start_time=times[first], duration=float(frames / rate),
                    variable_rate=True)
    return _kept_timing(indices=indices, times=times, fps=info.fps)


def _frames_to_the_end(*, info: VideoInfo, start: str | None, stride: int | None, fps: float | None) -> int:
    """How many frames the span can hold from `start` to the last frame at this stride or rate."""
    times = info.frame_times() if info.variable_rate else None
    first = _start_frame(start=start, fps=info.fps, times=times)
    if first >= info.frame_count:
        raise InputError(f"{info.display_path}: --start is frame {first}, past its last frame {info.frame_count - 1}")
    if fps is None:
        return (info.frame_count - 1 - first) // (stride or 1) + 1
    rate = _sampling_rate(fps=fps, info=info)
    count = int((info.frame_count - first) * rate / info.fps) + 1
    while count > 1 and _sampled_indices(first=first, frames=count, rate=rate, info=info, times=times)[-1] \
            >= info.frame_count:
        count -= 1
    return count


def _kept_timing(*, indices: tuple[int, ...], times: Sequence[float], fps: Fraction) -> Span:
    """A contiguous span of a variable-rate source with its frames' own presentation times; the last
    frame lasts one average interval (1/fps), as write_video writes it, so video and audio match."""
    first = indices[0]
    stamps = tuple(times[index] - times[first] for index in indices)
    return Span(indices=indices, fps=fps, start_time=times[first], duration=stamps[-1] + float(1 / fps),
                timestamps=stamps, variable_rate=True)
