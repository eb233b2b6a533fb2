"""The figures (runs.figures style): the loss curves (runs.report) and the per-frame metric curves
(evaluation.metric_report) are matplotlib PNGs with labelled axes, one panel per loss term or
metric, and a legend that sits beside the data rather than on it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from dmedit.evaluation.metric_report import curves_figure, curves_png, plot_curves
from dmedit.evaluation.metric_types import Metric
from dmedit.runs.figures import DPI, PANEL_HEIGHT_INCHES, WIDTH_INCHES
from dmedit.runs.report import loss_figure, loss_png, plot_losses

HISTORY = {"dds": [1.0, 0.5, 0.25, 0.2], "spatial": [0.1, float("nan"), 0.3, 0.2], "t": [900, 700, 500, 300]}


def matplotlib_png(png: bytes | Path) -> tuple[int, int]:
    """The (width, height) of a PNG whose Software text chunk says matplotlib made it."""
    image = Image.open(io.BytesIO(png) if isinstance(png, bytes) else png)
    assert image.format == "PNG"
    assert image.info.get("Software", "").startswith("Matplotlib"), image.info
    return image.size


def panel_size(panels: int) -> tuple[int, int]:
    return round(WIDTH_INCHES * DPI), round(PANEL_HEIGHT_INCHES * DPI * panels)


def metric(name: str, values: list[float], higher: bool = True) -> Metric:
    return Metric(name=name, value=float(sum(values)), higher_is_better=higher, value_range="[0, 100] dB",
                  model="test", per_frame=tuple(values))


def test_loss_figure_has_one_labelled_panel_per_term_against_the_step() -> None:
    panels = loss_figure(history=HISTORY).axes
    assert [axes.get_title(loc="left") for axes in panels] == ["dds loss (4 steps)", "spatial loss (4 steps)"]
    assert [axes.get_xlabel() for axes in panels] == ["step", "step"]
    assert all(axes.get_ylabel().startswith(name) for axes, name in zip(panels, ("dds", "spatial")))
    assert list(panels[0].lines[0].get_xdata()) == [1, 2, 3, 4], "steps count from 1"


def test_loss_png_and_plot_losses_are_matplotlib_pngs_of_the_style_size(tmp_path: Path) -> None:
    assert matplotlib_png(loss_png(history=HISTORY)) == panel_size(2)
    path = tmp_path / "out.loss.png"
    plot_losses(path=path, history={"dds": [1.0, 2.0]})
    assert matplotlib_png(path) == panel_size(1)
    assert [p.name for p in tmp_path.iterdir()] == ["out.loss.png"], "no temporary file left behind"


def test_an_empty_history_says_so_instead_of_a_blank_plot() -> None:
    figure = loss_figure(history={"t": []})
    assert "no loss recorded" in " ".join(text.get_text() for text in figure.axes[0].texts)
    assert matplotlib_png(loss_png(history={})) == panel_size(1)


def test_curves_have_a_panel_per_metric_and_a_legend_beside_the_data(tmp_path: Path) -> None:
    edits = {"full method": {"psnr": metric("psnr", [30.0, 31.0, 32.0]), "warp": metric("warp", [0.1, 0.2], False)},
             "w/o mask": {"psnr": metric("psnr", [29.0, 28.0, 27.0]), "table_only": metric("table_only", [])}}
    figure = curves_figure(series=edits)
    assert [axes.get_title(loc="left") for axes in figure.axes] == ["psnr: higher is better", "warp: lower is better"]
    assert all(axes.get_xlabel() == "frame index" for axes in figure.axes)
    assert figure.axes[0].get_ylabel() == "psnr [0, 100] dB", "the metric's range and unit"
    legends = [[text.get_text() for text in axes.get_legend().get_texts()] for axes in figure.axes]
    assert legends == [["full method", "w/o mask"], ["full method"]]
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays the figure out as the PNG does, so the extents below are final
    for axes in figure.axes:
        legend, plot = axes.get_legend().get_window_extent(renderer), axes.get_window_extent(renderer)
        assert legend.x0 >= plot.x1, "the legend is outside the plotting area"
        assert legend.x1 <= figure.bbox.width, "and inside the image"
    path = tmp_path / "edit.eval.png"
    plot_curves(path=path, series=edits)
    assert matplotlib_png(path) == panel_size(2)


def test_curves_without_per_frame_values_are_one_panel_saying_so() -> None:
    figure = curves_figure(series={"edit": {"x": metric("x", [])}})
    assert len(figure.axes) == 1 and "no metric has per-frame values" in figure.axes[0].texts[0].get_text()
    assert matplotlib_png(curves_png(series={"edit": {}})) == panel_size(1)


@pytest.mark.parametrize("values", [[5.0], [float("nan"), 2.0, float("nan")]])
def test_a_lone_value_shows_as_a_dot(values: list[float]) -> None:
    line = curves_figure(series={"edit": {"m": metric("m", values)}}).axes[0].lines[0]
    assert line.get_marker() == "o"


def test_a_line_of_several_values_has_no_dots() -> None:
    line = curves_figure(series={"edit": {"m": metric("m", [1.0, 2.0, 3.0])}}).axes[0].lines[0]
    assert line.get_marker() in (None, "None", "") and len(line.get_xdata()) == 3
