"""The run report (OUT.json) and the loss plot (OUT.loss.png).

Both are written atomically: a temporary name in the same folder, then os.replace.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

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


def write_json(*, path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def plot_losses(*, path: Path, history: Mapping[str, Sequence[float]], width: int = 720, height: int = 160) -> None:
    """One panel per loss term (each on its own scale) against the step, drawn with OpenCV; PNG."""
    terms = [name for name in history if name != "t" and len(history[name]) > 0]
    panels = [
        _plot_panel(name=name, values=np.asarray(history[name], dtype=np.float64), colour=PLOT_COLOURS[i % 4],
                    width=width, height=height)
        for i, name in enumerate(terms)
    ]
    image = np.concatenate(panels, axis=0) if panels else np.full((height, width, 3), 255, np.uint8)
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}.png")
    try:
        if not cv2.imwrite(str(temporary), image):
            raise OSError(f"{path}: cannot write the loss plot")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
