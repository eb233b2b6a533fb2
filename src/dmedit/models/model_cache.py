"""Loaded models kept for the next run of the same process (`dmedit batch` runs many jobs per
worker): a video backend or a detector is loaded once per (entry, weights folder, device, dtype,
loading options) and handed out again. A single `dmedit run` uses a fresh cache.

Backends are frozen and stateless across runs (the editor keeps every run's state in its own
session), so sharing one between runs of the same process is safe; runs share a cache one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable

from dmedit.core.config import DetectorEntry, ModelEntry, ScorerEntry
from dmedit.models.backends import load_backend, load_detector
from dmedit.models.scorers import load_scorer

if TYPE_CHECKING:  # torch is imported when a model loads, not with the registry
    import torch

    from dmedit.models.backends.base import BoxDetector, VideoBackend


@dataclass
class ModelCache:
    """Loaded video backends, detectors and metric scorers by what identifies them; `loads` counts real loads."""

    loaded: dict[Hashable, Any] = field(default_factory=dict)
    loads: int = 0

    def _get(self, *, key: Hashable, load: Callable[[], Any]) -> Any:
        if key not in self.loaded:
            self.loaded[key] = load()
            self.loads += 1
        return self.loaded[key]

    def backend(
        self, *, entry: ModelEntry, folder: Path, device: "torch.device", dtype: "torch.dtype", vae_chunk: int,
        offload: bool,
    ) -> "VideoBackend":
        """The entry's video backend from `folder` (backends.load_backend), loaded once."""
        key = ("video", entry.name, entry.family, entry.variant, entry.vae_fp32, str(folder), str(device), str(dtype),
               vae_chunk, offload)
        return self._get(key=key, load=lambda: load_backend(entry=entry, folder=folder, device=device, dtype=dtype,
                                                           vae_chunk=vae_chunk, offload=offload))

    def detector(self, *, entry: DetectorEntry, folder: Path, device: "torch.device") -> "BoxDetector":
        """The detector entry's model from `folder` (backends.load_detector), loaded once."""
        key = ("detector", entry.name, entry.family, str(folder), str(device))
        return self._get(key=key, load=lambda: load_detector(entry=entry, folder=folder, device=device))

    def scorer(self, *, entry: ScorerEntry, folder: Path, device: "torch.device") -> Any:
        """The scorer entry's model (CLIP, LPIPS, tracker) from `folder` (scorers.load_scorer), loaded once."""
        key = ("scorer", entry.name, entry.family, str(folder), str(device))
        return self._get(key=key, load=lambda: load_scorer(entry=entry, folder=folder, device=device))

    def clear(self) -> None:
        """Drop every loaded model (their memory is freed once nothing else holds them)."""
        self.loaded.clear()
