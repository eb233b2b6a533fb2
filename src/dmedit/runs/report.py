"""The run report (OUT.json) and the loss curves (OUT.loss.png, a matplotlib figure in the style of
runs.figures), both from a finished edit's values; both are written atomically (core.files)."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dmedit.core.files import write_bytes
from dmedit.media.encode import WrittenVideo
from dmedit.runs.figures import draw_lines, empty_panel, panel_figure, png_bytes
from dmedit.runs.optimise import Edited

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PACKAGES = (
    "dmedit", "torch", "diffusers", "transformers", "huggingface_hub", "av",
    "opencv-python-headless", "numpy", "typer", "rich", "matplotlib",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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


def loss_figure(*, history: Mapping[str, Sequence[float]]) -> Figure:
    """One panel per loss term (each on its own scale) against the optimisation step (1, 2, …)."""
    terms = [name for name in history if name != "t" and len(history[name]) > 0]
    figure, panels = panel_figure(panels=len(terms))
    for axes, name in zip(panels, terms):
        draw_lines(axes=axes, lines={name: history[name]}, title=f"{name} loss ({len(history[name])} steps)",
                   xlabel="step", ylabel=f"{name} (loss value)", legend=False, first=1)
    if not terms:
        empty_panel(axes=panels[0], message="no loss recorded (no optimisation step ran)")
    return figure


def loss_png(*, history: Mapping[str, Sequence[float]]) -> bytes:
    """The loss curves (loss_figure) as PNG bytes, e.g. to embed in a page."""
    return png_bytes(figure=loss_figure(history=history))


def plot_losses(*, path: Path, history: Mapping[str, Sequence[float]]) -> None:
    """The loss curves (loss_figure) written atomically as a PNG at `path` (OUT.loss.png)."""
    write_bytes(path=path, data=loss_png(history=history))


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
