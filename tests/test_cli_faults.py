"""Faults a batch script meets, through real `dmedit` processes: SIGTERM like Ctrl-C, the bundle
all-or-nothing under signals, stale partial files of killed runs, two runs on one output, and the
flags scripts pass (--resume always, --skip-existing, -q, the output path on stdout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli_errors import EXIT_USAGE, assert_clean_failure, dmedit

EXIT_TERMINATED = 143


def tiny_args(video: Path, output: Path, *extra: str) -> list[str]:
    return ["run", str(video), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4", "--mask", "full",
            "-o", str(output), *extra]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmedit", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy(), stdin=subprocess.DEVNULL)


def wait_for_line(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read stderr lines until one starts with `prefix`; returns the lines read."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the run ended before printing {prefix!r}: {''.join(lines)}")


def bundle_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(("out", ".out")))


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_sigterm_in_the_loop_checkpoints_and_resume_finishes(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "out.mp4"
    args = tiny_args(ntsc_clip, output, "--steps", "12", "--log-every", "1")
    process = start(args)
    wait_for_line(process, "step 2/")
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == EXIT_TERMINATED, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("error: terminated after step") and "--resume" in last and "Traceback" not in rest
    assert not output.exists() and (tmp_path / "out.run" / "checkpoint.pt").is_file()
    resumed = dmedit(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "out.json").read_text())["steps_done"] == 12


def test_sigterm_while_the_bundle_is_written_leaves_all_or_nothing(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "out.mp4"
    process = start(tiny_args(ntsc_clip, output, "--steps", "2", "--log-every", "1", "--compare", "--plot"))
    wait_for_line(process, "step 2/2")
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    code = process.wait(timeout=120)
    names = bundle_files(tmp_path)
    if code == 0:
        assert names == ["out.compare.mp4", "out.html", "out.json", "out.loss.png", "out.mp4", "out.source.mp4"], names
    else:
        assert code == EXIT_TERMINATED and "Traceback" not in rest, rest
        assert names == [], f"a terminated run leaves no file behind: {names}"


def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "out.mp4"
    first = start(tiny_args(ntsc_clip, output, "--steps", "500", "--log-every", "1"))
    try:
        wait_for_line(first, "step 1/")
        second = dmedit(*tiny_args(ntsc_clip, output, "--steps", "1"))
        assert second.returncode == EXIT_USAGE, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "being written by another dmedit run" in lines[0]
        assert f"pid {first.pid}" in lines[0] and str(output) in lines[0]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert not output.exists()


def test_stale_partials_of_a_killed_run_are_removed(tmp_path: Path, ntsc_clip: Path) -> None:
    pid = dead_pid()
    stale = [tmp_path / f".out.mp4.partial-{pid}.mp4", tmp_path / f".out.compare.mp4.partial-{pid}.mp4",
             tmp_path / f".out.json.partial-{pid}"]
    for path in stale:
        path.write_bytes(b"half a file")
    (tmp_path / f".out.bundle-{pid}").mkdir()
    (tmp_path / f".out.bundle-{pid}" / "out.json").write_text("{}")
    alive = tmp_path / f".out.mp4.partial-{os.getpid()}.mp4"
    alive.write_bytes(b"a running process's file")
    result = dmedit(*tiny_args(ntsc_clip, tmp_path / "out.mp4", "--steps", "1"))
    assert result.returncode == 0, result.stderr
    assert bundle_files(tmp_path) == sorted(["out.html", "out.json", "out.mp4", "out.source.mp4", alive.name])


def test_scripts_may_always_pass_resume(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "out.mp4"
    result = dmedit(*tiny_args(ntsc_clip, output, "--steps", "2", "--resume"))
    assert result.returncode == 0, result.stderr
    assert "no checkpoint" in result.stderr and "starting from step 0" in result.stderr
    assert result.stdout.strip() == str(output), "the written path goes to stdout"


def test_resume_on_a_finished_output_touches_nothing_and_overwrite_runs_again(tmp_path: Path, ntsc_clip: Path) -> None:
    """Scripts that always pass --resume do not redo finished clips (issue 23, item 2)."""
    output = tmp_path / "done.mp4"
    assert dmedit(*tiny_args(ntsc_clip, output, "--steps", "2")).returncode == 0
    written = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    again = dmedit(*tiny_args(ntsc_clip, output, "--steps", "2", "--resume", "-q"))
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert lines == [f"{output} is complete; nothing to resume (--overwrite runs it again)"]
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == written
    rerun = dmedit(*tiny_args(ntsc_clip, output, "--steps", "2", "--resume", "--overwrite"))
    assert rerun.returncode == 0 and rerun.stdout.strip() == str(output), rerun.stderr
    assert output.stat().st_mtime_ns > written[output]


def test_skip_existing_with_quiet_still_says_it_skipped(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "out.mp4"
    output.write_bytes(b"an earlier result")
    result = dmedit(*tiny_args(ntsc_clip, output, "--skip-existing", "-q"))
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"{output}: exists, skipped (--skip-existing)"]
    assert output.read_bytes() == b"an earlier result"


def test_skip_existing_and_overwrite_together_are_a_usage_error(tmp_path: Path, ntsc_clip: Path) -> None:
    result = dmedit(*tiny_args(ntsc_clip, tmp_path / "out.mp4", "--skip-existing", "--overwrite"))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="--overwrite and --skip-existing", folder=tmp_path)


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, ntsc_clip: Path) -> None:
    first, second = tmp_path / "one.mp4", tmp_path / "two.mp4"
    for output in (first, second):
        result = dmedit(*tiny_args(ntsc_clip, output, "--steps", "2", "--seed", "7", "--compare"))
        assert result.returncode == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "one.compare.mp4").read_bytes() == (tmp_path / "two.compare.mp4").read_bytes()


@pytest.mark.parametrize("flags, mentions", [
    (["--t-max", "5000"], "--t-max must be between 0 and 999"),
    (["--seed", str(2**70)], "--seed must be between 0 and"),
    (["--feather", "1e9"], "--feather must be between 0 and 1000"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
    (["--dilate", "inf"], "--dilate must be a finite number"),
    (["--fps", "nan"], "--fps must be a finite number"),
    (["--t-min", "900", "--t-max", "100"], "--t-min 900 is above --t-max 100"),
    (["--steps", "x"], "Invalid value for '--steps'"),
])
def test_bad_numbers_fail_in_one_line_before_any_model_is_loaded(tmp_path: Path, ntsc_clip: Path,
                                                                 flags: list[str], mentions: str) -> None:
    # zeroscope's weights are not on this machine: reaching the model would be exit 4, not 2.
    result = dmedit("run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "zeroscope",
                    "-o", str(tmp_path / "out.mp4"), *flags)
    assert_clean_failure(result, code=EXIT_USAGE, mentions=mentions, folder=tmp_path)
