"""The plan of a run: what it knows before it decodes a frame (the input's probe, the registry entry
with its weights, the edit settings, the span, the device), after every subsystem that can refuse
the run cheaply has checked its own options through one small interface (`PlanCheck`).

The checks come from the caller (runs.pipeline.RUN_CHECKS: the cascade's and the engine levers';
and those of the bundle's extras, e.g. `run --eval`'s scorers, from the layer that adds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch

from dmedit.core.config import EditConfig, ModelEntry
from dmedit.core.console import Reporter
from dmedit.media.spans import Span, select_span
from dmedit.media.video import VideoInfo, probe
from dmedit.models.backends import resolve_device, resolve_dtype
from dmedit.models.hub import resolve_weights
from dmedit.models.registry import Registry, load_registry
from dmedit.runs.levers import resolve_windows
from dmedit.runs.outputs import companion
from dmedit.runs.settings import RunRequest, SpanSettings


class PlanCheck(Protocol):
    """A subsystem's check of its own options, before any frame is decoded or model loaded:
    raises a DmeditError (UsageError, ModelError) naming what to change."""

    def __call__(self, *, request: RunRequest, entry: ModelEntry, registry: Registry,
                 device: torch.device) -> None: ...


@dataclass(frozen=True)
class RunPlan:
    """What a run knows before it decodes a frame: the request, the resolved output, the input's
    probe, the span, the registry entry with its weights folder, the edit settings, the device."""

    request: RunRequest
    output: Path
    info: VideoInfo
    span: Span
    registry: Registry
    entry: ModelEntry
    weights: Path
    config: EditConfig
    device: torch.device
    dtype: torch.dtype

    @property
    def checkpoint_dir(self) -> Path:
        return companion(output=self.output, suffix=".run")


def span_of(*, info: VideoInfo, entry: ModelEntry, span: SpanSettings) -> Span:
    """The source frames the settings select (default: the entry's frame count)."""
    count = None if span.frames == "all" else (span.frames or entry.frames)
    return select_span(info=info, start=span.start, frames=count, stride=span.stride, fps=span.fps)


def plan_run(*, request: RunRequest, video: Path, output: Path, reporter: Reporter,
             checks: Sequence[PlanCheck] = ()) -> RunPlan:
    """Probe the input, then plan the model side (`plan_model`)."""
    with reporter.stage("probe"):
        info = probe(path=video, shown_as=request.video)
    with reporter.stage("plan"):
        return plan_model(request=request, info=info, output=output, reporter=reporter, checks=checks)


def plan_model(*, request: RunRequest, info: VideoInfo, output: Path, reporter: Reporter,
               checks: Sequence[PlanCheck] = ()) -> RunPlan:
    """The registry entry, the settings (defaults < entry < flags), the span, the device, every
    check in `checks` (in order), then the weights folder (built or located) and the dtype."""
    registry = load_registry(registry_file=request.model.registry)
    entry = registry.model(request.model.name)
    config = request.edit_config(entry=entry)
    span = span_of(info=info, entry=entry, span=request.span)
    config = resolve_windows(config=config, entry=entry, frames=len(span.indices), given=request.edit)
    device = resolve_device(name=request.model.device)
    for check in checks:
        check(request=request, entry=entry, registry=registry, device=device)
    weights = resolve_weights(entry=entry)
    dtype = resolve_dtype(name=request.model.dtype, device=device, entry=entry)
    reporter.line(f"span: {len(span.indices)} frames from {span.indices[0]} at {span.fps} fps ({span.duration:.3f}s)")
    return RunPlan(request=request, output=output, info=info, span=span, registry=registry, entry=entry,
                   weights=weights, config=config, device=device, dtype=dtype)
