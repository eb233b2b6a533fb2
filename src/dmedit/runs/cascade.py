"""Cascaded models (Show-1): the keyframes are edited, then the cascade's later stages run unchanged.

`dmedit run --model show1` (an entry with `stages`, backends.CASCADES); `check_cascade` refuses at
plan time what cannot run (a stage entry, cascade options for another model, a stage whose weights
are not on this machine), then `edit_cascade` goes:

    keyframe plan: the keyframe size (--keyframe-size, else the entry's width/height), the
        editor's temporal windows off (it sees KEYFRAMES frames, one window)
    the source clip of the whole span (source frames, masks at source size, the fit mapping at the
        keyframe size) -> KEYFRAMES keyframes sampled evenly from the span
    the optimisation stage (runs.optimise, the engine unchanged, on the keyframe U-Net in pixel
        space) with its own ModelCache, so the keyframe backend is freed before the stages
    the stages up to --stop-after (interpolation, sr1, sr2), each loaded when it runs and freed
        after it; each is a reporter stage (time in the report's timings) and a record in the
        report's `stages` (frames, size, seconds)
    the output: the source frames and masks under the output frames (spread evenly over the span),
        the span's duration kept (29 frames play over the span's time), and the fit mapping scaled
        to the output size, so compositing, the compare video and the report work as for any run.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction

import numpy as np
import torch

from dmedit.core.config import ModelEntry
from dmedit.core.console import Reporter
from dmedit.core.errors import ModelError, UsageError
from dmedit.masks.regions import EditMask
from dmedit.media.fit import FitMapping
from dmedit.media.spans import Span
from dmedit.models.backends import STAGE_FAMILIES, load_stage, resolve_dtype
from dmedit.models.backends.show1 import free_memory
from dmedit.models.backends.show1_stages import StagePrompt
from dmedit.models.hub import hub_cache_dir, local_model_dir, resolve_weights
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import Registry
from dmedit.runs.clip import SourceClip, read_clip
from dmedit.runs.optimise import Edited, optimise, video_backend
from dmedit.runs.plan import RunPlan
from dmedit.runs.settings import RunRequest

KEYFRAMES = 8
"""Keyframes Show-1 generates and its interpolation stage expects (8 -> 29 frames)."""
STAGE_NAMES = {"show1_interpolation": "interpolation", "show1_sr1": "sr1", "show1_sr2": "sr2"}
"""Stage family -> its name in --stop-after, the progress lines and the report."""


def stages_to_run(*, entry: ModelEntry, registry: Registry, stop_after: str | None) -> list[ModelEntry]:
    """The cascade's stage entries up to and including `stop_after` ("keyframes": none; None: all)."""
    stages = [registry.model(name) for name in entry.stages]
    names = [STAGE_NAMES[stage.family] for stage in stages]
    if stop_after is None:
        return stages
    if stop_after == "keyframes":
        return []
    if stop_after not in names:
        raise UsageError(f"--stop-after {stop_after}: model {entry.name!r} has the stages keyframes, "
                         f"{', '.join(names)}")
    return stages[: names.index(stop_after) + 1]


def check_cascade(*, request: RunRequest, entry: ModelEntry, registry: Registry, device: torch.device) -> None:
    """The plan's check of a cascade (runs.plan.PlanCheck): a stage entry is not a model to edit
    with and the cascade settings need a cascade (UsageError); a ModelError names every stage the
    run needs that is not on this machine and how to get them, or names `dmedit models convert` for a
    stage whose weights are still pickles."""
    if entry.family in STAGE_FAMILIES:
        users = [name for name, model in registry.models.items() if entry.name in model.stages]
        hint = f"run its cascade: --model {users[0]}" if users else "run the cascade that lists it in `stages`"
        raise UsageError(f"model {entry.name!r} is a stage of a cascade ({entry.family}), not a model to edit; {hint}")
    if not entry.stages:
        if request.cascade.given:
            raise UsageError(f"--keyframe-size and --stop-after apply to cascaded models (show1); "
                             f"model {entry.name!r} is not one")
        return
    needed = [entry, *stages_to_run(entry=entry, registry=registry, stop_after=request.cascade.stop_after)]
    missing = [stage for stage in needed if local_model_dir(entry=stage) is None]
    if missing:
        listed = ", ".join(f"{stage.name} ({_source(stage)})" for stage in missing)
        raise ModelError(
            f"model '{entry.name}' is not on this machine: missing {listed}. Run `dmedit models pull {entry.name}` "
            f"on a connected machine (it pulls every stage; copy the Hugging Face cache {hub_cache_dir()} here if "
            "it is another one), or set `path` for each missing entry in a registry file (--registry FILE).")
    for stage in needed[1:]:  # the plan resolves the edited entry itself
        resolve_weights(entry=stage)  # pickle-only weights: the convert line before the keyframes run


def _source(entry: ModelEntry) -> str:
    return entry.path or f"{entry.repo}@{entry.revision or 'main'}"


def spread(*, frames: int, count: int) -> list[int]:
    """`count` positions spread evenly over `frames` (first and last included), rounded half up."""
    if count == 1:
        return [0]
    return [(2 * j * (frames - 1) + count - 1) // (2 * (count - 1)) for j in range(count)]


def output_span(*, span: Span, positions: list[int]) -> Span:
    """The span of `len(positions)` output frames over the source frames at `positions` (span
    positions): the same start and duration, at a constant rate of len(positions) per duration."""
    count = len(positions)
    fps = Fraction(span.fps) * count / len(span.indices)
    if span.timestamps is not None:
        fps = Fraction(count / span.duration).limit_denominator(90_000)
    return dataclasses.replace(span, indices=tuple(span.indices[p] for p in positions), fps=fps, timestamps=None)


def scaled_mapping(*, mapping: FitMapping, width: int, height: int) -> FitMapping:
    """The fit mapping with its model frame scaled to width x height (the stages' output size)."""
    sx, sy = width / mapping.model_width, height / mapping.model_height
    x, y, box_width, box_height = mapping.model_box
    box = (round(x * sx), round(y * sy), max(1, round(box_width * sx)), max(1, round(box_height * sy)))
    return dataclasses.replace(mapping, model_width=width, model_height=height, model_box=box)


def select_frames(*, mask: EditMask, positions: list[int], mapping: FitMapping | None = None) -> EditMask:
    """The edit mask of the frames at `positions` (with their detections), optionally another mapping."""
    detection = mask.detection
    if detection is not None:
        detection = dataclasses.replace(detection, boxes=[detection.boxes[p] for p in positions],
                                        detections=[detection.detections[p] for p in positions],
                                        masks=detection.masks[positions])
    return dataclasses.replace(mask, source=mask.source[positions], mapping=mapping or mask.mapping,
                               detection=detection)


def keyframe_plan(*, plan: RunPlan) -> RunPlan:
    """The plan at the keyframe size, without temporal windows; UsageError for a span too short."""
    request, entry = plan.request, plan.entry
    if len(plan.span.indices) < KEYFRAMES:
        raise UsageError(f"model {entry.name!r} edits {KEYFRAMES} keyframes sampled from the span, which has "
                         f"{len(plan.span.indices)} frames; choose --frames {KEYFRAMES} or more")
    if request.edit.window is not None:
        raise UsageError(f"--window does not apply to model {entry.name!r}: its editor sees {KEYFRAMES} keyframes")
    height, width = request.cascade.size or (entry.height, entry.width)
    return dataclasses.replace(plan, entry=dataclasses.replace(entry, height=height, width=width),
                               config=dataclasses.replace(plan.config, window=0, window_overlap=0))


def select_clip(*, clip: SourceClip, positions: list[int], mapping: FitMapping | None = None) -> SourceClip:
    """The clip's frames at `positions` with their masks (and detections), optionally another mapping."""
    return dataclasses.replace(clip, frames=clip.frames[positions],
                               mask=select_frames(mask=clip.mask, positions=positions, mapping=mapping))


def edit_cascade(*, plan: RunPlan, reporter: Reporter, models: ModelCache) -> Edited:
    """Edit the keyframes and run the stages (module docstring) -> the edit whose frames
    (F_out,3,H,W) are the last stage's, over the source frames and span under them. `models` keeps
    the detector; the keyframe model has a cache of its own, emptied before the stages load."""
    plan = keyframe_plan(plan=plan)
    stages = stages_to_run(entry=plan.entry, registry=plan.registry, stop_after=plan.request.cascade.stop_after)
    keyframe_models = ModelCache()
    clip = read_clip(plan=plan, reporter=reporter, models=models)
    keys = spread(frames=len(clip.frames), count=KEYFRAMES)
    reporter.line(f"keyframes: {KEYFRAMES} of the span's {len(clip.frames)} frames (positions "
                  f"{', '.join(map(str, keys))}) at {plan.entry.height}x{plan.entry.width}")
    keyframes = optimise(plan=plan, clip=select_clip(clip=clip, positions=keys), reporter=reporter,
                         models=keyframe_models)
    prompt = StagePrompt(text=plan.request.tgt)
    if stages:
        backend = video_backend(plan=plan, models=keyframe_models)
        prompt = StagePrompt(text=plan.request.tgt, embeddings=backend.encode_prompts(prompts=["", plan.request.tgt]))
        del backend
    keyframe_models.clear()
    free_memory(device=plan.device)
    frames, records = run_stages(plan=plan, stages=stages, frames=keyframes.result.frames, prompt=prompt,
                                 reporter=reporter)
    positions = spread(frames=len(clip.frames), count=len(frames))
    mapping = scaled_mapping(mapping=clip.mask.mapping, width=frames.shape[3], height=frames.shape[2])
    return dataclasses.replace(
        keyframes, plan=dataclasses.replace(plan, span=output_span(span=plan.span, positions=positions)),
        clip=select_clip(clip=clip, positions=positions, mapping=mapping),
        result=dataclasses.replace(keyframes.result, frames=frames),
        stages=(_record(name="keyframes", entry=plan.entry, frames=keyframes.result.frames, seconds=None), *records))


def run_stages(*, plan: RunPlan, stages: list[ModelEntry], frames: torch.Tensor, prompt: StagePrompt,
               reporter: Reporter) -> tuple[torch.Tensor, list[dict]]:
    """Each stage loaded, run on the frames so far and freed -> (the last frames, the stage records)."""
    records = []
    for entry in stages:
        name = STAGE_NAMES[entry.family]
        started = time.perf_counter()
        with reporter.stage(name):
            dtype = resolve_dtype(name=plan.request.model.dtype, device=plan.device, entry=entry)
            stage = load_stage(entry=entry, folder=resolve_weights(entry=entry), device=plan.device, dtype=dtype)
            frames = stage.run(frames=frames, prompt=prompt, seed=plan.config.seed)
            del stage
            free_memory(device=plan.device)
        if not bool(np.isfinite(frames.numpy()).all()):
            raise ModelError(f"the {name} stage ({entry.name}) produced NaN/inf frames; nothing was written "
                             "(try --dtype fp32)")
        records.append(_record(name=name, entry=entry, frames=frames, seconds=time.perf_counter() - started))
    return frames, records


def _record(*, name: str, entry: ModelEntry, frames: torch.Tensor, seconds: float | None) -> dict:
    """One stage in the report: its name, entry, output frames and size, and seconds (None: the editor's)."""
    return {"stage": name, "model": entry.name, "frames": int(frames.shape[0]), "height": int(frames.shape[2]),
            "width": int(frames.shape[3]), "seconds": None if seconds is None else round(seconds, 3)}
