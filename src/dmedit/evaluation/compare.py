"""What `dmedit eval` compares: which frames (EDITED's run report, --start/--frames, or the shorter
video), at which size, under which mask, read from the two videos into plain arrays (`Compared`).

Rules a user sees:
- Span: EDITED's run report (OUT.json beside OUT.mp4) names the source frames it edited; without
  one, --start/--frames select source frames as in `run` (default: as many as EDITED holds); with
  neither, the first frames of both, as many as the shorter video has. EDITED's frames are its
  own first frames, or the same frames when it is as long as the source.
- Size: a run written at the model's size (--out-size model) is compared with the source fitted
  the same way (the report's fit); a padded odd size is cropped back; otherwise an edit of
  another size with the same aspect ratio (within 2%) is resized to the source's size.
- Mask (True = the object): --mask as in `run`, else the mask the run kept beside EDITED
  (EDITED.masks/, written by `run` for a detected or file mask and named in its report's "masks"),
  else the run report's mask file; grown by the run's --feather (the composite's soft edge).
  Without one the outside-mask metrics use every pixel and say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from dmedit.core.errors import InputError, UsageError
from dmedit.masks.files import load_user_masks
from dmedit.masks.regions import feather_masks
from dmedit.media.fit import FitMapping, apply_fit, masks_to_model
from dmedit.media.spans import Span, select_span
from dmedit.media.video import VideoInfo, probe, read_frames, readable_input
from dmedit.models.scorers.choice import Scorers
from dmedit.runs.outputs import companion
from dmedit.runs.settings import MaskSettings, SpanSettings

ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class EvalRequest:
    """What `dmedit eval` was asked: the two videos, the target text (None: the run report's --tgt),
    the mask (None: the run report's; 'full'; or a mask file), the span flags, and the models."""

    source: Path
    edited: Path
    target_text: str | None = None
    mask: str | None = None
    start: str | None = None
    frames: int | Literal["all"] | str | None = None
    registry: Path | None = None
    device: str = "auto"
    scorers: Scorers = field(default_factory=Scorers)

    def __post_init__(self) -> None:
        span = SpanSettings(start=self.start, frames=self.frames)  # the same checks as `run`
        object.__setattr__(self, "frames", span.frames)
        if self.target_text is not None and not self.target_text.strip():
            raise UsageError("--tgt is empty: describe what the edit shows, e.g. --tgt 'a parrot'")


@dataclass(frozen=True, eq=False)
class Compared:
    """The frames compared: source and edited (F,H,W,3) uint8 of equal shape, the mask (F,H,W) bool
    (True = object) or None, the source frame indices, where the span came from ("report", "flags",
    "shorter"), the target text, and notes for the user."""

    source: np.ndarray
    edited: np.ndarray
    mask: np.ndarray | None
    indices: tuple[int, ...]
    span_from: str
    target_text: str | None = None
    mask_from: str = "none"
    notes: tuple[str, ...] = ()


def read_run_report(*, edited: Path) -> tuple[dict[str, Any] | None, str | None]:
    """EDITED's run report (OUT.json beside OUT.mp4) and a note when a file there is not one."""
    path = edited.with_name(f"{edited.stem}.json")
    if not path.is_file():
        return None, None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict) or not all(isinstance(report.get(key), dict) for key in ("span", "input")):
        return None, f"{path} is not a dmedit run report; ignored"
    return report, None


def _all_frames(*, info: VideoInfo, count: int | None = None):
    return select_span(info=info, start=None, frames=count or info.frame_count)


def _report_span(*, report: dict[str, Any], info: VideoInfo, edited: Path):
    facts = report["input"]
    if (facts["width"], facts["height"], facts["frame_count"]) != (info.width, info.height, info.frame_count):
        raise InputError(f"{edited}: its run report was made from a {facts['width']}x{facts['height']} video of "
                         f"{facts['frame_count']} frames ({facts.get('path')}), not {info.display_path}; "
                         "pass the source it was made from")
    span = report["span"]
    return Span(indices=tuple(int(i) for i in span["indices"]), fps=Fraction(span["fps"]),
                start_time=float(span["start_time"]), duration=float(span["duration"]))


def _spans(*, request: EvalRequest, report: dict | None, source: VideoInfo, edited: VideoInfo, notes: list):
    """(source span, edited span, where the source span came from)."""
    if report is not None:
        if request.start is not None or request.frames is not None:
            notes.append("--start/--frames ignored: EDITED's run report gives the span")
        span = _report_span(report=report, info=source, edited=request.edited)
        if edited.frame_count != len(span.indices):
            raise InputError(f"{request.edited}: has {edited.frame_count} frames, its run report "
                             f"{len(span.indices)}; the video or the report was changed")
        return span, _all_frames(info=edited), "report"
    if request.start is None and request.frames is None:
        count = min(source.frame_count, edited.frame_count)
        return _all_frames(info=source, count=count), _all_frames(info=edited, count=count), "shorter"
    whole = edited.frame_count == source.frame_count
    frames = None if request.frames == "all" else request.frames
    if frames is None and not whole:
        frames = min(edited.frame_count, len(select_span(info=source, start=request.start, frames=None).indices))
    span = select_span(info=source, start=request.start, frames=frames)
    if whole:
        return span, span, "flags"
    if len(span.indices) > edited.frame_count:
        raise InputError(f"{request.edited}: has {edited.frame_count} frames, fewer than the {len(span.indices)} "
                         "selected with --start/--frames")
    return span, _all_frames(info=edited, count=len(span.indices)), "flags"


def _fit_mapping(report: dict | None):
    """The report's fit when the run wrote model-size frames (--out-size model), else None."""
    if report is None or report.get("options", {}).get("output", {}).get("size") != "model":
        return None
    fit = report["fit"]
    return FitMapping(**{**fit, "source_box": tuple(fit["source_box"]), "model_box": tuple(fit["model_box"])})


def _same_size(*, source: np.ndarray, edited: np.ndarray, report: dict | None, path: Path, notes: list) -> np.ndarray:
    """Edited frames at the source frames' size (a padded odd size cropped back, else resized)."""
    height, width = source.shape[1:3]
    written = (report or {}).get("written", {})
    if written.get("padded") and edited.shape[1:3] != (height, width):
        edited = edited[:, : written["source_height"], : written["source_width"]]
    if edited.shape[1:3] == (height, width):
        return edited
    got_height, got_width = edited.shape[1:3]
    if abs(got_width * height - width * got_height) > ASPECT_TOLERANCE * width * got_height:
        raise InputError(f"{path}: is {got_width}x{got_height}, the source's span {width}x{height}; "
                         "videos of different aspect ratios cannot be compared")
    notes.append(f"{path} is {got_width}x{got_height}: resized to the source's {width}x{height}")
    interpolation = cv2.INTER_AREA if got_width > width else cv2.INTER_CUBIC
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in edited])


def _mask(*, request: EvalRequest, report: dict | None, indices: tuple[int, ...], shape: tuple[int, int, int],
          notes: list) -> tuple[np.ndarray | None, str]:
    """(F,H,W) bool at source size grown by the run's feather, and where it came from."""
    options = (report or {}).get("options", {}).get("mask", {})
    source, origin = request.mask, "--mask"
    kept = companion(output=request.edited, suffix=".masks")  # what `run` keeps (runs.bundle.kept_masks)
    if source is None and kept.is_dir() and (report is None or report.get("masks")):
        source, origin = str(kept), "the run's saved mask"
    elif source is None and report is not None:
        source, origin = options.get("source"), "the run report"
        if source is None:
            notes.append(f"the run's mask was detected and {kept} is not there: pass --mask (e.g. the OUT.masks "
                         "folder of `dmedit mask`) to score outside it; the outside-mask metrics use every pixel")
        elif source != "full" and not Path(source).exists():
            notes.append(f"the run report's mask {source} is gone; the outside-mask metrics use every pixel")
            source = None
    if source is None or source == "full":
        return None, "full" if source == "full" else "none"
    frames, height, width = shape
    masks = load_user_masks(path=Path(source), frames=frames, width=width, height=height, span_indices=indices)
    feather = float(options.get("feather", MaskSettings.feather))
    return feather_masks(masks=masks, pixels=feather) > 0, f"{origin}: {source}"


def load_compared(*, request: EvalRequest) -> Compared:
    """Read and align the frames `request` compares (see the module's rules); InputError/UsageError
    for videos or reports that do not go together."""
    notes: list[str] = []
    report, note = read_run_report(edited=request.edited)
    notes += [note] if note else []
    with readable_input(path=request.source) as source_path, \
            readable_input(path=request.edited) as edited_path:
        source_info = probe(path=source_path, shown_as=request.source)
        edited_info = probe(path=edited_path, shown_as=request.edited)
        source_span, edited_span, span_from = _spans(request=request, report=report, source=source_info,
                                                     edited=edited_info, notes=notes)
        source = read_frames(info=source_info, span=source_span)
        edited = read_frames(info=edited_info, span=edited_span)
    mask, mask_from = _mask(request=request, report=report, indices=source_span.indices, shape=source.shape[:3],
                            notes=notes)
    mapping = _fit_mapping(report)
    if mapping is not None and edited.shape[1:3] == (mapping.model_height, mapping.model_width):
        source = apply_fit(frames=source, mapping=mapping)
        mask = None if mask is None else masks_to_model(masks=mask.astype(np.float32), mapping=mapping) > 0
        notes.append("compared at the model's size (the run wrote --out-size model)")
    edited = _same_size(source=source, edited=edited, report=report, path=request.edited, notes=notes)
    target = request.target_text or (report or {}).get("options", {}).get("tgt")
    return Compared(source=source, edited=edited, mask=mask, indices=source_span.indices, span_from=span_from,
                    target_text=target, mask_from=mask_from, notes=tuple(notes))
