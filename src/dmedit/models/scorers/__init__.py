"""The models behind the paper's metrics (registry table `[scorers.NAME]`), one module per family.

A family module exposes a class with `load(*, path, device)` reading the entry's folder (which
holds config.json, as hub.resolve_weights requires) and a `build_tiny_*(*, path)` builder for
hub.BUILDERS. Each family plays one role in `model_metrics.score_with_models`:

| family | role | metrics |
| --- | --- | --- |
| clip | clip | text_align, frame_con |
| lpips | lpips | frame_lpips |
| efficientloftr | tracker | motion_fidelity |

Modules are imported lazily: the registry reads FAMILIES without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dmedit.core.errors import ModelError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from dmedit.core.config import ScorerEntry

FAMILIES = {
    "clip": "dmedit.models.scorers.clip:ClipScorer",
    "lpips": "dmedit.models.scorers.lpips:LpipsScorer",
    "efficientloftr": "dmedit.models.scorers.tracker:MatchTracker",
}
"""Scorer family -> "module:class" with a `load(*, path, device)` class method."""
ROLES = {"clip": "clip", "lpips": "lpips", "efficientloftr": "tracker"}
"""Scorer family -> the role it plays in score_with_models."""


def load_scorer(*, entry: "ScorerEntry", folder: "Path", device: "torch.device") -> Any:
    """Load a scorer entry's weights from `folder` (hub.resolve_weights found it) with its family's class."""
    if entry.family not in FAMILIES:
        raise ModelError(f"scorer {entry.name!r}: unknown family {entry.family!r} (known: {', '.join(FAMILIES)})")
    module_name, member = FAMILIES[entry.family].split(":")
    scorer_class = getattr(importlib.import_module(module_name), member)
    return scorer_class.load(path=folder, device=device)


def load_failure(*, path: "Path", what: str, error: BaseException) -> ModelError:
    """The one-line ModelError for a scorer folder that transformers/safetensors could not load."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    return ModelError(f"{path}: cannot load the {what}: {reason}")
