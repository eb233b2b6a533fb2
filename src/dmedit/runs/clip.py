"""The source side of a planned run: its frames and its edit mask (detected, from the user's files,
or the full frame) with the fit mapping between source and model frames, and the notes a user
should read about them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmedit.core.config import ModelEntry
from dmedit.core.console import Reporter
from dmedit.masks.files import load_user_masks
from dmedit.masks.regions import EditMask, MaskResult, detect_masks, full_masks, mask_bounds
from dmedit.media.fit import fit_mapping
from dmedit.media.video import read_frames
from dmedit.models.hub import resolve_weights
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import Registry
from dmedit.runs.plan import RunPlan
from dmedit.runs.settings import MaskSettings


@dataclass(frozen=True, eq=False)
class SourceClip:
    """A planned run's source frames (T,H,W,3) uint8 at source size, its edit mask (with the fit
    mapping), and the notes about them (variable timing, mask outside the fit window)."""

    frames: np.ndarray
    mask: EditMask
    notes: tuple[str, ...] = ()


def detect_objects(*, registry: Registry, entry: ModelEntry, settings: MaskSettings, prompt: str,
                   frames: np.ndarray, device: torch.device, models: ModelCache) -> MaskResult:
    """Masks of `prompt` at source size from the settings' detector (default: the entry's)."""
    detector_entry = registry.detector(settings.detector or entry.detector)
    detector = models.detector(entry=detector_entry, folder=resolve_weights(entry=detector_entry), device=device)
    threshold = {"box_threshold": settings.box_threshold, "text_threshold": settings.text_threshold}
    for name, value in threshold.items():
        threshold[name] = getattr(detector_entry, name) if value is None else value
    return detect_masks(detector=detector, frames=frames, prompt=prompt, smooth=settings.smooth,
                        dilate=settings.dilate, **threshold)


def edit_mask(*, plan: RunPlan, source: np.ndarray, models: ModelCache) -> EditMask:
    """Detected, user or full masks at source size, and the fit mapping (a crop holds the mask)."""
    settings, (count, height, width) = plan.request.mask, source.shape[:3]
    detection, origin = None, "full"
    if settings.source == "full" or not plan.config.use_mask:
        masks = full_masks(frames=count, width=width, height=height)
    elif settings.source is not None:
        origin = "file"
        masks = load_user_masks(path=Path(settings.source), frames=count, width=width, height=height,
                                span_indices=plan.span.indices)
    else:
        origin = "detected"
        detection = detect_objects(registry=plan.registry, entry=plan.entry, settings=settings, models=models,
                                   prompt=plan.request.detection_prompt, frames=source, device=plan.device)
        masks = detection.masks
    focus = None if origin == "full" else mask_bounds(masks=masks)
    mapping = fit_mapping(mode=plan.request.span.fit, source_width=width, source_height=height,
                          width=plan.entry.width, height=plan.entry.height, focus=focus)
    return EditMask(source=masks, mapping=mapping, origin=origin, detection=detection)


def read_clip(*, plan: RunPlan, reporter: Reporter, models: ModelCache) -> SourceClip:
    """Decode the span and make its edit mask; every note is also a warning on stderr."""
    with reporter.stage("read"):
        source = read_frames(info=plan.info, span=plan.span)
    with reporter.stage("masks"):
        mask = edit_mask(plan=plan, source=source, models=models)
    notes = [plan.span.timing_note] if plan.span.timing_note else []
    outside = mask.outside_fraction() if mask.origin != "full" else 0.0
    if outside > 0:
        box = mask.mapping.source_box
        notes.append(f"{outside:.1%} of the mask lies outside the {mask.mapping.mode} window "
                     f"(source x={box[0]}..{box[0] + box[2]}, y={box[1]}..{box[1] + box[3]}) and is "
                     "not edited; --fit pad edits the whole frame")
    for note in notes:
        reporter.warn(note)
    return SourceClip(frames=source, mask=mask, notes=tuple(notes))
