"""The run report (OUT.json) and the loss plot (OUT.loss.png), both from a finished edit's values;
both are written atomically (core.files)."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from dmedit.media.encode import WrittenVideo
from dmedit.media.images import write_png
from dmedit.runs.optimise import Edited

PACKAGES = (
    "dmedit", "torch", "diffusers", "transformers", "huggingface_hub", "av",
    "opencv-python-headless", "numpy", "typer", "rich",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
PLOT_COLOURS = ((40, 40, 220), (40, 160, 40), (200, 90, 20), (120, 40, 160))


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA allocation when torch used CUDA), in MiB."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = {"rss_mib": round(rss_kib / (1024 if sys.platform != "darwin" else 1024 * 1024), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def thread_settings() -> dict[str, Any]:
    """The CPU thread count torch uses and the OpenMP variables in effect (see threads.py)."""
    settings: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    torch = sys.modules.get("torch")
    if torch is not None:
        settings["torch_threads"] = torch.get_num_threads()
    return settings


def plot_losses(*, path: Path, history: Mapping[str, Sequence[float]], width: int = 720, height: int = 160) -> None:
    """One panel per loss term (each on its own scale) against the step, drawn with OpenCV; PNG."""
    terms = [name for name in history if name != "t" and len(history[name]) > 0]
    panels = [
        _plot_panel(name=name, values=np.asarray(history[name], dtype=np.float64), colour=PLOT_COLOURS[i % 4],
                    width=width, height=height)
        for i, name in enumerate(terms)
    ]
    image = np.concatenate(panels, axis=0) if panels else np.full((height, width, 3), 255, np.uint8)
    write_png(path=path, image=image, what="the loss plot")


def _plot_panel(*, name: str, values: np.ndarray, colour: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    panel = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, width - 10, 24, height - 20
    cv2.rectangle(panel, (left, top), (right, bottom), (200, 200, 200), 1)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low if high > low else 1.0
    xs = left + (right - left) * np.arange(len(values)) / max(1, len(values) - 1)
    ys = bottom - (bottom - top) * (np.nan_to_num(values, nan=low) - low) / span
    points = np.stack([xs, ys], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(panel, [points], isClosed=False, color=colour, thickness=1, lineType=cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(panel, f"{name} (steps 1..{len(values)})", (left, 16), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{high:.3g}", (4, top + 10), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{low:.3g}", (4, bottom), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return panel


def run_report(*, edited: Edited, written: WrittenVideo, timings: Mapping[str, float],
               seams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run report (OUT.json) of a finished edit: its inputs, settings, choices, timings and losses."""
    plan, clip, result = edited.plan, edited.clip, edited.result
    options = plan.request.to_dict()
    options["output"]["path"] = str(plan.output)
    entry = plan.entry
    return {
        "input": plan.info.to_dict(), "span": plan.span.to_dict(), "fit": clip.mask.mapping.to_dict(),
        "options": options, "edit": dataclasses.asdict(plan.config), "seed": plan.config.seed,
        "resolved": {"device": str(plan.device), "dtype": str(plan.dtype).removeprefix("torch."),
                     "frames": len(plan.span.indices), "model": entry.name, "mask": clip.mask.origin,
                     "detector": (plan.request.mask.detector or entry.detector) if clip.mask.detection else None},
        "threads": thread_settings(), "speed": edited.speed or None,
        "mask": clip.mask.to_dict(), "notes": list(edited.notes),
        "windows": result.windows.to_dict() if result.windows.windowed else None, "seams": seams or None,
        "written": written.to_dict() | {"path": str(plan.output)},
        "model": {"name": entry.name, "family": entry.family, "repo": entry.repo, "revision": entry.revision,
                  "path": entry.path, "width": entry.width, "height": entry.height, "source_file": entry.source_file},
        "versions": package_versions(), "peak_memory": peak_memory(),
        "timings_s": {name: round(value, 3) for name, value in timings.items()}, "stages": list(edited.stages) or None,
        "steps_done": result.steps_done, "loss_history": result.history,
    }
