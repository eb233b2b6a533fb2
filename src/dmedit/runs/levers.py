"""The engine's levers resolved for one run from its settings and its machine: the temporal
windows of a long span, activation checkpointing (--checkpointing auto: from the free memory) and
torch.compile (--compile), with inductor's cache in dmedit's cache folder."""

from __future__ import annotations

import dataclasses

import torch

from dmedit.core.config import EditConfig, ModelEntry
from dmedit.core.errors import UsageError
from dmedit.engine.compilation import CompileChoice, choose_compile, use_cache_folder
from dmedit.engine.speed import CheckpointingChoice, choose_checkpointing, free_memory_bytes, step_memory_estimate
from dmedit.models.hub import cache_dir
from dmedit.models.registry import Registry
from dmedit.runs.settings import EditOverrides, ModelSettings, RunRequest


def resolve_windows(*, config: EditConfig, entry: ModelEntry, frames: int, given: EditOverrides) -> EditConfig:
    """The edit settings with their temporal windows resolved: one window of the whole span when it
    fits the model (max_frames) and no --window was given; otherwise windows of --window frames
    (default: the entry's window, else its frame count) sharing --window-overlap frames (default:
    the entry's, else half the window)."""
    if given.window is None and frames <= entry.max_frames:
        return dataclasses.replace(config, window=0, window_overlap=0)
    window = given.window or entry.window or entry.frames
    if window > entry.max_frames:
        raise UsageError(f"--window {window}: model {entry.name!r} takes at most {entry.max_frames} frames at once")
    if given.window_overlap is not None:
        overlap = given.window_overlap
    else:
        overlap = entry.window_overlap if entry.window_overlap is not None else window // 2
    if not 0 <= overlap < window:
        raise UsageError(f"--window-overlap {overlap} must be below the window of {window} frames")
    return dataclasses.replace(config, window=window, window_overlap=overlap)


def speed_choices(*, settings: ModelSettings, config: EditConfig, device: torch.device, dtype: torch.dtype,
                  unet: torch.nn.Module, grid: tuple[int, ...]) -> tuple[CheckpointingChoice, CompileChoice]:
    """--checkpointing (auto: from the free memory) and --compile for a clip of grid (F, h, w) on
    the latent grid; the step sees a window's frames when the config has windows."""
    frames, height, width = grid
    window = config.window if 0 < config.window < frames else frames
    estimate = step_memory_estimate(unet=unet, frames=window, latent_height=height, latent_width=width, dtype=dtype)
    checkpointing = choose_checkpointing(requested=settings.checkpointing, estimate=estimate,
                                         free_bytes=free_memory_bytes(device=device))
    compile_choice = choose_compile(requested=settings.compile, mode=settings.compile_mode, device=device)
    if compile_choice.enabled:
        use_cache_folder(folder=cache_dir() / "inductor")
    return checkpointing, compile_choice


def check_levers(*, request: RunRequest, entry: ModelEntry, registry: Registry, device: torch.device) -> None:
    """The plan's check of the levers (runs.plan.PlanCheck): a compile mode the device cannot run
    (--compile-mode reduce-overhead without CUDA) is refused before any frame is decoded."""
    choose_compile(requested=request.model.compile, mode=request.model.compile_mode, device=device)
