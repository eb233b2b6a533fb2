"""`dmedit models`, out-of-memory and progress rendering as a user sees them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from dmedit.cli.app import app
from dmedit.core.console import Reporter
from test_cli_errors import dmedit

runner = CliRunner()


def test_models_lists_every_entry_with_resolution_frames_and_presence() -> None:
    result = dmedit("models")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"zeroscope", "modelscope", "tiny", "grounding-dino-tiny", "tiny-detector"} <= set(rows)
    assert "576x320" in rows["zeroscope"] and "8/48" in rows["zeroscope"] and "missing" in rows["zeroscope"]
    assert "256x256" in rows["modelscope"]


def test_models_show_names_the_source_and_key_layers() -> None:
    result = dmedit("models", "show", "zeroscope")
    assert result.returncode == 0, result.stderr
    assert "cerspense/zeroscope_v2_576w" in result.stdout and "attn1" in result.stdout
    unknown = dmedit("models", "show", "modelscop")
    assert unknown.returncode == 2 and "modelscope" in unknown.stderr


def test_models_pull_fails_cleanly_offline() -> None:
    result = dmedit("models", "pull", "zeroscope")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and "zeroscope" in result.stderr


def test_a_registry_entry_with_path_runs_end_to_end(tmp_path: Path, tiny_model_dir: Path, ntsc_clip: Path) -> None:
    registry = tmp_path / "mine.toml"
    registry.write_text(f'[models.my-tiny]\nbase = "tiny"\npath = "{tiny_model_dir}"\n')
    output = tmp_path / "mine.mp4"
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "my-tiny", "--registry",
                    str(registry), "--mask", "full", "--steps", "1", "--frames", "4", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert output.exists()


def test_out_of_memory_exits_5_without_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ntsc_clip: Path) -> None:
    import dmedit.engine.editor

    def exhausted(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(dmedit.engine.editor, "_step", exhausted)
    output = tmp_path / "oom.mp4"
    result = runner.invoke(app, ["run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask",
                                 "full", "--frames", "4", "-o", str(output)])
    assert result.exit_code == 5, result.output
    assert "out of memory" in result.output and not output.exists()


def test_terminal_progress_shows_a_bar_with_terms_and_rate() -> None:
    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=True, width=160))
    with reporter.steps(total=4) as progress:
        for step in range(4):
            progress.update(step, {"t": 500.0, "dds": 0.25, "spatial": 0.5})
    text = buffer.getvalue()
    assert "4/4" in text and "dds=0.25" in text and "step/s" in text and "\x1b[" in text


def test_quiet_prints_nothing_but_errors() -> None:
    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=False), quiet=True)
    with reporter.stage("probe"):
        pass
    reporter.release()
    reporter.error("bad thing")
    assert buffer.getvalue().strip() == "error: bad thing"


def test_a_failed_write_leaves_no_half_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ntsc_clip: Path) -> None:
    import dmedit.runs.bundle

    def disk_full(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dmedit.runs.bundle, "write_json", disk_full)
    output = tmp_path / "full.mp4"
    result = runner.invoke(app, ["run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask",
                                 "full", "--frames", "4", "--steps", "1", "--compare", "--plot", "-o", str(output)])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".run")) == []


def test_no_mask_skips_detection_and_edits_the_whole_frame(tmp_path: Path, ntsc_clip: Path) -> None:
    import json

    output = tmp_path / "whole.mp4"
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4",
                    "--steps", "1", "--no-mask", "--box-threshold", "1", "-o", str(output))
    assert result.returncode == 0, result.stderr
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["resolved"]["mask"] == "full" and report["edit"]["use_mask"] is False


def test_a_resumed_run_reports_from_where_it_resumed() -> None:
    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=False), log_every=50)
    reporter.release()
    with reporter.steps(total=60) as progress:
        for step in range(40, 60):
            progress.update(step, {"t": 100.0, "dds": 0.5})
    lines = buffer.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["41/60", "50/60", "60/60"]
