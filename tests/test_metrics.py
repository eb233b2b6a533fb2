"""Weight-free edit metrics (metrics.py, flow_metrics.py) on planted faults, and how metrics are shown
(metric_report.py).

The clip: a textured square moving right and down and a textured disc moving left over a still
textured background. Each fault is compared with a "benign" edit (the source with faint noise, as a
re-encode leaves): a metric catches a fault when the fault scores worse than the benign edit.
Which metric catches which fault:
- flicker (brightness jumps every other frame): warp error and PSNR;
- frozen frames: flow end-point error, warp error, motion fidelity (tracks stop);
- reversed motion: flow end-point error, warp error (the track score misses it: every reversed
  track finds a source track moving its way, the disc's or the square's);
- mirrored motion: flow end-point error, warp error, PSNR;
- a changed background outside the mask: PSNR and SSIM outside the mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from dmedit.evaluation.flow_metrics import flow_endpoint_error, flow_metrics, warp_error
from dmedit.evaluation.metric_report import format_table, markdown_table, plot_curves
from dmedit.evaluation.metrics import PSNR_CAP_DB, motion_fidelity, psnr_outside_mask, ssim_outside_mask
from test_figures import matplotlib_png, panel_size

FRAMES, HEIGHT, WIDTH = 10, 64, 96
SQUARE, DISC = 20, 18


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 1.2)


def _object_boxes(t: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of the square and the disc's box in frame t."""
    return [(6 + 3 * t, 6 + t, SQUARE), (70 - 2 * t, 38, DISC)]


def moving_shapes() -> np.ndarray:
    """(FRAMES,HEIGHT,WIDTH,3) uint8: the moving textured square and disc over a still background."""
    rng = np.random.default_rng(7)
    background = _texture(rng, HEIGHT, WIDTH) * 0.6 + 50
    square, disc_texture = _texture(rng, SQUARE, SQUARE), _texture(rng, DISC, DISC)
    yy, xx = np.mgrid[0:DISC, 0:DISC]
    disc = (yy - (DISC - 1) / 2) ** 2 + (xx - (DISC - 1) / 2) ** 2 <= (DISC / 2) ** 2
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        (sx, sy, _), (dx, dy, _) = _object_boxes(t)
        frame[sy : sy + SQUARE, sx : sx + SQUARE] = square
        frame[dy : dy + DISC, dx : dx + DISC][disc] = disc_texture[disc]
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def object_mask() -> np.ndarray:
    """(FRAMES,HEIGHT,WIDTH) bool: the two objects' boxes, a few pixels larger."""
    mask = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=bool)
    for t in range(FRAMES):
        for x, y, side in _object_boxes(t):
            mask[t, max(0, y - 3) : y + side + 3, max(0, x - 3) : x + side + 3] = True
    return mask


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return moving_shapes()


@pytest.fixture(scope="module")
def benign(source: np.ndarray) -> np.ndarray:
    """The source with faint noise (sigma 1.5 levels), as a re-encode leaves it."""
    noise = np.random.default_rng(3).normal(0, 1.5, source.shape)
    return np.clip(source + noise, 0, 255).astype(np.uint8)


def scores(source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    found = [motion_fidelity(source=source, edited=edited), *flow_metrics(source=source, edited=edited).values(),
             psnr_outside_mask(source=source, edited=edited, mask=mask),
             ssim_outside_mask(source=source, edited=edited, mask=mask)]
    return {metric.name: metric.value for metric in found}


def worse(fault: dict[str, float], benign: dict[str, float], *names: str) -> list[str]:
    """The metrics among `names` on which the fault does NOT score worse than the benign edit."""
    lower_is_better = {"flow_epe", "warp_error"}
    missed = []
    for name in names:
        caught = fault[name] > benign[name] if name in lower_is_better else fault[name] < benign[name]
        if not caught:
            missed.append(f"{name}: fault {fault[name]:.4g}, benign {benign[name]:.4g}")
    return missed


def test_identical_videos_score_best_on_every_metric(source: np.ndarray, benign: np.ndarray) -> None:
    same = scores(source, source.copy())
    assert same["motion_fidelity_lk"] == pytest.approx(1.0)
    assert same["flow_epe"] == 0.0
    assert same["psnr_outside_mask"] == PSNR_CAP_DB
    assert same["ssim_outside_mask"] == pytest.approx(1.0)
    own = warp_error(source=source, edited=source)
    assert own.value == pytest.approx(own.extra["source"])  # as steady as the source itself
    assert worse(scores(source, benign), same, *same) == []  # even faint noise scores worse


def test_flicker_is_caught_by_warp_error_and_psnr(source: np.ndarray, benign: np.ndarray) -> None:
    """(SSIM barely sees a uniform brightness shift: it scores it about as faint noise.)"""
    flicker = source.astype(np.int16)
    flicker[1::2] += 30
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    assert worse(scores(source, flicker), scores(source, benign), "warp_error", "psnr_outside_mask") == []


def test_frozen_frames_are_caught_by_flow_error_warp_error_and_track_fidelity(
        source: np.ndarray, benign: np.ndarray) -> None:
    frozen = source.copy()
    frozen[4:] = source[4]
    assert worse(scores(source, frozen), scores(source, benign),
                 "flow_epe", "warp_error", "motion_fidelity_lk") == []


def test_reversed_motion_is_caught_by_flow_error_and_warp_error(source: np.ndarray, benign: np.ndarray) -> None:
    assert worse(scores(source, source[::-1].copy()), scores(source, benign), "flow_epe", "warp_error") == []


def test_mirrored_motion_is_caught_by_flow_error_warp_error_and_psnr(source: np.ndarray, benign: np.ndarray) -> None:
    mirrored = source[:, :, ::-1].copy()
    assert worse(scores(source, mirrored), scores(source, benign), "flow_epe", "warp_error", "psnr_outside_mask") == []


def test_a_changed_background_outside_the_mask_loses_psnr_and_ssim_outside_the_mask(source: np.ndarray) -> None:
    mask = object_mask()
    recoloured = source.copy()
    recoloured[mask] = 255 - recoloured[mask]  # the objects edited, nothing else
    inside_only = scores(source, recoloured, mask)
    assert inside_only["psnr_outside_mask"] == PSNR_CAP_DB
    assert inside_only["ssim_outside_mask"] == pytest.approx(1.0)
    spilled = recoloured.copy()
    spilled[:, :, :12] = 255 - spilled[:, :, :12]  # and a band of background
    changed = scores(source, spilled, mask)
    assert changed["psnr_outside_mask"] < inside_only["psnr_outside_mask"]
    assert changed["ssim_outside_mask"] < inside_only["ssim_outside_mask"]


def test_outside_mask_metrics_say_when_they_cover_every_pixel(source: np.ndarray, benign: np.ndarray) -> None:
    unmasked = psnr_outside_mask(source=source, edited=benign, mask=None)
    assert "no mask" in unmasked.model and unmasked.extra["mask_coverage"] == 0.0
    assert len(unmasked.per_frame) == FRAMES
    everything = np.ones(source.shape[:3], dtype=bool)
    assert psnr_outside_mask(source=source, edited=benign, mask=everything) is None
    assert ssim_outside_mask(source=source, edited=benign, mask=everything) is None


def test_tracks_lost_in_the_edit_are_counted_and_left_out(source: np.ndarray) -> None:
    vanished = source.copy()
    vanished[5:] = 128  # flat grey: nothing left to track
    metric = motion_fidelity(source=source, edited=vanished)
    assert metric.extra["lost_edited"] == 1.0 and metric.extra["lost_source"] < 1.0
    assert -1.0 <= metric.value <= 1.0
    assert len(metric.per_frame) == FRAMES - 1


def test_table_markdown_and_curves_show_every_metric(tmp_path, source: np.ndarray, benign: np.ndarray) -> None:
    metrics = {metric.name: metric for metric in (
        flow_endpoint_error(source=source, edited=benign), psnr_outside_mask(source=source, edited=benign, mask=None))}
    table = format_table(metrics=metrics)
    assert [line.split()[0] for line in table.splitlines()] == ["metric", "flow_epe", "psnr_outside_mask"]
    markdown = markdown_table(runs={"full method": metrics, "w/o mask": metrics})
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0] == "| run | flow_epe ↓ | psnr_outside_mask ↑ |" and len(rows) == 3
    path = tmp_path / "curves.png"
    plot_curves(path=path, series={"a": metrics, "b": metrics})
    assert matplotlib_png(path) == panel_size(2), "one panel per metric with per-frame values"
    assert not math.isnan(metrics["flow_epe"].value)
