"""How metrics are shown: the text table of `dmedit eval`, the Markdown table of `dmedit ablate`,
and the per-frame curves PNG (one panel per metric, one line per edit), drawn with OpenCV.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from dmedit.evaluation.metric_types import Metric
from dmedit.media.images import write_png

COLOURS = ((40, 40, 220), (40, 160, 40), (200, 90, 20), (150, 40, 170), (20, 150, 170), (90, 90, 90))  # BGR
PANEL_WIDTH, PANEL_HEIGHT = 720, 150
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _direction(metric: Metric) -> str:
    return "higher" if metric.higher_is_better else "lower"


def format_table(*, metrics: Mapping[str, Metric], skipped: Mapping[str, str] | None = None) -> str:
    """One line per metric: name, value, which direction is better, range, model, extra numbers;
    then one line per skipped metric (value "skipped", the reason in the last column)."""
    rows = [("metric", "value", "better", "range", "model", "extra")]
    for name, metric in metrics.items():
        extra = " ".join(f"{key}={_number(value)}" for key, value in metric.extra.items())
        rows.append((name, _number(metric.value), _direction(metric), metric.value_range, metric.model, extra))
    rows += [(name, "skipped", "-", "-", "-", reason) for name, reason in (skipped or {}).items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows).rstrip()


def markdown_table(*, runs: Mapping[str, Mapping[str, Metric]]) -> str:
    """Edits as rows (label -> metrics), every metric any of them has as a column (↑ higher is
    better, ↓ lower), then one line per metric with its range and model."""
    names = list(dict.fromkeys(name for metrics in runs.values() for name in metrics))
    first = {name: next(metrics[name] for metrics in runs.values() if name in metrics) for name in names}
    header = ["run"] + [f"{name} {'↑' if first[name].higher_is_better else '↓'}" for name in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(names)) + "|"]
    for label, metrics in runs.items():
        cells = [_number(metrics[name].value) if name in metrics else "-" for name in names]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    lines.append("")
    lines += [f"- `{name}`: range {first[name].value_range}, {_direction(first[name])} is better; "
              f"{first[name].model}" for name in names]
    return "\n".join(lines) + "\n"


def _panel(*, name: str, lines: Mapping[str, Sequence[float]], note: str) -> np.ndarray:
    panel = np.full((PANEL_HEIGHT, PANEL_WIDTH, 3), 255, np.uint8)
    left, right, top, bottom = 70, PANEL_WIDTH - 10, 26, PANEL_HEIGHT - 20
    cv2.rectangle(panel, (left, top), (right, bottom), (200, 200, 200), 1)
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in lines.values()])
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low if high > low else 1.0
    longest = max(len(v) for v in lines.values())
    for index, (label, series) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        ys_all = np.asarray(series, dtype=np.float64)
        xs = left + (right - left) * np.arange(len(ys_all)) / max(1, longest - 1)
        ys = bottom - (bottom - top) * (ys_all - low) / span
        keep = np.isfinite(ys)
        points = np.stack([xs[keep], ys[keep]], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
        if len(points) == 1:
            cv2.circle(panel, (int(points[0, 0, 0]), int(points[0, 0, 1])), 2, colour, -1)
        elif len(points) > 1:
            cv2.polylines(panel, [points], isClosed=False, color=colour, thickness=1, lineType=cv2.LINE_AA)
        cv2.putText(panel, label, (right - 110, top + 14 + 14 * index), FONT, 0.4, colour, 1, cv2.LINE_AA)
    cv2.putText(panel, f"{name} ({note}; {longest} values)", (left, 17), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{high:.3g}", (4, top + 10), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{low:.3g}", (4, bottom), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return panel


def plot_curves(*, path: Path, series: Mapping[str, Mapping[str, Metric]]) -> None:
    """Per-frame curves of every metric that has them: one panel per metric, one line per edit
    (label -> its metrics); written atomically as a PNG (a blank panel when none has curves)."""
    names = list(dict.fromkeys(name for metrics in series.values() for name, m in metrics.items() if m.per_frame))
    panels = []
    for name in names:
        lines = {label: metrics[name].per_frame for label, metrics in series.items()
                 if name in metrics and metrics[name].per_frame}
        metric = next(metrics[name] for metrics in series.values() if name in metrics)
        note = f"{_direction(metric)} is better"
        panels.append(_panel(name=name, lines=lines, note=note))
    image = np.concatenate(panels, axis=0) if panels else np.full((PANEL_HEIGHT, PANEL_WIDTH, 3), 255, np.uint8)
    write_png(path=path, image=image, what="the metric curves")
