"""The mask a run used is kept beside its output (OUT.masks/, the form `--mask DIR` reads), and
`dmedit eval` scores the object region from it: real `dmedit` processes on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import make_clip
from test_cli_errors import dmedit

RUN = ("--src", "a red square", "--tgt", "a green square", "--model", "tiny", "--steps", "1")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames, 96x64: a red square moving right, a blue disc moving left."""
    return make_clip(tmp_path_factory.mktemp("kept") / "clip.mp4", width=96, height=64, frames=12)


def folder_masks(folder: Path) -> np.ndarray:
    """The numbered PNGs of a mask folder as (T,H,W) bool."""
    return np.stack([cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) > 0 for png in sorted(folder.glob("*.png"))])


def eval_record(clip: Path, output: Path, *flags: str) -> dict:
    result = dmedit("eval", str(clip), str(output), "--scorers", "none", "--json", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_detected_mask_is_kept_and_eval_scores_outside_it(tmp_path: Path, clip: Path) -> None:
    output = tmp_path / "edit.mp4"
    result = dmedit("run", str(clip), *RUN, "--start", "2", "--frames", "5", "-o", str(output))
    assert result.returncode == 0, result.stderr
    kept = tmp_path / "edit.masks"
    report = json.loads((tmp_path / "edit.json").read_text())
    assert report["resolved"]["mask"] == "detected" and report["masks"] == str(kept)
    assert json.loads((kept / "span.json").read_text())["indices"] == [2, 3, 4, 5, 6]

    # The same detection through `dmedit mask` gives the same masks: the run kept the mask it used.
    preview = dmedit("mask", str(clip), "--mask-prompt", "a red square", "--model", "tiny", "--start", "2",
                     "--frames", "5", "-o", str(tmp_path / "alone"))
    assert preview.returncode == 0, preview.stderr
    masks = folder_masks(kept)
    assert masks.shape == (5, 64, 96) and 0 < masks.mean() < 1
    assert np.array_equal(masks, folder_masks(tmp_path / "alone.masks"))
    assert report["mask"]["coverage"] == pytest.approx(masks.mean(), abs=1e-6)

    record = eval_record(clip, output)
    assert record["mask"]["from"] == f"the run's saved mask: {kept}"
    assert 0 < record["mask"]["coverage"] < 1, "the object region, not every pixel"
    assert "no mask" not in record["metrics"]["psnr_outside_mask"]["model"]
    assert eval_record(clip, output, "--mask", "full")["mask"] == {"from": "full", "coverage": None}


def test_a_file_mask_is_kept_replaced_by_overwrite_and_never_written_for_full(tmp_path: Path, clip: Path) -> None:
    band = np.zeros((64, 96), np.uint8)
    band[8:32, :] = 255
    cv2.imwrite(str(tmp_path / "band.png"), band)
    output, kept = tmp_path / "edit.mp4", tmp_path / "edit.masks"
    args = ("run", str(clip), *RUN, "--frames", "4", "-o", str(output))
    assert dmedit(*args, "--mask", str(tmp_path / "band.png")).returncode == 0
    assert np.array_equal(folder_masks(kept), np.repeat((band > 0)[None], 4, axis=0))
    assert eval_record(clip, output)["mask"]["coverage"] > band.mean() / 255, "grown by the run's --feather"

    cv2.imwrite(str(tmp_path / "left.png"), np.pad(np.full((64, 40), 255, np.uint8), ((0, 0), (0, 56))))
    again = dmedit(*args, "--mask", str(tmp_path / "left.png"), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert folder_masks(kept)[:, :, :40].all() and not folder_masks(kept)[:, :, 40:].any()
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []

    resumed = dmedit(*args, "--mask", str(tmp_path / "left.png"), "--resume")
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stderr

    full = tmp_path / "full.mp4"
    assert dmedit("run", str(clip), *RUN, "--frames", "4", "--mask", "full", "-o", str(full)).returncode == 0
    assert not (tmp_path / "full.masks").exists()
    assert json.loads((tmp_path / "full.json").read_text())["masks"] is None
    assert eval_record(clip, full)["mask"]["from"] == "full"


def test_a_run_given_its_own_mask_folder_leaves_it_as_it_is(tmp_path: Path, clip: Path) -> None:
    base = tmp_path / "edit"
    assert dmedit("mask", str(clip), "--mask-prompt", "a red square", "--model", "tiny", "--frames", "4",
                  "-o", str(base)).returncode == 0
    kept = tmp_path / "edit.masks"
    before = {path.name: path.stat().st_mtime_ns for path in kept.iterdir()}
    result = dmedit("run", str(clip), *RUN, "--frames", "4", "--mask", str(kept), "-o", str(tmp_path / "edit.mp4"))
    assert result.returncode == 0, result.stderr
    assert {path.name: path.stat().st_mtime_ns for path in kept.iterdir()} == before, "an input is never rewritten"
    assert json.loads((tmp_path / "edit.json").read_text())["masks"] == str(kept)
