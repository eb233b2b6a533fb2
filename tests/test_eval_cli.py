"""`dmedit eval`, `dmedit run --eval` and `dmedit ablate` through real processes, on generated clips
and the tiny video model; the model-based metrics run on the tiny random-weight scorers
(`--scorers tiny`), so these tests exercise their real loading and scoring code offline."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from clips import make_clip
from test_cli_errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, assert_clean_failure, dmedit
from test_cli_faults import dead_pid
from test_figures import matplotlib_png, panel_size

PAPER_METRICS = {"text_align", "frame_con", "frame_lpips", "motion_fidelity"}
WEIGHT_FREE = {"motion_fidelity_lk", "flow_epe", "warp_error", "psnr_outside_mask", "ssim_outside_mask"}
ABLATION_RUNS = ("full", "no-mask", "no-s-ssm", "no-t-ssm")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 frames, 96x64: a red square moving right, a blue disc moving left."""
    return make_clip(tmp_path_factory.mktemp("eval") / "clip.mp4", width=96, height=64, frames=16)


@pytest.fixture(scope="module")
def square_mask(clip: Path) -> Path:
    """A PNG covering the band the red square crosses (rows 8..32)."""
    mask = np.zeros((64, 96), np.uint8)
    mask[8:32, :] = 255
    path = clip.with_name("square.png")
    cv2.imwrite(str(path), mask)
    return path


def record_of(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_identical_videos_score_best(clip: Path) -> None:
    record = record_of(dmedit("eval", str(clip), str(clip), "--scorers", "none", "--json"))
    metrics = record["metrics"]
    assert set(metrics) == WEIGHT_FREE
    assert metrics["psnr_outside_mask"]["value"] == 100.0 and metrics["flow_epe"]["value"] == 0.0
    assert metrics["motion_fidelity_lk"]["value"] == pytest.approx(1.0)
    assert metrics["ssim_outside_mask"]["value"] == pytest.approx(1.0)
    assert record["span"]["from"] == "shorter" and record["span"]["frames"] == 16
    assert "no mask" in metrics["psnr_outside_mask"]["model"], "says the outside-mask metrics cover every pixel"
    assert len(metrics["flow_epe"]["per_frame"]) == 15, "one value per neighbouring pair"


def test_run_eval_scores_into_the_report_and_eval_follows_the_report(tmp_path: Path, clip: Path,
                                                                     square_mask: Path) -> None:
    output = tmp_path / "edit.mp4"
    result = dmedit("run", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--steps", "1", "--start", "4", "--frames", "6", "--mask", str(square_mask), "--eval",
                    "--eval-scorers", "tiny", "-o", str(output))
    assert result.returncode == 0, result.stderr
    scores = json.loads(output.with_suffix(".json").read_text())["eval"]
    assert set(scores["metrics"]) == PAPER_METRICS | WEIGHT_FREE
    assert scores["span"]["source_indices"] == list(range(4, 10)) and scores["target_text"] == "a green square"
    assert scores["mask"]["from"] == "file" and 0 < scores["mask"]["coverage"] < 1
    curves = [name for name, metric in scores["metrics"].items() if metric["per_frame"]]
    assert matplotlib_png(tmp_path / "edit.eval.png") == panel_size(len(curves)), "the curves beside the report"

    # `dmedit eval` on the written files finds the same span, mask and target in the report.
    record = record_of(dmedit("eval", str(clip), str(output), "--scorers", "none", "--json"))
    assert record["span"] == {"from": "report", "frames": 6, "source_indices": list(range(4, 10))}
    assert record["mask"]["from"] == f"the run's saved mask: {tmp_path / 'edit.masks'}"
    assert record["target_text"] == "a green square"
    masked = record["metrics"]["psnr_outside_mask"]["value"]

    # --mask full scores every pixel: the edit inside the mask now counts, so PSNR drops.
    table = dmedit("eval", str(clip), str(output), "--scorers", "none", "--mask", "full",
                   "--out", str(tmp_path / "scores.json"))
    assert table.returncode == 0, table.stderr
    names = [line.split()[0] for line in table.stdout.splitlines()]
    assert names[0] == "metric" and set(names[1:]) == WEIGHT_FREE
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["metrics"]["psnr_outside_mask"]["value"] < masked
    curves = [name for name, metric in saved["metrics"].items() if metric["per_frame"]]
    assert matplotlib_png(tmp_path / "scores.png") == panel_size(len(curves)), "the curves beside --out"


def test_eval_flags_choose_the_span_without_a_report(tmp_path: Path, clip: Path) -> None:
    short = make_clip(tmp_path / "short.mp4", width=96, height=64, frames=6)
    record = record_of(dmedit("eval", str(clip), str(short), "--scorers", "none", "--start", "2", "--json"))
    assert record["span"] == {"from": "flags", "frames": 6, "source_indices": list(range(2, 8))}


@pytest.mark.parametrize("args, code, mentions", [
    (["missing.mp4"], EXIT_INPUT, "missing.mp4"),
    (["narrow.mp4"], EXIT_INPUT, "aspect"),
    (["CLIP", "--frames", "many"], EXIT_USAGE, "--frames"),
    (["CLIP", "--scorers", "clip"], EXIT_USAGE, "--scorers"),
    (["CLIP", "--out", "scores.txt"], EXIT_USAGE, ".json"),
])
def test_eval_errors_are_one_line(tmp_path: Path, clip: Path, args: list[str], code: int, mentions: str) -> None:
    make_clip(tmp_path / "narrow.mp4", width=64, height=64, frames=4)
    edited = str(clip) if args[0] == "CLIP" else str(tmp_path / args[0])
    extra = [str(tmp_path / a) if a.endswith(".txt") else a for a in args[1:]]
    result = dmedit("eval", str(clip), edited, "--scorers", "none", *extra)
    assert_clean_failure(result, code=code, mentions=mentions, folder=tmp_path)


def test_eval_offline_skips_the_missing_models_and_all_demands_them(tmp_path: Path, clip: Path) -> None:
    """Issue 22, item 4: the weight-free metrics always run; each model metric without its weights
    is skipped with one line naming it and the pull that adds it; --scorers all refuses instead."""
    result = dmedit("eval", str(clip), str(clip), "--offline", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record["skipped"]) == PAPER_METRICS and WEIGHT_FREE <= set(record["metrics"])
    assert not PAPER_METRICS & set(record["metrics"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(PAPER_METRICS), result.stderr
    assert all("dmedit models pull" in line or "lpips_weights" in line for line in lines), "says how to add them"
    table = dmedit("eval", str(clip), str(clip), "--offline")
    assert table.returncode == 0 and table.stdout.count("skipped") == len(PAPER_METRICS), table.stdout
    demanded = dmedit("eval", str(clip), str(clip), "--offline", "--scorers", "all")
    assert_clean_failure(demanded, code=EXIT_MODEL, mentions="dmedit models pull", folder=tmp_path)


def test_run_eval_offline_scores_weight_free_and_records_the_skipped(tmp_path: Path, clip: Path) -> None:
    output = tmp_path / "scored.mp4"
    result = dmedit("run", str(clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full", "--frames", "4",
                    "--steps", "1", "--eval", "--offline", "-o", str(output))
    assert result.returncode == 0, result.stderr
    scores = json.loads(output.with_suffix(".json").read_text())["eval"]
    assert set(scores["skipped"]) == PAPER_METRICS and set(scores["metrics"]) == WEIGHT_FREE
    said = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split()[1].rstrip(":") for line in said) == sorted(PAPER_METRICS), result.stderr


def test_run_eval_scorers_are_checked_before_the_run(tmp_path: Path, clip: Path) -> None:
    result = dmedit("run", str(clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full", "--eval",
                    "--eval-scorers", "lpips", "-o", str(tmp_path / "x.mp4"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="--eval-scorers", folder=tmp_path)


def test_ablate_checks_its_scorers_before_any_run(tmp_path: Path, clip: Path, square_mask: Path) -> None:
    folder = tmp_path / "ablation"
    result = dmedit("ablate", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--steps", "2", "--frames", "4", "--mask", str(square_mask), "--scorers", "all",
                    "--out-dir", str(folder))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 4 and len(lines) == 1 and "dmedit models pull" in lines[0], result.stderr
    assert not any(folder.glob("*.mp4")), "nothing ran"


TABLE_FILE_LIMIT = 100 * 1024
"""Bytes a file may reach: more than each file of the four 4-frame runs (their pages, 53 to 77 KB, are
the largest), less than ablation.png (about 125 KB)."""


def test_an_ablation_rerun_scores_the_finished_runs_without_running_them(
        tmp_path: Path, clip: Path, square_mask: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "ablation"
    args = ["ablate", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
            "--steps", "2", "--frames", "4", "--mask", str(square_mask), "--scorers", "none", "--out-dir", str(folder)]
    full_disk = dmedit(*args, file_size_limit=TABLE_FILE_LIMIT)  # the four runs fit, not ablation.png
    assert full_disk.returncode == 1 and "Traceback" not in full_disk.stderr, full_disk.stderr
    errors = [line for line in full_disk.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder / 'ablation.png'}: "), full_disk.stderr
    assert "MiB free on its disk" in errors[0]
    left = sorted(path.name for path in folder.iterdir())
    assert not [name for name in left if name.startswith(("ablation", "index", "."))], f"the table is all or none: {left}"
    runs = {path: path.stat().st_mtime_ns for path in folder.iterdir()}
    killed = folder / f".ablation.bundle-{dead_pid()}"  # the staging folder of an ablate killed mid-table
    killed.mkdir()
    (killed / "ablation.md").write_text("half a table")
    rerun = dmedit(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert {path: path.stat().st_mtime_ns for path in runs} == runs
    assert (folder / "ablation.md").is_file() and (folder / "ablation.mp4").is_file()
    assert not killed.exists(), "a killed ablate's staging folder is removed"
    other = dmedit(*[arg if arg != "2" else "3" for arg in args])
    assert other.returncode == 2 and "exists; pass --overwrite" in other.stderr, "other settings run nothing"


def test_ablate_writes_the_four_runs_the_table_and_the_side_by_side(tmp_path: Path, clip: Path,
                                                                     square_mask: Path) -> None:
    folder = tmp_path / "ablation"
    args = ["ablate", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
            "--steps", "2", "--frames", "4", "--mask", str(square_mask), "--scorers", "tiny", "--out-dir", str(folder)]
    result = dmedit(*args)
    assert result.returncode == 0, result.stderr
    for name in ABLATION_RUNS:
        report = json.loads((folder / f"{name}.json").read_text())
        assert report["steps_done"] == 2 and report["seed"] == json.loads((folder / "full.json").read_text())["seed"]
    edits = {name: json.loads((folder / f"{name}.json").read_text())["edit"] for name in ABLATION_RUNS}
    assert edits["no-mask"]["use_mask"] is False and edits["full"]["use_mask"] is True
    assert edits["no-s-ssm"]["lambda_spatial"] == 0 and edits["full"]["lambda_spatial"] > 0
    assert edits["no-t-ssm"]["lambda_temporal"] == 0 and edits["full"]["lambda_temporal"] > 0

    table = json.loads((folder / "ablation.json").read_text())
    assert list(table["runs"]) == list(ABLATION_RUNS)
    for run in table["runs"].values():
        assert set(run["eval"]["metrics"]) == PAPER_METRICS | WEIGHT_FREE
    rows = [line for line in (folder / "ablation.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["full method", "w/o mask", "w/o S-SSM", "w/o T-SSM"]
    assert result.stdout.splitlines()[0] == rows[0], "the table on stdout"
    with av.open(str(folder / "ablation.mp4")) as container:
        stream = container.streams.video[0]
        size, frames = (stream.codec_context.width, stream.codec_context.height), sum(1 for _ in container.decode(video=0))
    assert size[0] == 4 * 96 and size[1] > 64 and frames == 4, "four labelled panels side by side"
    curves = {name for run in table["runs"].values() for name, metric in run["eval"]["metrics"].items()
              if metric["per_frame"]}
    assert matplotlib_png(folder / "ablation.png") == panel_size(len(curves)), "a panel per metric with curves"

    again = dmedit(*args)
    assert again.returncode == EXIT_USAGE and "ablation.md exists" in again.stderr
