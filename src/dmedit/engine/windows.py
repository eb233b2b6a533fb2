"""Temporal windows for clips longer than the model's window (issue 12), and the seam measure.

A clip of F latent frames is optimised as one x(θ); each step the U-Net sees windows of W frames
whose starts lie on a grid of stride S = W - overlap shifted by a random offset in [0, S) drawn
from the run's generator, plus windows pinned to the clip's first and last frame, so that every
frame is covered and no frame is always at a window's edge. Frames covered by several windows
get the mean of those windows' gradients (`coverage`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch



@dataclass(frozen=True)
class WindowPlan:
    """Windows of `length` frames over `frames` frames, `overlap` frames shared by neighbours on the
    base grid; `per_step`: how many windows a step visits (0 = all of them)."""

    frames: int
    length: int
    overlap: int
    per_step: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.length:
            raise ValueError(f"window length must be at least 1, got {self.length}")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"window overlap must be in [0, {self.length}), got {self.overlap}")

    @property
    def stride(self) -> int:
        return self.length - self.overlap

    @property
    def windowed(self) -> bool:
        """False when the whole clip fits one window (a step then draws no offset)."""
        return self.frames > self.length

    def starts(self, *, offset: int) -> list[int]:
        """First frames of the windows for a grid shifted by `offset` (0 <= offset < stride)."""
        if not self.windowed:
            return [0]
        last = self.frames - self.length
        grid = range(offset, last, self.stride)
        return sorted({0, last, *(start for start in grid if start > 0)})

    def coverage(self, *, starts: list[int]) -> torch.Tensor:
        """(F,) float32: how many of the windows starting at `starts` hold each frame."""
        counts = torch.zeros(self.frames)
        for start in starts:
            counts[start : start + self.length] += 1
        return counts

    def to_dict(self) -> dict:
        base = self.starts(offset=0)
        return {"frames": self.frames, "length": self.length, "overlap": self.overlap, "stride": self.stride,
                "per_step": self.per_step or len(base), "windows_on_base_grid": len(base),
                "base_grid_starts": base}


def draw_starts(*, plan: WindowPlan, generator: torch.Generator) -> list[int]:
    """This step's window starts: the grid offset, then (per_step > 0) a random subset, both drawn
    from `generator` (on any device). Draws nothing when the clip fits one window."""
    if not plan.windowed:
        return [0]
    device = generator.device
    offset = int(torch.randint(0, plan.stride, (1,), generator=generator, device=device))
    starts = plan.starts(offset=offset)
    if 0 < plan.per_step < len(starts):
        chosen = torch.randperm(len(starts), generator=generator, device=device)[: plan.per_step]
        starts = sorted(starts[int(index)] for index in chosen)
    return starts


def seam_measure(*, source: np.ndarray, edited: np.ndarray, masks: np.ndarray, plan: WindowPlan) -> dict:
    """How much the edit (edited − source) changes from one frame to the next inside the mask, at the
    base grid's window boundaries against elsewhere; a ratio near 1 means no visible seams.

    source/edited: (T,H,W,3) uint8 at the same size; masks: (T,H,W) in [0,1]; plan.frames == T.
    Frame pairs (f-1, f) where a base-grid window starts or ends at f are boundary pairs. Works one
    pair of frames at a time (a long clip at source size never sits in memory as floats).
    """
    per_pair = np.array([_edit_change(source=source, edited=edited, masks=masks, frame=frame)
                         for frame in range(1, plan.frames)])
    base = plan.starts(offset=0)
    edges = sorted({*base, *(start + plan.length for start in base)})
    boundary = [frame - 1 for frame in edges if 0 < frame < plan.frames]
    inside = [pair for pair in range(plan.frames - 1) if pair not in set(boundary)]
    at_boundaries = float(np.mean(per_pair[boundary])) if boundary else 0.0
    elsewhere = float(np.mean(per_pair[inside])) if inside else 0.0
    return {"boundary_pairs": [[pair, pair + 1] for pair in boundary], "change_at_boundaries": at_boundaries,
            "change_elsewhere": elsewhere, "ratio": at_boundaries / elsewhere if elsewhere > 0 else None}


def _edit_change(*, source: np.ndarray, edited: np.ndarray, masks: np.ndarray, frame: int) -> float:
    """Mean |edit(frame) − edit(frame − 1)| over the pixels both masks hold (weighted), in levels."""
    before, after = (edited[i].astype(np.float32) - source[i].astype(np.float32) for i in (frame - 1, frame))
    weight = np.minimum(np.clip(masks[frame - 1], 0, 1), np.clip(masks[frame], 0, 1))[..., None]
    area = float(weight.sum()) * 3
    return float((np.abs(after - before) * weight).sum() / area) if area > 0 else 0.0
