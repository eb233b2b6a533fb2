"""Extras: files and report keys that a layer above runs adds to every run it starts (`run --eval`'s
scores, by dmedit.evaluation). An extra implements `RunExtra`: it checks its own options at plan
time (the plan's one interface, runs.plan.PlanCheck) and gets the finished clip as plain data
(`FinishedClip`), never the run's internals. Light on purpose: no torch at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dmedit.core.config import ModelEntry
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import Registry
from dmedit.runs.settings import RunRequest

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)
class FinishedClip:
    """A run's written frames and what they are compared with, as plain data: source and edited
    (T,H,W,3) uint8 of one size (the model's with --out-size model), the edit region (T,H,W) bool
    (True = the object, grown by --feather) or None for the full frame, the mask's origin, the
    source frame indices, the target text, and where model-based scorers load (registry, device,
    the run's model cache)."""

    source: np.ndarray
    edited: np.ndarray
    mask: np.ndarray | None
    mask_origin: str
    indices: tuple[int, ...]
    target_text: str
    registry: Registry
    device: "torch.device"
    models: ModelCache


class RunExtra(Protocol):
    """Files and report keys a layer above runs adds to a run's bundle."""

    def check(self, *, request: RunRequest, entry: ModelEntry, registry: Registry, device: "torch.device") -> None:
        """At plan time, before any frame is decoded (runs.plan.PlanCheck): refuse what cannot work."""
        ...

    def write(self, *, clip: FinishedClip, folder: Path, output: Path) -> dict[str, Any]:
        """Write its files into the staging `folder` (named after `output`); return report keys."""
        ...
