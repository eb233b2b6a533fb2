"""The optimisation stage of a run: load the video model, encode the source clip at the model's
size, choose the engine's levers, run the engine's loop (checkpoints, --resume, a signal stops it
after a step) and hand back the edit as an `Edited` record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmedit.core.console import Reporter
from dmedit.engine import editor
from dmedit.engine.checkpoints import checkpoint_path
from dmedit.engine.compilation import compile_counters
from dmedit.engine.windows import WindowPlan
from dmedit.media.fit import apply_fit, frames_to_tensor
from dmedit.models.backends.base import VideoBackend
from dmedit.models.model_cache import ModelCache
from dmedit.runs.clip import SourceClip
from dmedit.runs.levers import speed_choices
from dmedit.runs.plan import RunPlan
from dmedit.runs.signals import stop_after_step


@dataclass(frozen=True, eq=False)
class Edited:
    """A finished edit before it is written: the plan and the source clip under the output frames,
    the engine's result (frames (F,3,H,W) in [-1,1]), the speed choices, a cascade's stage records
    and the notes for the report."""

    plan: RunPlan
    clip: SourceClip
    result: editor.EditResult
    speed: dict[str, Any] = field(default_factory=dict)
    stages: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()


def video_backend(*, plan: RunPlan, models: ModelCache) -> VideoBackend:
    """The plan's video model, loaded once per `models`."""
    settings = plan.request.model
    return models.backend(entry=plan.entry, folder=plan.weights, device=plan.device, dtype=plan.dtype,
                          vae_chunk=settings.vae_chunk, offload=settings.offload)


def _windows_line(windows: WindowPlan) -> str:
    counts = sorted({len(windows.starts(offset=offset)) for offset in range(windows.stride)})
    per_step = windows.per_step or "-".join(map(str, sorted({counts[0], counts[-1]})))
    return (f"windows: {per_step} windows of {windows.length} frames (overlap {windows.overlap}) "
            f"per step over {windows.frames} frames, the grid shifted every step")


def optimise(*, plan: RunPlan, clip: SourceClip, reporter: Reporter, models: ModelCache) -> Edited:
    """Edit the clip's frames at the model's size with the plan's settings -> Edited."""
    with reporter.stage("load model"):
        backend = video_backend(plan=plan, models=models)
    with reporter.stage("encode"):
        pixels = frames_to_tensor(frames=apply_fit(frames=clip.frames, mapping=clip.mask.mapping))
        scale = getattr(backend, "latent_scale", 8)  # pixels per latent cell: 1 for pixel-space models
        latent_mask = clip.mask.latent(latent_height=plan.entry.height // scale,
                                       latent_width=plan.entry.width // scale)
        checkpointing, compile_choice = speed_choices(settings=plan.request.model, config=plan.config,
                                                      device=plan.device, dtype=plan.dtype, unet=backend.unet,
                                                      grid=tuple(latent_mask.shape[2:]))
        session = editor.prepare(backend=backend, frames=pixels, masks=latent_mask.to(plan.device),
                                 src_prompt=plan.request.src, tgt_prompt=plan.request.tgt, config=plan.config,
                                 key_layers=plan.entry.key_layers, checkpointing=checkpointing.granularity,
                                 compile=compile_choice)
    reporter.split_stage(stage="encode", parts=session.timings)
    if session.windows.windowed:
        reporter.line(_windows_line(session.windows))
    result = _run_loop(plan=plan, session=session, reporter=reporter)
    speed = {"checkpointing": checkpointing.to_dict(), "compile": compile_choice.to_dict()}
    if compile_choice.enabled:
        speed["compile"] |= {"first_step_s": round(result.timings["first step"], 3), **compile_counters(),
                             "fallback": result.compile_fallback is not None}
        if result.compile_fallback is not None:
            speed["compile"]["fallback_reason"] = result.compile_fallback
    return Edited(plan=plan, clip=clip, result=result, speed=speed, notes=clip.notes)


def _run_loop(*, plan: RunPlan, session: editor.EditSession, reporter: Reporter) -> editor.EditResult:
    """The engine's loop with the run's checkpoint (resumed from when asked and present), progress
    read every --log-every steps on a GPU (every step on the CPU) and a stop after a signal."""
    checkpoint = checkpoint_path(folder=plan.checkpoint_dir)
    resume = plan.request.resume and checkpoint.is_file()
    if plan.request.resume and not resume:
        reporter.line(f"--resume: no checkpoint at {checkpoint}; starting from step 0")
    read_every = reporter.log_every if plan.device.type == "cuda" else 1  # no host sync per step on a GPU
    with stop_after_step() as stop, reporter.steps(total=plan.config.steps) as progress:
        result = editor.optimise(session=session, on_step=progress.update, checkpoint=checkpoint, resume=resume,
                                 stop_requested=stop, log_every=read_every, on_warning=reporter.warn)
    reporter.split_stage(stage="optimise", parts=result.timings)
    return result
