"""How metrics are shown: the text table of `dmedit eval`, the Markdown table of `dmedit ablate`,
and the per-frame curves PNG (one panel per metric, one line per edit), a matplotlib figure in the
style of runs.figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from dmedit.evaluation.metric_types import Metric
from dmedit.core.files import write_bytes
from dmedit.runs.figures import draw_lines, empty_panel, panel_figure, png_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


@dataclass(frozen=True)
class MetricTable:
    """Edits as rows, metrics as columns, as text cells: the header ("run", then each metric with ↑
    higher is better or ↓ lower), one row per edit, and per metric (name, range, better, model)."""

    header: list[str]
    rows: list[list[str]]
    legend: list[tuple[str, str, str, str]]


def metric_table(*, runs: Mapping[str, Mapping[str, Metric]]) -> MetricTable:
    """Edits as rows (label -> metrics), every metric any of them has as a column ("-" where one lacks it)."""
    names = list(dict.fromkeys(name for metrics in runs.values() for name in metrics))
    first = {name: next(metrics[name] for metrics in runs.values() if name in metrics) for name in names}
    header = ["run"] + [f"{name} {'↑' if first[name].higher_is_better else '↓'}" for name in names]
    rows = [[label, *(_number(metrics[name].value) if name in metrics else "-" for name in names)]
            for label, metrics in runs.items()]
    legend = [(name, first[name].value_range, _direction(first[name]), first[name].model) for name in names]
    return MetricTable(header=header, rows=rows, legend=legend)


def markdown_table(*, runs: Mapping[str, Mapping[str, Metric]]) -> str:
    """The metric_table in Markdown, then one line per metric with its range and model."""
    table = metric_table(runs=runs)
    lines = ["| " + " | ".join(table.header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines.append("")
    lines += [f"- `{name}`: range {value_range}, {better} is better; {model}"
              for name, value_range, better, model in table.legend]
    return "\n".join(lines) + "\n"


def curves_figure(*, series: Mapping[str, Mapping[str, Metric]]) -> Figure:
    """Per-frame curves of every metric that has them: one panel per metric, one line per edit
    (label -> its metrics), against the frame index (a per-pair metric: the pair's first frame)."""
    names = list(dict.fromkeys(name for metrics in series.values() for name, m in metrics.items() if m.per_frame))
    figure, panels = panel_figure(panels=len(names))
    for axes, name in zip(panels, names):
        lines = {label: metrics[name].per_frame for label, metrics in series.items()
                 if name in metrics and metrics[name].per_frame}
        metric = next(metrics[name] for metrics in series.values() if name in metrics)
        draw_lines(axes=axes, lines=lines, title=f"{name}: {_direction(metric)} is better",
                   xlabel="frame index", ylabel=f"{name} {metric.value_range}", legend=True)
    if not names:
        empty_panel(axes=panels[0], message="no metric has per-frame values")
    return figure


def curves_png(*, series: Mapping[str, Mapping[str, Metric]]) -> bytes:
    """The per-frame curves (curves_figure) as PNG bytes, e.g. to embed in a page."""
    return png_bytes(figure=curves_figure(series=series))


def plot_curves(*, path: Path, series: Mapping[str, Mapping[str, Metric]]) -> None:
    """The per-frame curves (curves_figure) written atomically as a PNG at `path`."""
    write_bytes(path=path, data=curves_png(series=series))
