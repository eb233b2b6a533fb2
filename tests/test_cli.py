"""End-to-end `dmedit` runs on the tiny model: what a user gets on disk and on the terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from clips import make_clip
from dmedit.cli.app import app
from test_cli_errors import dmedit
from test_figures import matplotlib_png, panel_size

runner = CliRunner()


def streams(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        facts = {
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "rate": video.average_rate,
            "frames": sum(1 for _ in container.decode(video=0)),
            "pix_fmt": video.codec_context.pix_fmt,
            "codec": video.codec_context.name,
            "audio": len(container.streams.audio) > 0,
        }
    return facts


def test_version_is_fast_and_does_not_import_torch() -> None:
    code = "import sys; from dmedit.cli.app import app; print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"
    result = dmedit("--version")
    assert result.returncode == 0 and result.stdout.startswith("dmedit ")


def test_help_lists_exit_codes_and_panels() -> None:
    result = runner.invoke(app, ["run", "-h"], terminal_width=200)
    assert result.exit_code == 0
    for text in ("--src", "--tgt", "--no-spatial-ssm", "--mask-prompt", "Method", "Masks", "Output"):
        assert text in result.output
    top = runner.invoke(app, ["-h"], terminal_width=200)
    assert "130 interrupted" in top.output


@pytest.mark.parametrize("command", ["run", "mask"])
def test_help_shows_every_options_default(command: str) -> None:
    import typer.main

    result = runner.invoke(app, [command, "-h"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0
    rows = {next(word for word in line.split() if word.startswith("--")): line
            for line in result.output.splitlines() if line.startswith("│ ") and " --" in line}
    options = [param for param in typer.main.get_command(app).commands[command].params
               if param.param_type_name == "option" and not param.is_flag and param.name != "help"]
    assert len(options) > 8
    for option in options:
        name = max(option.opts, key=len)
        assert name in rows, f"{name} is not in the help"
        if not option.required:
            assert "[default: " in rows[name], f"{name} hides its default: {rows[name]}"
    assert "[default: zeroscope]" in rows["--model"]
    assert ("IN.dmedit.mp4" if command == "run" else "(IN)") in rows["--output"]


def test_probe_json_reports_the_exact_rate(ntsc_clip: Path) -> None:
    result = dmedit("probe", str(ntsc_clip), "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["fps"] == "30000/1001"
    assert facts["width"] == 96 and facts["height"] == 64 and facts["frame_count"] == 24
    assert facts["has_audio"] is False


def test_probe_on_the_real_clip(real_clip: Path) -> None:
    result = dmedit("probe", str(real_clip), "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert (facts["width"], facts["height"]) == (176, 144) and facts["fps"] == "30000/1001"


def test_run_tiny_writes_video_report_compare_and_plot(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip één.mp4", width=97, height=63, frames=12, audio=True)
    output = tmp_path / "out put.mp4"
    result = dmedit("run", str(source), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--frames", "6", "--start", "2", "--steps", "3", "--compare", "--plot", "-o", str(output))
    assert result.returncode == 0, result.stderr
    facts = streams(output)
    assert (facts["width"], facts["height"]) == (98, 64), "source size, padded to even for yuv420p"
    assert facts["frames"] == 6 and facts["rate"] == Fraction(30000, 1001)
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p" and facts["audio"]
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["steps_done"] == 3 and report["model"]["name"] == "tiny"
    assert set(report["loss_history"]) >= {"dds", "spatial", "temporal"}
    assert all(len(report["loss_history"][k]) == 3 for k in ("dds", "spatial", "temporal"))
    assert report["span"]["indices"][0] == 2 and report["edit"]["steps"] == 3
    assert "torch" in report["versions"] and "total" in report["timings_s"]
    assert report["resolved"] == {"device": "cpu", "dtype": "float32", "frames": 6, "model": "tiny", "mask": "detected",
                                  "detector": "tiny-detector"}
    assert report["input"]["fps"] == "30000/1001" and report["peak_memory"]["rss_mib"] > 0
    compare = streams(tmp_path / "out put.compare.mp4")
    assert compare["width"] >= 3 * 97 and compare["frames"] == 6
    assert matplotlib_png(tmp_path / "out put.loss.png") == panel_size(3), "a panel per loss term"
    assert report["masks"] == str(tmp_path / "out put.masks"), "the detected mask is kept"
    assert len(list((tmp_path / "out put.masks").glob("*.png"))) == 6
    assert not (tmp_path / "out put.run").exists(), "the checkpoint folder is removed after success"


def test_run_default_output_name_model_size_and_quiet(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", width=96, height=64, frames=8, fps=Fraction(25))
    result = dmedit("run", str(source), "--src", "a", "--tgt", "b", "--model", "tiny", "--steps", "2",
                    "--frames", "4", "--mask", "full", "--out-size", "model", "--no-audio", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "quiet: nothing on stderr"
    assert result.stdout == f"{tmp_path / 'clip.dmedit.mp4'}\n", "the written path on stdout, for scripts"
    facts = streams(tmp_path / "clip.dmedit.mp4")
    assert (facts["width"], facts["height"]) == (64, 64) and facts["rate"] == 25 and not facts["audio"]


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, ntsc_clip: Path) -> None:
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--steps", "4",
                    "--frames", "4", "--mask", "full", "--log-every", "2", "-o", str(tmp_path / "p.mp4"))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr, "no terminal escape codes in a log"
    step_lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["1/4", "2/4", "4/4"]
    assert any(line.startswith("load model: done") for line in result.stderr.splitlines())


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "long.mp4"
    args = [sys.executable, "-m", "dmedit", "run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny",
            "--frames", "4", "--mask", "full", "--steps", "12", "--log-every", "1", "-o", str(output)]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ.copy())
    for line in process.stderr:
        if line.startswith("step 2/"):
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, rest
    assert "--resume" in rest and "Traceback" not in rest
    assert not output.exists(), "no partial MP4 after an interrupt"
    assert (tmp_path / "long.run").is_dir()
    resumed = dmedit(*args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["steps_done"] == 12 and len(report["loss_history"]["dds"]) == 12


@pytest.mark.parametrize("fps_flag", [["--stride", "2"], ["--fps", "10"]])
def test_sampled_spans_keep_the_sampled_rate(tmp_path: Path, ntsc_clip: Path, fps_flag: list[str]) -> None:
    output = tmp_path / "s.mp4"
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--steps", "1",
                    "--frames", "4", "--mask", "full", *fps_flag, "-o", str(output))
    assert result.returncode == 0, result.stderr
    facts = streams(output)
    expected = Fraction(15000, 1001) if fps_flag[0] == "--stride" else Fraction(10)
    assert facts["frames"] == 4 and facts["rate"] == expected
