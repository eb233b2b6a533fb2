"""Edit masks: detector boxes -> per-frame binary masks, the EditMask that holds a run's mask in
every form it needs (source size, model size, latent grid, feathered), preview drawing.
User mask files (reading, checking, saving) live in `mask_files`.

Conventions
- A box is (x0, y0, x1, y1) in source pixels, continuous coordinates: pixel (row i, column j)
  is the unit square [j, j+1) x [i, i+1) with its centre at (j + 0.5, i + 0.5).
- A box covers the pixels whose centres lie inside it, half-open: x0 <= j + 0.5 < x1 and
  y0 <= i + 0.5 < y1. So (2, 3, 5, 7) covers columns 2..4 and rows 3..6, and two boxes sharing
  an edge never cover the same pixel twice.
- Masks are float32 arrays, 1 = edit, 0 = keep: (T,H,W) at source or model size, and
  (1,1,T,h,w) on the latent grid for the engine.
- Several boxes in a frame: the mask is their union. Where frames must be related (filling gaps,
  smoothing), boxes are paired by order of their centres when the frames hold the same number of
  boxes; otherwise each frame's boxes are replaced by their union box (a superset of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dmedit.core.errors import InputError, UsageError
from dmedit.media.fit import FitMapping, masks_to_model
from dmedit.models.backends.base import Box, BoxDetector, Detection

FrameBoxes = list[Box]

DEFAULT_DILATION = 0.05
PREVIEW_TINT = np.array([40, 220, 40], dtype=np.float32)
PREVIEW_ALPHA = 0.4
MASK_ORIGINS = ("detected", "full", "file")


@dataclass(frozen=True)
class MaskResult:
    """Detector masks: final boxes per frame (filled, smoothed, dilated), raw detections, (T,H,W) masks."""

    boxes: list[FrameBoxes]
    detections: list[list[Detection]]
    masks: np.ndarray
    best_score: float


@dataclass(frozen=True, eq=False)
class EditMask:
    """Where the edit may happen, in every form the run needs.

    source: (T,H,W) float32 in [0,1] at source size (dilated, not feathered); mapping: the
    fit.FitMapping between source and model frames; origin: "detected" | "full" | "file";
    detection: the MaskResult when detected, else None. Equality is identity (it holds arrays).
    """

    source: np.ndarray
    mapping: FitMapping
    origin: str
    detection: MaskResult | None = None

    def __post_init__(self) -> None:
        source = np.asarray(self.source, dtype=np.float32)
        expected = (self.mapping.source_height, self.mapping.source_width)
        if source.ndim != 3 or source.shape[1:] != expected or len(source) == 0:
            raise ValueError(f"source masks must be (T,{expected[0]},{expected[1]}) with T >= 1, got {source.shape}")
        if self.origin not in MASK_ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(MASK_ORIGINS)}, got {self.origin!r}")
        object.__setattr__(self, "source", source)

    def model(self) -> np.ndarray:
        """(T,h,w) float32 {0,1} at model size: 1 where any source pixel it covers is set; padding 0."""
        return (masks_to_model(masks=self.source, mapping=self.mapping) > 0).astype(np.float32)

    def latent(self, *, latent_height: int, latent_width: int) -> torch.Tensor:
        """(1,1,T,latent_height,latent_width) float32 {0,1}: the model-size mask on the latent grid."""
        return masks_to_latent_grid(masks=self.model(), latent_height=latent_height, latent_width=latent_width)

    def feathered(self, *, pixels: float) -> np.ndarray:
        """(T,H,W) float32 in [0,1] at source size, edges blurred by `pixels` (see feather_masks)."""
        return feather_masks(masks=self.source, pixels=pixels)

    def coverage(self) -> float:
        """Fraction of source pixels set (> 0), over all frames."""
        return float(np.count_nonzero(self.source > 0) / self.source.size)

    def outside_fraction(self) -> float:
        """Fraction of the set source pixels outside mapping.source_box (what a crop drops); 0.0 when empty."""
        selected = self.source > 0
        total = np.count_nonzero(selected)
        if total == 0:
            return 0.0
        x, y, box_width, box_height = self.mapping.source_box
        inside = np.count_nonzero(selected[:, y : y + box_height, x : x + box_width])
        return float((total - inside) / total)

    def to_dict(self) -> dict:
        """{"origin", "coverage", "outside_fraction", "frames"} for the run report."""
        return {
            "origin": self.origin,
            "coverage": round(self.coverage(), 6),
            "outside_fraction": round(self.outside_fraction(), 6),
            "frames": int(self.source.shape[0]),
        }


def mask_bounds(*, masks: np.ndarray) -> tuple[int, int, int, int] | None:
    """(T,H,W) masks -> (x, y, width, height) in pixels: the union bounding box of every set (> 0)
    pixel over all frames; None when no pixel is set."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (T,H,W), got {masks.shape}")
    covered = (masks > 0).any(axis=0)
    rows, columns = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        return None
    return (int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1))


def boxes_to_masks(*, boxes: Sequence[Sequence[Box]], width: int, height: int) -> np.ndarray:
    """Per-frame boxes (source px) -> (T,H,W) float32 {0,1}: the union of each frame's boxes, clipped."""
    masks = np.zeros((len(boxes), height, width), dtype=np.float32)
    for frame, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in frame_boxes:
            columns = slice(_first_covered(x0, width), _first_covered(x1, width))
            rows = slice(_first_covered(y0, height), _first_covered(y1, height))
            masks[frame, rows, columns] = 1.0
    return masks


def _first_covered(edge: float, size: int) -> int:
    """Index of the first pixel whose centre is at or after `edge`, clipped to [0, size]."""
    return int(min(max(np.ceil(edge - 0.5), 0), size))


def fill_missing_boxes(*, boxes: Sequence[Sequence[Box]]) -> list[FrameBoxes]:
    """Frames without boxes take boxes interpolated linearly between the nearest frames with boxes.

    Boxes are paired by centre order when both neighbours hold the same count, otherwise each
    neighbour contributes its union box. Before the first and after the last found frame the
    nearest found boxes are held. Raises ValueError when no frame has a box.
    """
    found = [index for index, frame_boxes in enumerate(boxes) if len(frame_boxes) > 0]
    if not found:
        raise ValueError("no frame has a box to fill the others from")
    filled: list[FrameBoxes] = []
    for index, frame_boxes in enumerate(boxes):
        if frame_boxes:
            filled.append([tuple(map(float, box)) for box in frame_boxes])
            continue
        before = max((f for f in found if f < index), default=None)
        after = min((f for f in found if f > index), default=None)
        if before is None or after is None:
            nearest = before if after is None else after
            filled.append([tuple(map(float, box)) for box in boxes[nearest]])
            continue
        start, end = _paired(boxes[before], boxes[after])
        weight = (index - before) / (after - before)
        filled.append([tuple(map(float, row)) for row in (1 - weight) * start + weight * end])
    return filled


def _paired(first: Sequence[Box], second: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
    """(N,4) arrays of corresponding boxes: sorted by centre when counts match, else union boxes."""
    if len(first) == len(second):
        return _sorted_by_centre(first), _sorted_by_centre(second)
    return _union_box(first)[None], _union_box(second)[None]


def _sorted_by_centre(boxes: Sequence[Box]) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres_x = array[:, 0] + array[:, 2]
    centres_y = array[:, 1] + array[:, 3]
    return array[np.lexsort((centres_y, centres_x))]


def _union_box(boxes: Sequence[Box]) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.array([array[:, 0].min(), array[:, 1].min(), array[:, 2].max(), array[:, 3].max()])


def smooth_boxes(*, boxes: Sequence[Sequence[Box]], window: int) -> list[FrameBoxes]:
    """Centred moving average of box coordinates over `window` frames (fewer at the clip's ends).

    Every frame must hold at least one box (run `fill_missing_boxes` first). When all frames hold
    the same number of boxes they are smoothed as tracks paired by centre order; otherwise each
    frame is reduced to its union box first. `window <= 1` returns the boxes unchanged.
    """
    if window <= 1:
        return [[tuple(map(float, box)) for box in frame_boxes] for frame_boxes in boxes]
    if any(len(frame_boxes) == 0 for frame_boxes in boxes):
        raise ValueError("smooth_boxes needs a box in every frame; fill the missing ones first")
    counts = {len(frame_boxes) for frame_boxes in boxes}
    if len(counts) == 1:
        tracks = np.stack([_sorted_by_centre(frame_boxes) for frame_boxes in boxes])
    else:
        tracks = np.stack([_union_box(frame_boxes)[None] for frame_boxes in boxes])
    cumulative = np.concatenate([np.zeros_like(tracks[:1]), np.cumsum(tracks, axis=0)])
    frames = len(tracks)
    smoothed = np.empty_like(tracks)
    for index in range(frames):
        low = max(0, index - (window - 1) // 2)
        high = min(frames, index + window // 2 + 1)
        smoothed[index] = (cumulative[high] - cumulative[low]) / (high - low)
    return [[tuple(map(float, row)) for row in frame_tracks] for frame_tracks in smoothed]


def dilate_boxes(
    *, boxes: Sequence[Sequence[Box]], pixels: float | None, width: int, height: int
) -> list[FrameBoxes]:
    """Grow every box on each side by `pixels`, or by 5% of its own width/height when None; clip to the frame."""
    if pixels is not None and pixels < 0:
        raise UsageError(f"mask dilation must not be negative, got {pixels}")
    dilated: list[FrameBoxes] = []
    for frame_boxes in boxes:
        grown = []
        for x0, y0, x1, y1 in frame_boxes:
            grow_x = DEFAULT_DILATION * (x1 - x0) if pixels is None else pixels
            grow_y = DEFAULT_DILATION * (y1 - y0) if pixels is None else pixels
            grown.append(
                (
                    float(max(x0 - grow_x, 0.0)),
                    float(max(y0 - grow_y, 0.0)),
                    float(min(x1 + grow_x, width)),
                    float(min(y1 + grow_y, height)),
                )
            )
        dilated.append(grown)
    return dilated


def feather_masks(*, masks: np.ndarray, pixels: float) -> np.ndarray:
    """(T,H,W) -> (T,H,W) float32 with edges blurred (Gaussian, sigma pixels/2, radius ceil(pixels)).

    Only pixels within `ceil(pixels)` of an edge change; the frame border is replicated, so a mask
    touching the border does not fade there. `pixels <= 0` returns the masks unchanged.
    """
    masks = np.asarray(masks, dtype=np.float32)
    if pixels <= 0:
        return masks.copy()
    size = 2 * int(np.ceil(pixels)) + 1
    blurred = np.stack(
        [
            cv2.GaussianBlur(mask, (size, size), sigmaX=pixels / 2, sigmaY=pixels / 2, borderType=cv2.BORDER_REPLICATE)
            for mask in masks
        ]
    )
    blurred[blurred < 1e-6] = 0.0
    blurred[blurred > 1 - 1e-6] = 1.0
    return blurred.astype(np.float32)


def full_masks(*, frames: int, width: int, height: int) -> np.ndarray:
    """(T,H,W) float32 ones: the whole frame is editable."""
    return np.ones((frames, height, width), dtype=np.float32)


def masks_to_latent_grid(*, masks: np.ndarray, latent_height: int, latent_width: int) -> torch.Tensor:
    """(T,h,w) model-size masks -> (1,1,T,lh,lw) float32 {0,1}: a latent cell is editable when any
    pixel it covers has a non-zero mask value (adaptive max pooling, exact for integer ratios)."""
    tensor = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    if tensor.ndim != 3:
        raise ValueError(f"masks must be (T,h,w), got {tuple(tensor.shape)}")
    pooled = F.adaptive_max_pool2d(tensor[:, None], (latent_height, latent_width))[:, 0]
    return (pooled > 0).to(torch.float32)[None, None]


def detect_masks(
    *,
    detector: BoxDetector,
    frames: np.ndarray,
    prompt: str,
    box_threshold: float,
    text_threshold: float,
    smooth: int,
    dilate: float | None,
) -> MaskResult:
    """(T,H,W,3) uint8 source frames -> boxes filled over gaps, smoothed, dilated, and (T,H,W) masks.

    Raises InputError when no frame finds the prompt, naming the best score seen.
    """
    run = detector.run(frames=frames, prompt=prompt, box_threshold=box_threshold, text_threshold=text_threshold)
    if not any(run.detections):
        raise InputError(
            f"no frame shows {prompt!r}: the best detection score {run.best_score:.3f} is not above "
            f"--box-threshold {box_threshold:g}; try a lower --box-threshold or --mask full"
        )
    height, width = frames.shape[1:3]
    boxes = fill_missing_boxes(boxes=[[d.box for d in frame] for frame in run.detections])
    boxes = smooth_boxes(boxes=boxes, window=smooth)
    boxes = dilate_boxes(boxes=boxes, pixels=dilate, width=width, height=height)
    masks = boxes_to_masks(boxes=boxes, width=width, height=height)
    return MaskResult(boxes=boxes, detections=run.detections, masks=masks, best_score=run.best_score)


def draw_preview(
    *, frames: np.ndarray, masks: np.ndarray, detections: Sequence[Sequence[Detection]] | None
) -> np.ndarray:
    """(T,H,W,3) uint8 frames + (T,H,W) masks -> (T,H,W,3) uint8: the mask tinted green, detector
    boxes outlined with "label score"."""
    weights = PREVIEW_ALPHA * np.clip(np.asarray(masks, dtype=np.float32), 0, 1)[..., None]
    tinted = frames.astype(np.float32) * (1 - weights) + PREVIEW_TINT * weights
    preview = np.ascontiguousarray(np.rint(tinted).astype(np.uint8))
    height, width = frames.shape[1:3]
    font_scale = max(0.3, min(height, width) / 500)
    thickness = 1 if min(height, width) < 400 else 2
    for frame_detections in detections or []:
        for detection in frame_detections:
            image = preview[detection.frame]
            x0, y0, x1, y1 = (int(round(v)) for v in detection.box)
            cv2.rectangle(image, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 200, 0), thickness)
            text = f"{detection.label} {detection.score:.2f}"
            (_, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            cv2.putText(
                image,
                text,
                (x0 + 1, y0 - 2 if y0 - 2 >= text_height else y0 + text_height + 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                (255, 255, 255),
                thickness,
                cv2.LINE_AA,
            )
    return preview
