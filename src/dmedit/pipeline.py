"""`dmedit run` and `dmedit mask` from resolved requests to files on disk (see DESIGN.md's data flow).

Order matters for users: everything that can fail cheaply (paths, prompts, probe, registry, span,
masks) is checked before a model is loaded, and nothing is written until the end.
"""

from __future__ import annotations

import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dmedit.config import EditConfig, ModelEntry
from dmedit.console import Reporter
from dmedit.errors import InputError, ModelError, OutOfMemoryError, UsageError

DEFAULT_MODEL = "zeroscope"


@dataclass(frozen=True)
class SpanRequest:
    start: str | None = None
    frames: int | None = None
    stride: int | None = None
    fps: float | None = None


@dataclass(frozen=True)
class RunRequest:
    """Every `dmedit run` option, as typed by the user (None = take the default)."""

    video: Path
    src: str
    tgt: str
    output: Path | None = None
    start: str | None = None
    frames: int | None = None
    stride: int | None = None
    fps: float | None = None
    fit: str = "crop"
    crf: int = 18
    audio: bool = True
    out_size: str = "source"
    compare: bool = False
    plot: bool = False
    composite: bool = True
    overwrite: bool = False
    skip_existing: bool = False
    model: str | None = None
    registry: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    vae_chunk: int = 8
    checkpointing: str | None = None
    mask: str | None = None
    mask_prompt: str | None = None
    detector: str | None = None
    box_threshold: float | None = None
    text_threshold: float | None = None
    smooth: int = 1
    dilate: float | None = None
    feather: float = 2.0
    resume: bool = False
    edit_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskRequest:
    video: Path
    mask_prompt: str
    output: Path | None = None
    start: str | None = None
    frames: int | None = None
    stride: int | None = None
    fps: float | None = None
    model: str | None = None
    detector: str | None = None
    registry: Path | None = None
    device: str = "auto"
    box_threshold: float | None = None
    text_threshold: float | None = None
    smooth: int = 1
    dilate: float | None = None
    overwrite: bool = False


def default_output(*, video: Path) -> Path:
    """IN.mp4 -> IN.dmedit.mp4 next to the input."""
    return video.with_name(f"{video.stem}.dmedit.mp4")


def companion(*, output: Path, suffix: str) -> Path:
    """OUT.mp4 -> OUT<suffix> (e.g. '.json', '.compare.mp4', '.loss.png', '.run')."""
    return output.with_name(f"{output.stem}{suffix}")


def _check_prompts(*, src: str, tgt: str) -> None:
    if not src.strip():
        raise UsageError("--src is empty: describe the object in the video, e.g. --src 'a bird'")
    if not tgt.strip():
        raise UsageError("--tgt is empty: describe what it should become, e.g. --tgt 'a parrot'")


def _select(*, info, entry: ModelEntry, span: SpanRequest):
    from dmedit.video import select_span

    count = span.frames or entry.frames
    if count > entry.max_frames:
        raise UsageError(f"--frames {count}: model {entry.name!r} takes at most {entry.max_frames} frames")
    return select_span(info=info, start=span.start, frames=count, stride=span.stride, fps=span.fps)


def run_edit(*, request: RunRequest, reporter: Reporter) -> Path | None:
    """The whole `dmedit run`; returns the output path (None when skipped)."""
    from dmedit import fit as fitting
    from dmedit import video as videos
    from dmedit.registry import load_registry

    _check_prompts(src=request.src, tgt=request.tgt)
    output = request.output or default_output(video=request.video)
    if request.skip_existing and output.exists():
        reporter.line(f"{output}: exists, skipped")
        reporter.release()
        return None
    videos.check_output_path(output=output, inputs=[request.video], overwrite=request.overwrite or request.resume)
    started = time.perf_counter()
    with reporter.stage("probe"):
        info = videos.probe(path=request.video)
    registry = load_registry(registry_file=request.registry)
    entry = registry.model(request.model or DEFAULT_MODEL)
    config = EditConfig().merged(dict(entry.defaults)).merged(request.edit_overrides)
    span = _select(info=info, entry=entry, span=SpanRequest(request.start, request.frames, request.stride, request.fps))
    _require_weights(entry=entry)
    reporter.line(f"span: {len(span.indices)} frames from {span.indices[0]} at {span.fps} fps ({span.duration:.3f}s)")
    with reporter.stage("read"):
        source = videos.read_frames(info=info, span=span)
        model_frames, mapping = fitting.to_model_frames(frames=source, width=entry.width, height=entry.height, fit=request.fit)
    device = _resolve_device(request.device)
    dtype = _resolve_dtype(name=request.dtype, device=device, entry=entry)
    with reporter.stage("masks"):
        masks, detections = _source_masks(request=request, registry=registry, entry=entry, frames=source, device=device)
    result = _optimise(request=request, entry=entry, config=config, frames=model_frames, masks=masks,
                       mapping=mapping, device=device, dtype=dtype, output=output, reporter=reporter)
    report = _report(request=request, info=info, span=span, entry=entry, config=config, mapping=mapping,
                     result=result, reporter=reporter, wall=time.perf_counter() - started)
    report["resolved"] = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                          "frames": len(span.indices), "model": entry.name,
                          "mask": "detected" if detections is not None else (request.mask or "full"),
                          "detector": (request.detector or entry.detector) if detections is not None else None}
    with reporter.stage("write"):
        edited = _to_output_frames(request=request, result_frames=result.frames, source=source, masks=masks, mapping=mapping)
        _write_bundle(request=request, output=output, info=info, span=span, source=source, edited=edited,
                      masks=masks, detections=detections, report=report)
    shutil.rmtree(companion(output=output, suffix=".run"), ignore_errors=True)
    reporter.line(f"wrote {output}")
    return output


def _require_weights(*, entry: ModelEntry) -> None:
    """Fail before any detection or decoding when the video model's weights are not here."""
    from dmedit.hub import resolve_weights

    resolve_weights(entry=entry)


def _resolve_device(name: str):
    from dmedit.backends import resolve_device

    return resolve_device(name=name)


def _resolve_dtype(*, name: str, device, entry: ModelEntry):
    from dmedit.backends import resolve_dtype

    return resolve_dtype(name=name, device=device, entry=entry)


def _source_masks(*, request: RunRequest, registry, entry: ModelEntry, frames: np.ndarray, device):
    """(T,H,W) float masks at source size (dilated, not feathered) and the detections (or None)."""
    from dmedit import masks as mask_tools

    count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    if request.mask == "full" or request.edit_overrides.get("use_mask") is False:
        return mask_tools.full_masks(frames=count, width=width, height=height), None
    if request.mask is not None:
        path = Path(request.mask)
        if not path.exists():
            raise InputError(f"--mask {request.mask}: no such file or folder (use 'full', a PNG, a folder or a video)")
        return mask_tools.load_user_masks(path=path, frames=count, width=width, height=height), None
    result = _detect(registry=registry, detector_name=request.detector or entry.detector, frames=frames,
                     prompt=request.mask_prompt or request.src, box_threshold=request.box_threshold,
                     text_threshold=request.text_threshold, smooth=request.smooth, dilate=request.dilate, device=device)
    return result.masks, result


def _detect(*, registry, detector_name: str, frames: np.ndarray, prompt: str, box_threshold, text_threshold,
            smooth: int, dilate, device):
    from dmedit.backends.grounding_dino import GroundingDinoDetector
    from dmedit.hub import resolve_weights
    from dmedit.masks import detect_masks

    detector_entry = registry.detector(detector_name)
    detector = GroundingDinoDetector.load(path=resolve_weights(entry=detector_entry), device=device)
    return detect_masks(
        detector=detector, frames=frames, prompt=prompt,
        box_threshold=detector_entry.box_threshold if box_threshold is None else box_threshold,
        text_threshold=detector_entry.text_threshold if text_threshold is None else text_threshold,
        smooth=smooth, dilate=dilate,
    )


@contextmanager
def _stop_on_first_interrupt() -> Iterator[list[bool]]:
    """First Ctrl-C asks the loop to stop after the current step; a second one interrupts at once."""
    flag = [False]
    previous = signal.getsignal(signal.SIGINT)

    def ask_to_stop(signum, frame) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _optimise(*, request: RunRequest, entry: ModelEntry, config: EditConfig, frames: np.ndarray, masks: np.ndarray,
              mapping, device, dtype, output: Path, reporter: Reporter):
    import torch

    from dmedit.backends import load_backend
    from dmedit.editor import edit
    from dmedit.masks import masks_to_latent_grid
    from dmedit.fit import masks_to_model

    with reporter.stage("load model"):
        backend = load_backend(entry=entry, device=device, dtype=dtype, vae_chunk=request.vae_chunk, offload=request.offload)
    model_masks = (masks_to_model(masks=masks, mapping=mapping) > 0).astype(np.float32)
    latent_masks = masks_to_latent_grid(masks=model_masks, latent_height=entry.height // 8, latent_width=entry.width // 8)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    try:
        with _stop_on_first_interrupt() as stop, reporter.steps(total=config.steps) as progress:
            result = edit(
                backend=backend, frames=pixels, masks=latent_masks.to(device), src_prompt=request.src,
                tgt_prompt=request.tgt, config=config, key_layers=entry.key_layers, on_step=progress.update,
                checkpoint_dir=companion(output=output, suffix=".run"), resume=request.resume,
                stop_requested=lambda: stop[0], checkpointing=request.checkpointing,
            )
    except torch.OutOfMemoryError as error:
        raise OutOfMemoryError(f"{device} ran out of memory: try --vae-chunk 1, --offload or fewer --frames") from error
    if not torch.isfinite(result.frames).all():
        raise ModelError(f"model {entry.name!r} produced NaN/inf frames; nothing was written (try --dtype fp32)")
    return result


def _to_output_frames(*, request: RunRequest, result_frames, source: np.ndarray, masks: np.ndarray, mapping) -> np.ndarray:
    from dmedit.masks import feather_masks
    from dmedit.fit import composite, from_model_frames

    edited = ((result_frames.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    if request.out_size == "model":
        return edited
    edited = from_model_frames(frames=edited, mapping=mapping, source=source)
    if not request.composite:
        return edited
    return composite(source=source, edited=edited, masks=feather_masks(masks=masks, pixels=request.feather))


def _write_bundle(*, request: RunRequest, output: Path, info, span, source, edited, masks, detections,
                  report: dict[str, Any]) -> None:
    """Companions first (compare, plot, report), the MP4 last; a failure removes what was written,
    so a failed run leaves no half bundle behind."""
    from dmedit.masks import draw_preview
    from dmedit.report import plot_losses, write_json
    from dmedit.fit import side_by_side, to_model_frames
    from dmedit.video import write_video

    audio = dict(audio_source=info.path if (request.audio and info.has_audio) else None,
                 audio_start=span.start_time, audio_duration=span.duration)
    written: list[Path] = []
    try:
        if request.compare:
            overlay = draw_preview(frames=source, masks=masks, detections=detections.detections if detections else None)
            if request.out_size == "model":
                size = dict(width=edited.shape[2], height=edited.shape[1], fit=request.fit)
                source, overlay = to_model_frames(frames=source, **size)[0], to_model_frames(frames=overlay, **size)[0]
            written.append(companion(output=output, suffix=".compare.mp4"))
            write_video(path=written[-1], frames=side_by_side(panels=[source, overlay, edited]), fps=span.fps,
                        crf=request.crf, **audio)
        if request.plot:
            written.append(companion(output=output, suffix=".loss.png"))
            plot_losses(path=written[-1], history=report["loss_history"])
        written.append(companion(output=output, suffix=".json"))
        write_json(path=written[-1], data=report)
        write_video(path=output, frames=edited, fps=span.fps, crf=request.crf, **audio)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _report(*, request: RunRequest, info, span, entry: ModelEntry, config: EditConfig, mapping, result,
            reporter: Reporter, wall: float) -> dict[str, Any]:
    from dmedit.report import package_versions, peak_memory

    options = {k: v for k, v in asdict(request).items() if k != "edit_overrides"}
    return {
        "input": info.to_dict(),
        "span": span.to_dict(),
        "fit": mapping.to_dict(),
        "options": options,
        "edit": asdict(config),
        "seed": config.seed,
        "model": {"name": entry.name, "family": entry.family, "repo": entry.repo, "revision": entry.revision,
                  "path": entry.path, "width": entry.width, "height": entry.height, "source_file": entry.source_file},
        "versions": package_versions(),
        "timings_s": {name: round(value, 3) for name, value in reporter.timings.items()} | {"total": round(wall, 3)},
        "peak_memory": peak_memory(),
        "steps_done": result.steps_done,
        "loss_history": result.history,
    }


def run_mask_preview(*, request: MaskRequest, reporter: Reporter) -> tuple[Path, Path]:
    """`dmedit mask`: detection only (no video model): OUT.mask.mp4 and OUT.masks/*.png."""
    from dmedit import video as videos
    from dmedit.masks import draw_preview, save_mask_pngs
    from dmedit.registry import load_registry

    if not request.mask_prompt.strip():
        raise UsageError("--mask-prompt is empty: name the object to detect, e.g. --mask-prompt 'a bird'")
    base = request.output or request.video.with_suffix("")
    if base.suffix == ".mp4":
        base = base.with_suffix("")
    preview, folder = base.with_name(f"{base.name}.mask.mp4"), base.with_name(f"{base.name}.masks")
    videos.check_output_path(output=preview, inputs=[request.video], overwrite=request.overwrite)
    if folder.exists() and not request.overwrite:
        raise UsageError(f"{folder} exists; pass --overwrite to replace it")
    info = videos.probe(path=request.video)
    registry = load_registry(registry_file=request.registry)
    entry = registry.model(request.model or DEFAULT_MODEL)
    span = _select(info=info, entry=entry, span=SpanRequest(request.start, request.frames, request.stride, request.fps))
    with reporter.stage("read"):
        frames = videos.read_frames(info=info, span=span)
    with reporter.stage("detect"):
        result = _detect(registry=registry, detector_name=request.detector or entry.detector, frames=frames,
                         prompt=request.mask_prompt, box_threshold=request.box_threshold,
                         text_threshold=request.text_threshold, smooth=request.smooth, dilate=request.dilate,
                         device=_resolve_device(request.device))
    reporter.release()
    with reporter.stage("write"):
        videos.write_video(path=preview, frames=draw_preview(frames=frames, masks=result.masks, detections=result.detections),
                           fps=span.fps)
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        save_mask_pngs(masks=result.masks, folder=staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    reporter.line(f"wrote {preview} and {folder}/ ({len(span.indices)} masks)")
    return preview, folder
