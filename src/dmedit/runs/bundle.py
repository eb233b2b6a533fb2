"""What a finished edit writes: the output frames (back at source size, composited under the
feathered mask), then every file of the bundle in a staging folder (compare video, loss plot, the
mask the run used as OUT.masks/, the source span OUT.source.mp4, the MP4, the extras' files
(runs.extras), the report, then the page OUT.html (runs.page) from the report), renamed into place
together (runs.outputs.staged_bundle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dmedit.core.console import Reporter
from dmedit.core.files import write_json
from dmedit.engine.windows import seam_measure
from dmedit.masks.files import save_mask_pngs
from dmedit.masks.regions import draw_preview
from dmedit.media.fit import apply_fit, composite, from_model_frames, masks_to_model, side_by_side, tensor_to_frames
from dmedit.media.video import write_video
from dmedit.models.model_cache import ModelCache
from dmedit.runs.extras import FinishedClip, RunExtra
from dmedit.runs.optimise import Edited
from dmedit.runs.outputs import companion, staged_bundle
from dmedit.runs.page import write_run_page
from dmedit.runs.report import plot_losses, run_report


def output_frames(*, edited: Edited) -> np.ndarray:
    """The frames to write (T,H,W,3) uint8: the model's, or at source size composited under the mask."""
    settings, clip = edited.plan.request.output, edited.clip
    frames = tensor_to_frames(tensor=edited.result.frames)
    if settings.size == "model":
        return frames
    frames = from_model_frames(frames=frames, mapping=clip.mask.mapping, source=clip.frames)
    if not settings.composite:
        return frames
    return composite(source=clip.frames, edited=frames, masks=clip.mask.feathered(pixels=edited.plan.request.mask.feather))


def at_written_size(*, edited: Edited, images: np.ndarray) -> np.ndarray:
    """Source-sized images (T,H,W,3) at the size of the written frames (fitted with --out-size model)."""
    if edited.plan.request.output.size == "model":
        return apply_fit(frames=images, mapping=edited.clip.mask.mapping)
    return images


def compare_frames(*, edited: Edited, frames: np.ndarray) -> np.ndarray:
    """source | mask overlay | edited, at the size of the written frames."""
    clip = edited.clip
    detections = clip.mask.detection.detections if clip.mask.detection is not None else None
    overlay = draw_preview(frames=clip.frames, masks=clip.mask.source, detections=detections)
    source, overlay = (at_written_size(edited=edited, images=images) for images in (clip.frames, overlay))
    return side_by_side(panels=[source, overlay, frames])


def finished_clip(*, edited: Edited, frames: np.ndarray, models: ModelCache) -> FinishedClip:
    """The written frames beside the source frames (fitted like them) under the feathered mask."""
    plan, clip = edited.plan, edited.clip
    source, mask = clip.frames, None
    if clip.mask.origin != "full":
        mask = clip.mask.feathered(pixels=plan.request.mask.feather) > 0
    if frames.shape != source.shape:  # --out-size model
        source = apply_fit(frames=source, mapping=clip.mask.mapping)
        mask = None if mask is None else masks_to_model(masks=mask.astype(np.float32), mapping=clip.mask.mapping) > 0
    return FinishedClip(source=source, edited=frames, mask=mask, mask_origin=clip.mask.origin,
                        indices=plan.span.indices, target_text=plan.request.tgt, registry=plan.registry,
                        device=plan.device, models=models)


def seams(*, edited: Edited, frames: np.ndarray) -> dict[str, Any]:
    """The seam measure of a windowed run (engine.windows.seam_measure) at the written size."""
    clip = edited.clip
    source, masks = clip.frames, clip.mask.source
    if frames.shape != source.shape:  # --out-size model
        source, masks = apply_fit(frames=source, mapping=clip.mask.mapping), clip.mask.model()
    return seam_measure(source=source, edited=frames, masks=masks, plan=edited.result.windows)


def seams_note(measure: dict[str, Any]) -> str:
    ratio = measure["ratio"]
    figure = "no edit to measure" if ratio is None else f"{ratio:.2f}"
    return f"seams: the edit changes {figure} times as much across window boundaries as elsewhere (1 = seamless)"


def kept_masks(*, edited: Edited) -> tuple[Path | None, bool]:
    """(OUT.masks/, the folder keeping the mask the run used in the form `--mask DIR` reads, or None
    for --mask full; whether the bundle writes it): not written when the run's --mask is that
    folder (it holds the mask already) or lies inside it (an input is never replaced)."""
    if edited.clip.mask.origin == "full":
        return None, False
    folder = companion(output=edited.plan.output, suffix=".masks")
    source = edited.plan.request.mask.source
    if source is None or edited.clip.mask.origin != "file":
        return folder, True
    given = Path(source).resolve()
    if given == folder.resolve():
        return folder, False
    return (None, False) if given.is_relative_to(folder.resolve()) else (folder, True)


def write_bundle(*, edited: Edited, frames: np.ndarray, reporter: Reporter, models: ModelCache,
                 extras: Sequence[RunExtra] = ()) -> None:
    """Every file in a staging folder (compare, plot, MP4, extras, then the report with the full
    timings), renamed into place together at the end (outputs.staged_bundle)."""
    plan, settings = edited.plan, edited.plan.request.output
    has_audio = settings.audio and plan.info.has_audio
    audio = dict(audio_source=plan.info.path if has_audio else None, audio_start=plan.span.start_time,
                 audio_duration=plan.span.duration, crf=settings.crf, fps=plan.span.fps,
                 timestamps=plan.span.timestamps)
    notes = list(edited.notes)
    with staged_bundle(output=plan.output) as folder:
        if settings.compare:
            compare = companion(output=plan.output, suffix=".compare.mp4")
            write_video(path=folder / compare.name, frames=compare_frames(edited=edited, frames=frames), **audio)
        if settings.plot:
            plot_losses(path=folder / companion(output=plan.output, suffix=".loss.png").name,
                        history=edited.result.history)
        masks, write_masks = kept_masks(edited=edited)
        if write_masks:
            save_mask_pngs(masks=edited.clip.mask.source, folder=folder / masks.name, span=plan.span.to_dict())
        if settings.html:  # the source span the page plays beside the edit: its frames, size and timing
            write_video(path=folder / companion(output=plan.output, suffix=".source.mp4").name,
                        frames=at_written_size(edited=edited, images=edited.clip.frames),
                        **audio | {"audio_source": None})
        written = write_video(path=folder / plan.output.name, frames=frames, **audio)
        if written.note:
            notes.append(written.note)
            reporter.warn(written.note)
        measure = seams(edited=edited, frames=frames) if edited.result.windows.windowed else None
        if measure is not None:
            notes.append(seams_note(measure))
        report = run_report(edited=dataclasses.replace(edited, notes=tuple(notes)), written=written, timings=reporter.timings_so_far(),
                            seams=measure) | {"masks": None if masks is None else str(masks)}
        clip = finished_clip(edited=edited, frames=frames, models=models) if extras else None
        for extra in extras:
            report |= extra.write(clip=clip, folder=folder, output=plan.output)
        write_json(path=folder / companion(output=plan.output, suffix=".json").name, data=report)
        if settings.html:
            write_run_page(folder=folder, output=plan.output, report=report)

