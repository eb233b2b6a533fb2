"""What `dmedit run` does with the inputs users reported as misread (issue 9), end to end on the tiny
model: portrait phone video, an object near the edge of a wide frame, variable frame rate, odd
sizes, mask folders made for another span, and what the run report records."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import make_clip
from test_cli import streams
from test_cli_errors import EXIT_INPUT, assert_clean_failure, dmedit

VFR_TIMES = [0.0, 0.04, 0.07, 0.15, 0.2, 0.22, 0.3, 0.31, 0.4, 0.45, 0.5, 0.55]


def run_tiny(video: Path, output: Path, *extra: str):
    return dmedit("run", str(video), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4", "--steps", "1",
                  "-o", str(output), *extra)


def report_of(output: Path) -> dict:
    return json.loads(output.with_suffix(".json").read_text())


def edge_mask(path: Path, *, width: int, height: int, columns: slice) -> Path:
    image = np.zeros((height, width), np.uint8)
    image[:, columns] = 255
    cv2.imwrite(str(path), image)
    return path


def test_a_portrait_phone_video_is_edited_upright(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "phone.mp4", width=96, height=64, frames=6, rotation=90)
    output = tmp_path / "out.mp4"
    result = run_tiny(source, output, "--mask", "full")
    assert result.returncode == 0, result.stderr
    facts = streams(output)
    assert (facts["width"], facts["height"]) == (64, 96), "written upright, as players show the source"
    report = report_of(output)
    assert report["input"]["rotation"] == 90 and (report["input"]["width"], report["input"]["height"]) == (64, 96)


def run_wide_with_mask(folder: Path, *, columns: slice):
    """A 192x64 clip edited by the 64x64 tiny model with a mask over `columns`: (result, report)."""
    source = make_clip(folder / "wide.mp4", width=192, height=64, frames=6)
    mask = edge_mask(folder / "mask.png", width=192, height=64, columns=columns)
    output = folder / "out.mp4"
    result = run_tiny(source, output, "--mask", str(mask))
    assert result.returncode == 0, result.stderr
    return result, report_of(output)


def test_the_crop_window_follows_an_object_near_the_edge(tmp_path: Path) -> None:
    result, report = run_wide_with_mask(tmp_path, columns=slice(4, 30))
    assert report["fit"]["source_box"] == [0, 0, 64, 64], "the 64-pixel window moves left to hold the mask"
    assert report["mask"]["outside_fraction"] == 0 and report["notes"] == []
    assert "warning" not in result.stderr


def test_a_mask_wider_than_the_window_is_reported_with_the_share_left_out(tmp_path: Path) -> None:
    result, report = run_wide_with_mask(tmp_path, columns=slice(0, 128))
    assert report["mask"]["outside_fraction"] == 0.5
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "50.0% of the mask lies outside the crop window" in warnings[0]
    assert report["notes"] == [warnings[0].removeprefix("warning: ")]


def test_the_report_accounts_for_the_write_and_names_the_output(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "named.mp4"
    result = run_tiny(ntsc_clip, output, "--mask", "full", "--compare")
    assert result.returncode == 0, result.stderr
    report = report_of(output)
    timings = report["timings_s"]
    assert "write" in timings and sum(v for k, v in timings.items() if k != "total") == pytest.approx(timings["total"], abs=0.01)
    assert report["options"]["output"]["path"] == str(output) and report["written"]["path"] == str(output)
    assert report["options"]["output"]["compare"] is True and report["options"]["span"]["frames"] == 4


def test_an_odd_sized_source_is_padded_and_the_report_says_so(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "odd.mp4", width=95, height=63, frames=6)
    output = tmp_path / "out.mp4"
    result = run_tiny(source, output, "--mask", "full")
    assert result.returncode == 0, result.stderr
    assert (streams(output)["width"], streams(output)["height"]) == (96, 64)
    report = report_of(output)
    assert report["written"]["padded"] is True
    assert any("95x63" in note and "96x64" in note for note in report["notes"]), report["notes"]


def test_a_variable_rate_source_keeps_its_timing_and_says_so(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "vfr.mp4", frames=len(VFR_TIMES), timestamps=VFR_TIMES)
    output = tmp_path / "out.mp4"
    result = run_tiny(source, output, "--mask", "full", "--frames", "6")
    assert result.returncode == 0, result.stderr
    assert "warning: variable frame rate: kept the source's timing" in result.stderr
    report = report_of(output)
    assert report["span"]["variable_rate"] is True and report["written"]["timestamps_kept"] is True


def test_masks_made_for_a_later_span_are_refused_without_start(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "long.mp4", frames=30, fps=Fraction(25))
    made = dmedit("mask", str(source), "--mask-prompt", "a square", "--model", "tiny", "--frames", "4",
                  "--start", "20", "-o", str(tmp_path / "made"))
    assert made.returncode == 0, made.stderr
    assert made.stdout.split() == [str(tmp_path / "made.mask.mp4"), str(tmp_path / "made.masks")]
    folder = tmp_path / "made.masks"
    output = tmp_path / "out.mp4"
    refused = run_tiny(source, output, "--mask", str(folder))
    assert_clean_failure(refused, code=EXIT_INPUT, mentions="were made for frames 20..23 (--start 20", folder=tmp_path)
    accepted = run_tiny(source, output, "--mask", str(folder), "--start", "20")
    assert accepted.returncode == 0, accepted.stderr
