"""Commands that agree with each other (issue 23, item 8): every command that writes into a folder
creates it when missing, and takes it away again when the command fails; `ablate -h` documents only
options ablate has; `ablate --mask full` says that its "w/o mask" row repeats the full method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clips import make_clip
from dmedit.cli.app import app
from test_cli_errors import EXIT_INPUT, EXIT_USAGE, assert_clean_failure
from warm_dmedit import dmedit

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames, 96x64, a red square moving right."""
    return make_clip(tmp_path_factory.mktemp("consistency") / "clip.mp4", width=96, height=64, frames=8)


def _tiny_run(video: Path, output: Path) -> list[str]:
    return ["run", str(video), "--src", "a red square", "--tgt", "a blue square", "--model", "tiny", "--mask", "full",
            "--frames", "4", "--steps", "1", "--quiet", "-o", str(output)]


def test_run_creates_the_missing_folders_of_its_output(tmp_path: Path, clip: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "new" / "dir" / "out.mp4"
    result = dmedit(*_tiny_run(clip, output))
    assert result.returncode == 0, result.stderr
    assert json.loads(output.with_suffix(".json").read_text())["written"]["path"] == str(output)


def test_a_failed_run_takes_away_the_folders_it_created(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    result = dmedit(*_tiny_run(broken, tmp_path / "new" / "dir" / "out.mp4"))
    assert_clean_failure(result, code=EXIT_INPUT, mentions="broken.mp4", folder=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.mp4"], "no empty new/dir/ left"


def test_an_output_below_a_file_is_a_usage_error(tmp_path: Path, clip: Path) -> None:
    result = dmedit(*_tiny_run(clip, clip / "out.mp4"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="is a file, not a folder", folder=tmp_path)


def test_mask_and_eval_create_the_missing_folders_of_their_outputs(tmp_path: Path, clip: Path,
                                                                   tiny_model_dir: Path) -> None:
    base = tmp_path / "masks" / "bird"
    made = dmedit("mask", str(clip), "--mask-prompt", "a red square", "--model", "tiny", "--frames", "4", "--quiet",
                  "-o", str(base))
    assert made.returncode == 0, made.stderr
    assert base.with_name("bird.mask.mp4").is_file() and len(list(base.with_name("bird.masks").glob("*.png"))) == 4
    scores = tmp_path / "scores" / "eval.json"
    scored = dmedit("eval", str(clip), str(clip), "--scorers", "none", "--out", str(scores))
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scores.read_text())["edited"] == str(clip) and scores.with_suffix(".png").is_file()


def test_ablate_help_documents_only_the_options_ablate_has() -> None:
    shown = runner.invoke(app, ["ablate", "-h"], terminal_width=200, env={"COLUMNS": "200"}).output
    assert "--out-dir" in shown and "--steps" in shown
    for option in ("--skip-existing", "--resume", "--output", "--no-mask", "--eval-scorers"):
        assert option not in shown, option


def test_ablate_with_the_full_mask_says_the_no_mask_row_repeats_the_full_method(
        tmp_path: Path, clip: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "ablation"
    result = dmedit("ablate", str(clip), "--src", "a red square", "--tgt", "a blue square", "--model", "tiny",
                    "--mask", "full", "--steps", "1", "--frames", "4", "--scorers", "none", "--out-dir", str(folder))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: --mask full")]
    assert len(warnings) == 1 and "'w/o mask'" in warnings[0], result.stderr
    assert (folder / "full.mp4").read_bytes() == (folder / "no-mask.mp4").read_bytes(), "what the warning says"
