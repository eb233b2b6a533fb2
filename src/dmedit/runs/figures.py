"""The one figure style of dmedit's PNGs (the loss curves, the eval curves, the ablation curves):
size, resolution, colours and fonts, stacked line panels with labelled axes, and the PNG itself.

Figures are matplotlib `Figure` objects drawn on an Agg canvas (never pyplot's global state);
matplotlib is imported inside the functions, since this package is reachable from `dmedit -h`.
The PNG keeps matplotlib's `Software` text chunk.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Mapping, Sequence


if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_INCHES = 8.0
PANEL_HEIGHT_INCHES = 2.4
DPI = 100
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#7f7f7f", "#8c564b")
TITLE_SIZE, LABEL_SIZE, TICK_SIZE = 10, 9, 8


def panel_figure(*, panels: int) -> tuple[Figure, list[Axes]]:
    """A figure of `panels` (at least one) panels stacked top to bottom, WIDTH_INCHES wide and
    PANEL_HEIGHT_INCHES per panel at DPI, laid out so that titles, labels and legends never overlap."""
    from matplotlib.figure import Figure

    count = max(1, panels)
    figure = Figure(figsize=(WIDTH_INCHES, PANEL_HEIGHT_INCHES * count), dpi=DPI, layout="constrained")
    return figure, list(figure.subplots(count, 1, squeeze=False)[:, 0])


def draw_lines(*, axes: Axes, lines: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
               legend: bool, first: int = 0) -> None:
    """One line per label (x = first, first + 1, …; NaN leaves a gap, a lone value is a dot) in the
    style's colours, with the title, axis labels, ticks, a grid and, when asked, a legend outside
    the axes on the right, where it hides no data."""
    for index, (label, values) in enumerate(lines.items()):
        ys = [float(value) for value in values]
        axes.plot(range(first, first + len(ys)), ys, label=label, color=COLOURS[index % len(COLOURS)], linewidth=1.2,
                  marker="o" if sum(math.isfinite(y) for y in ys) == 1 else None, markersize=3)
    axes.set_title(title, fontsize=TITLE_SIZE, loc="left")
    axes.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    axes.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    axes.tick_params(labelsize=TICK_SIZE)
    axes.grid(True, color="#e0e0e0", linewidth=0.6)
    axes.xaxis.get_major_locator().set_params(integer=True)
    if legend:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=TICK_SIZE,
                    frameon=False)


def empty_panel(*, axes: Axes, message: str) -> None:
    """A panel that says what is missing instead of showing an empty plot."""
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=LABEL_SIZE, transform=axes.transAxes)
    axes.set_axis_off()


def png_bytes(*, figure: Figure) -> bytes:
    """The figure as PNG bytes (Agg canvas, DPI), with matplotlib's Software metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
