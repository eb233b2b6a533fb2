"""`dmedit run` and `dmedit mask`: from a request to files on disk (docs/ARCHITECTURE.md).

The run flows one way: plan (probe, registry, settings, span, weights, device: everything that
can fail cheaply, before a frame is decoded) -> context (source frames and the edit mask with its
fit mapping) -> optimisation -> output frames -> the bundle, written all at once at the end.
Out of memory, anywhere in a run, is mapped to exit 5 here and only here (`_memory_failures`).
"""

from __future__ import annotations

import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from dmedit.media import video as videos
from dmedit.core.config import EditConfig, ModelEntry
from dmedit.core.console import Reporter
from dmedit.core.errors import OutOfMemoryError, UsageError
from dmedit.models.model_cache import ModelCache
from dmedit.runs.outputs import companion, output_lock, remove_stale_partials, staged_bundle
from dmedit.runs.settings import MaskRequest, MaskSettings, RunRequest, SpanSettings

if TYPE_CHECKING:
    import torch

    from dmedit.engine.editor import EditResult
    from dmedit.masks.regions import EditMask, MaskResult
    from dmedit.models.registry import Registry
    from dmedit.media.video import Span, VideoInfo

MEMORY_ADVICE = "try --checkpointing block, fewer --frames, --offload or --vae-chunk 1"


def default_output(*, video: Path) -> Path:
    """IN.mp4 -> IN.dmedit.mp4 next to the input."""
    return video.with_name(f"{video.stem}.dmedit.mp4")


@dataclass(frozen=True)
class RunPlan:
    """What a run knows before it decodes a frame: the request, the resolved output, the input's
    probe, the span, the registry entry with its weights folder, the edit settings, the device."""

    request: RunRequest
    output: Path
    info: "VideoInfo"
    span: "Span"
    registry: "Registry"
    entry: ModelEntry
    weights: Path
    config: EditConfig
    device: "torch.device"
    dtype: "torch.dtype"
    models: ModelCache

    @property
    def checkpoint_dir(self) -> Path:
        return companion(output=self.output, suffix=".run")


@dataclass(frozen=True)
class RunContext:
    """A planned run with its source frames (T,H,W,3) uint8 and its edit mask (with the fit mapping);
    stages: a cascade's stage records for the report (cascade.py); speed: the compile and
    checkpointing choices of its optimisation, for the report."""

    plan: RunPlan
    source: np.ndarray
    mask: "EditMask"
    notes: list[str] = field(default_factory=list)
    seams: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _memory_failures(*, reporter: Reporter) -> Iterator[None]:
    """Out of memory (torch's, or a MemoryError from NumPy/OpenCV) -> OutOfMemoryError naming the stage."""
    try:
        yield
    except Exception as error:
        torch_oom = type(error).__name__ == "OutOfMemoryError" and type(error).__module__.startswith("torch")
        if not (torch_oom or isinstance(error, MemoryError)):
            raise
        where = f" during {reporter.current}" if reporter.current else ""
        raise OutOfMemoryError(f"out of memory{where}; {MEMORY_ADVICE}") from None


def run_edit(*, request: RunRequest, reporter: Reporter, models: ModelCache | None = None) -> Path | None:
    """The whole `dmedit run`; returns the output path (None when skipped). `models` keeps loaded
    models for later runs of this process (a batch); None loads them for this run alone."""
    output = request.output.path or default_output(video=request.video)
    if request.output.path is None and _is_stream(request.video):
        raise UsageError(f"{request.video} is a pipe or device; name the output with -o OUT.mp4")
    if request.output.skip_existing and output.exists():
        reporter.notice(f"{output}: exists, skipped (--skip-existing)")
        return None
    with _memory_failures(reporter=reporter), videos.readable_input(path=request.video) as video:
        overwrite = request.output.overwrite or request.resume
        videos.check_output_path(output=output, inputs=[request.video, video], overwrite=overwrite)
        with output_lock(output=output):
            remove_stale_partials(output=output)
            plan = _plan(request=request, video=video, output=output, reporter=reporter,
                         models=models if models is not None else ModelCache())
            if plan.entry.stages:
                from dmedit.runs.cascade import run_cascade

                run, result = run_cascade(plan=plan, reporter=reporter, context=_context, optimise=_optimise)
            else:
                run = _context(plan=plan, reporter=reporter)
                result = _optimise(run=run, reporter=reporter)
            with reporter.stage("composite"):
                edited = _output_frames(run=run, result=result)
            with reporter.stage("write"):
                _write_bundle(run=run, result=result, edited=edited, reporter=reporter)
            shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    return output


def _is_stream(path: Path) -> bool:
    """A pipe, FIFO or character device (no file name to derive an output name from)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _select_span(*, info: "VideoInfo", entry: ModelEntry, span: SpanSettings) -> "Span":
    from dmedit.media.video import select_span

    count = None if span.frames == "all" else (span.frames or entry.frames)
    return select_span(info=info, start=span.start, frames=count, stride=span.stride, fps=span.fps)


def _plan(*, request: RunRequest, video: Path, output: Path, reporter: Reporter, models: ModelCache) -> RunPlan:
    with reporter.stage("probe"):
        info = videos.probe(path=video, shown_as=request.video)
    with reporter.stage("plan"):
        return _plan_model(request=request, info=info, output=output, reporter=reporter, models=models)


def _plan_model(*, request: RunRequest, info: "VideoInfo", output: Path, reporter: Reporter,
                models: ModelCache) -> RunPlan:
    """The registry entry, its weights (built or located), the settings and the device."""
    from dmedit.models.backends import resolve_device, resolve_dtype
    from dmedit.runs.cascade import cascade_weights
    from dmedit.engine.compilation import choose_compile
    from dmedit.models.registry import load_registry
    from dmedit.runs.levers import resolve_windows

    registry = load_registry(registry_file=request.model.registry)
    entry = registry.model(request.model.name)
    config = EditConfig().merged(entry.defaults).merged(request.edit.as_dict())
    span = _select_span(info=info, entry=entry, span=request.span)
    config = resolve_windows(config=config, entry=entry, frames=len(span.indices), given=request.edit)
    weights = cascade_weights(entry=entry, registry=registry, request=request)
    if request.output.eval:  # the metrics' models too, before any frame is decoded
        from dmedit.evaluation.scoring import check_scorers

        check_scorers(registry=registry, scorers=request.output.scorers)
    device = resolve_device(name=request.model.device)
    dtype = resolve_dtype(name=request.model.dtype, device=device, entry=entry)
    choose_compile(requested=request.model.compile, mode=request.model.compile_mode, device=device)  # refuse early
    reporter.line(f"span: {len(span.indices)} frames from {span.indices[0]} at {span.fps} fps ({span.duration:.3f}s)")
    return RunPlan(request=request, output=output, info=info, span=span, registry=registry, entry=entry,
                   weights=weights, config=config, device=device, dtype=dtype, models=models)


def _detect(*, registry: "Registry", entry: ModelEntry, settings: MaskSettings, prompt: str,
            frames: np.ndarray, device: "torch.device", models: ModelCache) -> "MaskResult":
    """Masks of `prompt` at source size from the settings' detector (default: the entry's)."""
    from dmedit.models.hub import resolve_weights
    from dmedit.masks.regions import detect_masks

    detector_entry = registry.detector(settings.detector or entry.detector)
    detector = models.detector(entry=detector_entry, folder=resolve_weights(entry=detector_entry), device=device)
    threshold = {"box_threshold": settings.box_threshold, "text_threshold": settings.text_threshold}
    for name, value in threshold.items():
        threshold[name] = getattr(detector_entry, name) if value is None else value
    return detect_masks(detector=detector, frames=frames, prompt=prompt, smooth=settings.smooth,
                        dilate=settings.dilate, **threshold)


def _edit_mask(*, plan: RunPlan, source: np.ndarray) -> "EditMask":
    """Detected, user or full masks at source size, and the fit mapping (a crop holds the mask)."""
    from dmedit.masks.regions import regions as mask_tools
    from dmedit.media.fit import fit_mapping
    from dmedit.masks.files import load_user_masks

    settings, (count, height, width) = plan.request.mask, source.shape[:3]
    detection, origin = None, "full"
    if settings.source == "full" or not plan.config.use_mask:
        masks = mask_tools.full_masks(frames=count, width=width, height=height)
    elif settings.source is not None:
        origin = "file"
        masks = load_user_masks(path=Path(settings.source), frames=count, width=width, height=height,
                                span_indices=plan.span.indices)
    else:
        origin = "detected"
        detection = _detect(registry=plan.registry, entry=plan.entry, settings=settings, models=plan.models,
                            prompt=plan.request.detection_prompt, frames=source, device=plan.device)
        masks = detection.masks
    focus = None if origin == "full" else mask_tools.mask_bounds(masks=masks)
    mapping = fit_mapping(mode=plan.request.span.fit, source_width=width, source_height=height,
                          width=plan.entry.width, height=plan.entry.height, focus=focus)
    return mask_tools.EditMask(source=masks, mapping=mapping, origin=origin, detection=detection)


def _context(*, plan: RunPlan, reporter: Reporter) -> RunContext:
    with reporter.stage("read"):
        source = videos.read_frames(info=plan.info, span=plan.span)
    with reporter.stage("masks"):
        mask = _edit_mask(plan=plan, source=source)
    run = RunContext(plan=plan, source=source, mask=mask)
    if plan.span.timing_note:
        run.notes.append(plan.span.timing_note)
    outside = mask.outside_fraction() if mask.origin != "full" else 0.0
    if outside > 0:
        box = mask.mapping.source_box
        run.notes.append(f"{outside:.1%} of the mask lies outside the {mask.mapping.mode} window "
                         f"(source x={box[0]}..{box[0] + box[2]}, y={box[1]}..{box[1] + box[3]}) and is "
                         "not edited; --fit pad edits the whole frame")
    for note in run.notes:
        reporter.warn(note)
    return run


def _optimise(*, run: RunContext, reporter: Reporter) -> "EditResult":
    from dmedit.engine.checkpoints import checkpoint_path
    from dmedit.media.fit import apply_fit, frames_to_tensor
    from dmedit.runs.signals import stop_after_step

    plan, settings = run.plan, run.plan.request.model
    with reporter.stage("load model"):
        from dmedit import editor  # imports diffusers: part of loading the model
        from dmedit.engine.compilation import compile_counters
        from dmedit.runs.levers import speed_choices

        backend = plan.models.backend(entry=plan.entry, folder=plan.weights, device=plan.device, dtype=plan.dtype,
                                      vae_chunk=settings.vae_chunk, offload=settings.offload)
    with reporter.stage("encode"):
        pixels = frames_to_tensor(frames=apply_fit(frames=run.source, mapping=run.mask.mapping))
        scale = getattr(backend, "latent_scale", 8)  # pixels per latent cell: 1 for pixel-space models
        latent_mask = run.mask.latent(latent_height=plan.entry.height // scale, latent_width=plan.entry.width // scale)
        checkpointing, compile_choice = speed_choices(settings=settings, config=plan.config, device=plan.device,
                                                      dtype=plan.dtype, unet=backend.unet,
                                                      grid=tuple(latent_mask.shape[2:]))
        run.speed.update(checkpointing=checkpointing.to_dict(), compile=compile_choice.to_dict())
        session = editor.prepare(backend=backend, frames=pixels, masks=latent_mask.to(plan.device),
                                 src_prompt=plan.request.src, tgt_prompt=plan.request.tgt, config=plan.config,
                                 key_layers=plan.entry.key_layers, checkpointing=checkpointing.granularity,
                                 compile=compile_choice)
    reporter.split_stage(stage="encode", parts=session.timings)
    if session.windows.windowed:
        windows = session.windows
        counts = sorted({len(windows.starts(offset=offset)) for offset in range(windows.stride)})
        per_step = windows.per_step or "-".join(map(str, sorted({counts[0], counts[-1]})))
        reporter.line(f"windows: {per_step} windows of {windows.length} frames (overlap {windows.overlap}) "
                      f"per step over {windows.frames} frames, the grid shifted every step")
    checkpoint = checkpoint_path(folder=plan.checkpoint_dir)
    resume = plan.request.resume and checkpoint.is_file()
    if plan.request.resume and not resume:
        reporter.line(f"--resume: no checkpoint at {checkpoint}; starting from step 0")
    read_every = reporter.log_every if plan.device.type == "cuda" else 1  # no host sync per step on a GPU
    with stop_after_step() as stop, reporter.steps(total=plan.config.steps) as progress:
        result = editor.optimise(session=session, on_step=progress.update, checkpoint=checkpoint, resume=resume,
                                 stop_requested=stop, log_every=read_every)
    reporter.split_stage(stage="optimise", parts=result.timings)
    if compile_choice.enabled:
        run.speed["compile"] |= {"first_step_s": round(result.timings["first step"], 3), **compile_counters()}
    return result


def _output_frames(*, run: RunContext, result: "EditResult") -> np.ndarray:
    from dmedit.media.fit import composite, from_model_frames, tensor_to_frames

    settings = run.plan.request.output
    edited = tensor_to_frames(tensor=result.frames)
    if settings.size == "model":
        return edited
    edited = from_model_frames(frames=edited, mapping=run.mask.mapping, source=run.source)
    if not settings.composite:
        return edited
    return composite(source=run.source, edited=edited, masks=run.mask.feathered(pixels=run.plan.request.mask.feather))


def _compare_frames(*, run: RunContext, edited: np.ndarray) -> np.ndarray:
    """source | mask overlay | edited, at the size of the edited frames."""
    from dmedit.media.fit import apply_fit, side_by_side
    from dmedit.masks.regions import draw_preview

    detections = run.mask.detection.detections if run.mask.detection is not None else None
    source, overlay = run.source, draw_preview(frames=run.source, masks=run.mask.source, detections=detections)
    if run.plan.request.output.size == "model":
        source, overlay = (apply_fit(frames=frames, mapping=run.mask.mapping) for frames in (source, overlay))
    return side_by_side(panels=[source, overlay, edited])


def _write_bundle(*, run: RunContext, result: "EditResult", edited: np.ndarray, reporter: Reporter) -> None:
    """Every file in a staging folder (compare, plot, MP4, then the report with the full timings),
    renamed into place together at the end (outputs.staged_bundle)."""
    from dmedit.runs.report import plot_losses, run_report, write_json
    from dmedit.media.video import write_video

    plan, settings = run.plan, run.plan.request.output
    has_audio = settings.audio and plan.info.has_audio
    audio = dict(audio_source=plan.info.path if has_audio else None, audio_start=plan.span.start_time,
                 audio_duration=plan.span.duration, crf=settings.crf, fps=plan.span.fps,
                 timestamps=plan.span.timestamps)
    with staged_bundle(output=plan.output) as folder:
        if settings.compare:
            compare = companion(output=plan.output, suffix=".compare.mp4")
            write_video(path=folder / compare.name, frames=_compare_frames(run=run, edited=edited), **audio)
        if settings.plot:
            plot_losses(path=folder / companion(output=plan.output, suffix=".loss.png").name, history=result.history)
        written = write_video(path=folder / plan.output.name, frames=edited, **audio)
        if written.note:
            run.notes.append(written.note)
            reporter.warn(written.note)
        if result.windows.windowed:
            run.notes.append(_seams_note(run=run, result=result, edited=edited))
        report = run_report(run=run, result=result, timings=reporter.timings_so_far(), written=written)
        if settings.eval:
            from dmedit.evaluation.scoring import evaluate_run

            curves = folder / companion(output=plan.output, suffix=".eval.png").name
            report["eval"] = evaluate_run(run=run, edited=edited, curves=curves)
        write_json(path=folder / companion(output=plan.output, suffix=".json").name, data=report)


def _seams_note(*, run: RunContext, result: "EditResult", edited: np.ndarray) -> str:
    """The seam measure of a windowed run (windows.seam_measure) as a note; the figures go to the report."""
    from dmedit.media.fit import apply_fit
    from dmedit.engine.windows import seam_measure

    source, masks = run.source, run.mask.source
    if edited.shape != source.shape:  # --out-size model
        source, masks = apply_fit(frames=source, mapping=run.mask.mapping), run.mask.model()
    run.seams.update(seam_measure(source=source, edited=edited, masks=masks, plan=result.windows))
    ratio = run.seams["ratio"]
    figure = "no edit to measure" if ratio is None else f"{ratio:.2f}"
    return f"seams: the edit changes {figure} times as much across window boundaries as elsewhere (1 = seamless)"


def _mask_outputs(*, request: MaskRequest) -> tuple[Path, Path]:
    base = request.output.path or request.video.with_suffix("")
    if base.suffix == ".mp4":
        base = base.with_suffix("")
    return base.with_name(f"{base.name}.mask.mp4"), base.with_name(f"{base.name}.masks")


def run_mask_preview(*, request: MaskRequest, reporter: Reporter) -> tuple[Path, Path]:
    """`dmedit mask`: detection only (no video model): OUT.mask.mp4 and OUT.masks/*.png (+ span.json)."""
    from dmedit.models.backends import resolve_device
    from dmedit.masks.files import save_mask_pngs
    from dmedit.masks.regions import draw_preview
    from dmedit.models.registry import load_registry

    preview, folder = _mask_outputs(request=request)
    with _memory_failures(reporter=reporter), videos.readable_input(path=request.video) as video:
        videos.check_output_path(output=preview, inputs=[request.video, video], overwrite=request.output.overwrite)
        if folder.exists() and not request.output.overwrite:
            raise UsageError(f"{folder} exists; pass --overwrite to replace it")
        with output_lock(output=preview):
            info = videos.probe(path=video, shown_as=request.video)
            registry = load_registry(registry_file=request.model.registry)
            entry = registry.model(request.model.name)
            span = _select_span(info=info, entry=entry, span=request.span)
            device = resolve_device(name=request.model.device)
            with reporter.stage("read"):
                frames = videos.read_frames(info=info, span=span)
            with reporter.stage("detect"):
                result = _detect(registry=registry, entry=entry, settings=request.mask, prompt=request.mask.prompt,
                                 frames=frames, device=device, models=ModelCache())
            reporter.release()
            with reporter.stage("write"):
                overlay = draw_preview(frames=frames, masks=result.masks, detections=result.detections)
                videos.write_video(path=preview, frames=overlay, fps=span.fps, crf=request.output.crf,
                                   timestamps=span.timestamps)
                staging = folder.with_name(f".{folder.name}.partial")
                shutil.rmtree(staging, ignore_errors=True)
                save_mask_pngs(masks=result.masks, folder=staging, span=span.to_dict())
                shutil.rmtree(folder, ignore_errors=True)
                staging.rename(folder)
    return preview, folder

