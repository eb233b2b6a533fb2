"""Masks through the command line: the preview, user masks fed back to `run`, detection inside
`run`, and compositing at source resolution (outside the mask the source survives)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from clips import make_clip
from test_cli_errors import dmedit


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Luma (BT.601 Y) PSNR, the usual codec measure: yuv420p halves chroma resolution anyway."""
    weights = np.array([0.299, 0.587, 0.114])
    mse = np.mean((a.astype(np.float64) @ weights - b.astype(np.float64) @ weights) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160x96 (wider than the tiny model's 64x64 square), 29.97 fps, 8 frames."""
    return make_clip(tmp_path_factory.mktemp("wide") / "wide.mp4", width=160, height=96, frames=8)


def test_mask_preview_writes_video_and_pngs_that_run_accepts(tmp_path: Path, wide_clip: Path) -> None:
    base = tmp_path / "bird"
    result = dmedit("mask", str(wide_clip), "--mask-prompt", "a red square", "--model", "tiny", "--frames", "6",
                    "-o", str(base))
    assert result.returncode == 0, result.stderr
    preview, folder = tmp_path / "bird.mask.mp4", tmp_path / "bird.masks"
    frames = decode(preview)
    assert frames.shape == (6, 96, 160, 3)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 6
    first = cv2.imread(str(pngs[0]), cv2.IMREAD_GRAYSCALE)
    assert first.shape == (96, 160) and set(np.unique(first)) <= {0, 255} and first.max() == 255
    output = tmp_path / "edited.mp4"
    edited = dmedit("run", str(wide_clip), "--src", "a red square", "--tgt", "a blue square", "--model", "tiny",
                    "--frames", "6", "--steps", "2", "--mask", str(folder), "-o", str(output))
    assert edited.returncode == 0, edited.stderr
    assert decode(output).shape == (6, 96, 160, 3)


def test_the_real_clip_mask_preview(tmp_path: Path, real_clip: Path) -> None:
    result = dmedit("mask", str(real_clip), "--mask-prompt", "a man", "--detector", "tiny-detector", "--model", "tiny",
                    "-o", str(tmp_path / "carphone"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "carphone.masks").glob("*.png"))) == 8
    assert decode(tmp_path / "carphone.mask.mp4").shape[1:3] == (144, 176)


def test_run_detects_masks_by_default_and_reports_no_detection(tmp_path: Path, wide_clip: Path) -> None:
    output = tmp_path / "detected.mp4"
    result = dmedit("run", str(wide_clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--frames", "4", "--steps", "1", "--compare", "-o", str(output))
    assert result.returncode == 0, result.stderr
    compare = decode(tmp_path / "detected.compare.mp4")
    assert compare.shape[2] == 3 * 160, "source | mask overlay | edited"
    missing = dmedit("run", str(wide_clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                     "--frames", "4", "--steps", "1", "--box-threshold", "1", "-o", str(tmp_path / "none.mp4"))
    assert missing.returncode == 3, missing.stderr
    assert "a red square" in missing.stderr and "--mask full" in missing.stderr
    assert not (tmp_path / "none.mp4").exists()


def left_half_masks(folder: Path, *, width: int, height: int, frames: int) -> Path:
    folder.mkdir()
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 255
    for index in range(frames):
        cv2.imwrite(str(folder / f"{index:05d}.png"), mask)
    return folder


def test_outside_a_left_half_mask_the_output_is_the_source(tmp_path: Path) -> None:
    source_path = make_clip(tmp_path / "src.mp4", width=192, height=108, frames=6, fps=Fraction(30000, 1001), crf=8)
    masks = left_half_masks(tmp_path / "left", width=192, height=108, frames=6)
    outputs = {lr: tmp_path / f"half-lr{lr}.mp4" for lr in ("50", "0")}
    for lr, output in outputs.items():
        result = dmedit("run", str(source_path), "--src", "a red square", "--tgt", "a yellow star", "--model", "tiny",
                        "--frames", "6", "--steps", "3", "--mask", str(masks), "--feather", "2", "--crf", "18",
                        "--lr", lr, "-o", str(output))
        assert result.returncode == 0, result.stderr
    source, edited, unedited = decode(source_path), decode(outputs["50"]), decode(outputs["0"])
    assert edited.shape == source.shape, "written at the source resolution"
    right = slice(192 // 2 + 8, None)
    left = slice(0, 192 // 2 - 8)
    assert psnr(edited[:, :, right], source[:, :, right]) > 40.0
    assert psnr(unedited[:, :, right], source[:, :, right]) > 40.0
    # --lr 0 leaves the latents as encoded: inside the mask it shows only the VAE's round trip.
    assert psnr(edited[:, :, left], unedited[:, :, left]) < 30.0, "inside the mask the optimisation shows"
    output = outputs["50"]
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["fit"]["mode"] == "crop"


def test_no_composite_writes_the_models_whole_frame(tmp_path: Path) -> None:
    source_path = make_clip(tmp_path / "src.mp4", width=64, height=64, frames=4, crf=8)
    masks = left_half_masks(tmp_path / "left", width=64, height=64, frames=4)
    output = tmp_path / "whole.mp4"
    result = dmedit("run", str(source_path), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4",
                    "--steps", "1", "--mask", str(masks), "--no-composite", "-o", str(output))
    assert result.returncode == 0, result.stderr
    source, edited = decode(source_path), decode(output)
    assert psnr(edited[:, :, 40:], source[:, :, 40:]) < 30.0, "the tiny VAE's own pixels, also outside the mask"
