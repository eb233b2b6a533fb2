"""`dmedit run` and `dmedit mask`: from a request to files on disk (docs/ARCHITECTURE.md).

The run flows one way: plan (probe, registry, settings, span, weights, device, every subsystem's
check: everything that can fail cheaply, before a frame is decoded) -> the source clip (frames and
the edit mask with its fit mapping) -> optimisation (or a cascade's keyframes and stages) -> the
output frames -> the bundle, written all at once at the end. Out of memory, anywhere in a run, is
mapped to exit 5 here and only here (`memory_failures`).
"""

from __future__ import annotations

import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from dmedit.core.console import Reporter
from dmedit.core.errors import OutOfMemoryError, UsageError
from dmedit.core.files import created_folders
from dmedit.masks.files import save_mask_pngs
from dmedit.masks.regions import draw_preview
from dmedit.media.video import check_output_path, probe, read_frames, readable_input, write_video
from dmedit.models.backends import resolve_device
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import load_registry
from dmedit.runs.bundle import output_frames, write_bundle
from dmedit.runs.cascade import check_cascade, edit_cascade
from dmedit.runs.clip import detect_objects, read_clip
from dmedit.runs.extras import RunExtra
from dmedit.runs.levers import check_levers
from dmedit.runs.optimise import Edited, optimise
from dmedit.runs.outputs import companion, is_complete, output_lock, remove_stale_partials, staged_bundle
from dmedit.runs.plan import RunPlan, plan_run, span_of
from dmedit.runs.settings import MaskRequest, RunRequest

MEMORY_ADVICE = "try --checkpointing block, fewer --frames, --offload or --vae-chunk 1"
RUN_CHECKS = (check_cascade, check_levers)
"""The runs layer's own plan checks (runs.plan.PlanCheck); each extra brings its own."""


def default_output(*, video: Path) -> Path:
    """IN.mp4 -> IN.dmedit.mp4 next to the input."""
    return video.with_name(f"{video.stem}.dmedit.mp4")


@contextmanager
def memory_failures(*, reporter: Reporter) -> Iterator[None]:
    """Out of memory (torch's, or a MemoryError from NumPy/OpenCV) -> OutOfMemoryError naming the stage."""
    try:
        yield
    except Exception as error:
        torch_oom = type(error).__name__ == "OutOfMemoryError" and type(error).__module__.startswith("torch")
        if not (torch_oom or isinstance(error, MemoryError)):
            raise
        where = f" during {reporter.current}" if reporter.current else ""
        raise OutOfMemoryError(f"out of memory{where}; {MEMORY_ADVICE}") from None


def run_edit(*, request: RunRequest, reporter: Reporter, models: ModelCache | None = None,
             extras: Sequence[RunExtra] = ()) -> Path | None:
    """The whole `dmedit run`; returns the output path (None when skipped). `models` keeps loaded
    models for later runs of this process (a batch); None loads them for this run alone. `extras`
    add their files and report keys to the bundle (e.g. `--eval`'s scores, dmedit.evaluation)."""
    output = request.output.path or default_output(video=request.video)
    if request.output.path is None and _is_stream(request.video):
        raise UsageError(f"{request.video} is a pipe or device; name the output with -o OUT.mp4")
    if request.output.skip_existing and output.exists():
        reporter.notice(f"{output}: exists, skipped (--skip-existing)")
        return None
    if request.resume and not request.output.overwrite and is_complete(output=output):
        reporter.notice(f"{output} is complete; nothing to resume (--overwrite runs it again)")
        return None
    models = models if models is not None else ModelCache()
    with memory_failures(reporter=reporter), readable_input(path=request.video) as video:
        overwrite = request.output.overwrite or request.resume
        check_output_path(output=output, inputs=[request.video, video], overwrite=overwrite)
        checkpoints = companion(output=output, suffix=".run")
        with created_folders(folder=output.parent, scratch=[checkpoints]), output_lock(output=output):
            remove_stale_partials(output=output)
            plan = plan_run(request=request, video=video, output=output, reporter=reporter,
                            checks=(*RUN_CHECKS, *(extra.check for extra in extras)))
            edited = _edit(plan=plan, reporter=reporter, models=models)
            with reporter.stage("composite"):
                frames = output_frames(edited=edited)
            with reporter.stage("write"):
                write_bundle(edited=edited, frames=frames, reporter=reporter, models=models, extras=extras)
            shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    return output


def _edit(*, plan: RunPlan, reporter: Reporter, models: ModelCache) -> Edited:
    """A cascade's keyframes and stages (runs.cascade), or the span optimised as one clip."""
    if plan.entry.stages:
        return edit_cascade(plan=plan, reporter=reporter, models=models)
    clip = read_clip(plan=plan, reporter=reporter, models=models)
    return optimise(plan=plan, clip=clip, reporter=reporter, models=models)


def _is_stream(path: Path) -> bool:
    """A pipe, FIFO or character device (no file name to derive an output name from)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _mask_outputs(*, request: MaskRequest) -> tuple[Path, Path]:
    base = request.output.path or request.video.with_suffix("")
    if base.suffix == ".mp4":
        base = base.with_suffix("")
    return base.with_name(f"{base.name}.mask.mp4"), base.with_name(f"{base.name}.masks")


def run_mask_preview(*, request: MaskRequest, reporter: Reporter) -> tuple[Path, Path]:
    """`dmedit mask`: detection only (no video model): OUT.mask.mp4 and OUT.masks/*.png (+ span.json),
    staged and renamed into place together (both or neither); a missing output folder is created."""
    preview, folder = _mask_outputs(request=request)
    with memory_failures(reporter=reporter), readable_input(path=request.video) as video:
        check_output_path(output=preview, inputs=[request.video, video], overwrite=request.output.overwrite)
        if folder.exists() and not request.output.overwrite:
            raise UsageError(f"{folder} exists; pass --overwrite to replace it")
        with created_folders(folder=preview.parent), output_lock(output=preview):
            remove_stale_partials(output=preview)
            info = probe(path=video, shown_as=request.video)
            registry = load_registry(registry_file=request.model.registry)
            entry = registry.model(request.model.name)
            span = span_of(info=info, entry=entry, span=request.span)
            device = resolve_device(name=request.model.device)
            with reporter.stage("read"):
                frames = read_frames(info=info, span=span)
            with reporter.stage("detect"):
                result = detect_objects(registry=registry, entry=entry, settings=request.mask,
                                        prompt=request.mask.prompt, frames=frames, device=device, models=ModelCache())
            reporter.release()
            with reporter.stage("write"), staged_bundle(output=preview) as staging:
                overlay = draw_preview(frames=frames, masks=result.masks, detections=result.detections)
                write_video(path=staging / preview.name, frames=overlay, fps=span.fps, crf=request.output.crf,
                            timestamps=span.timestamps)
                save_mask_pngs(masks=result.masks, folder=staging / folder.name, span=span.to_dict())
    return preview, folder
