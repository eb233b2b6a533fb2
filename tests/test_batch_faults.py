"""Faults in the middle of `dmedit batch`, through real processes (issue 23, items 4 and 7): a full
disk fails the job it hits, starts no more jobs and exits 6 with the summary, and the rerun once
space is freed goes on; a batch that cannot write its record of a job exits 1 in one line; SIGTERM stops a Ray batch as it stops a local one (exit 143, the summary,
no Ray traceback) and the rerun goes on from the stopped job's checkpoint.

A full disk without root: RLIMIT_FSIZE in the batch's process makes a write past the limit fail
with EFBIG (Python ignores SIGXFSZ), as a full disk fails it with ENOSPC."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clips import make_clip
from test_batch import table
from test_cli_errors import dmedit
from test_cli_faults import start, wait_for_line

EXIT_FAILURE, EXIT_BATCH_FAILED, EXIT_TERMINATED = 1, 6, 143
FILE_SIZE_LIMIT = 16 * 1024
"""Bytes a file of the batch may reach: more than every file of a 4-frame job (its checkpoint is
about 11 KiB), less than the checkpoint of a 16-frame job (about 23 KiB)."""
RECORD_SIZE_LIMIT = 1024
"""Less than a job's batch record (NAME.batch.json, about 2 KiB)."""
BATCH_SECONDS = 300


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A 16-frame clip; the tiny model built before a batch runs with files limited in size."""
    return make_clip(tmp_path_factory.mktemp("faults") / "clip.mp4", frames=16)


def files_limited(args: list[str], *, limit: int) -> subprocess.CompletedProcess:
    """`dmedit ARGS` in a process whose files cannot grow past `limit` bytes."""
    return dmedit(*args, timeout=BATCH_SECONDS, file_size_limit=limit)


def totals(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_a_full_disk_stops_the_batch_and_the_rerun_goes_on(tmp_path: Path, clip: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,output,frames\n" + "".join(f"{clip},{name},{frames}\n" for name, frames in (
        ("a", 4), ("b", 16), ("c", 4), ("d", 4))))
    out = tmp_path / "out"
    args = ["batch", str(jobs), "--src", "a", "--tgt", "b", "--model", "tiny", "--steps", "1", "--mask", "full",
            "--no-html", "-o", str(out)]
    full = files_limited(args, limit=FILE_SIZE_LIMIT)
    assert full.returncode == EXIT_BATCH_FAILED and "Traceback" not in full.stderr, full.stderr
    rows = table(full)
    assert {job: row.split()[0] for job, row in rows.items()} == {
        "a": "done", "b": "failed", "c": "pending", "d": "pending"}
    assert rows["b"].startswith("failed (exit 1)"), rows["b"]
    assert "b.run/checkpoint.pt: cannot write the checkpoint (File too large); " in rows["b"], rows["b"]
    assert rows["b"].endswith("MiB free on its disk"), rows["b"]
    assert rows["c"].endswith("not started: the disk ran out of space in job b"), rows["c"]
    assert totals(full).endswith("; 2 not started: the disk ran out of space in job b; free space and run the "
                                 "batch again to go on"), totals(full)
    assert full.stderr.strip().splitlines()[-1] == (
        "error: 1 of 4 jobs failed (b); 2 not started: the disk ran out of space in job b; free space and run the "
        "batch again to go on")
    assert "[3/4] c: started" not in full.stderr
    record = json.loads((out / "b.batch.json").read_text())
    assert (record["state"], record["exit_code"], record["disk_full"]) == ("failed", 1, True), record
    assert not (out / "b.mp4").exists() and not (out / "c.batch.json").exists()

    rerun = dmedit(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert {job: row.split()[0] for job, row in table(rerun).items()} == {
        "a": "skipped", "b": "done", "c": "done", "d": "done"}
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [], "no partial file left"


def test_a_batch_record_that_cannot_be_written_is_exit_1_in_one_line(tmp_path: Path, clip: Path) -> None:
    shots, out = tmp_path / "shots", tmp_path / "out"
    shots.mkdir()
    for name in ("clip", "more"):
        (shots / f"{name}.mp4").symlink_to(clip)
    args = ["batch", str(shots), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4", "--steps", "1",
            "--mask", "full", "--no-html", "-o", str(out)]
    result = files_limited(args, limit=RECORD_SIZE_LIMIT)
    assert result.returncode == EXIT_FAILURE and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr
    assert errors[0].startswith(f"error: cannot write the batch's record of job clip: {out / 'clip.batch.json'}: "
                                "File too large; "), errors[0]
    assert errors[0].endswith("MiB free on its disk; 1 not started: the disk ran out of space in job clip; free "
                              "space and run the batch again to go on"), errors[0]
    assert {job: row.split()[0] for job, row in table(result).items()} == {"clip": "failed", "more": "pending"}
    assert list(out.iterdir()) == [], "no record, no partial file"


def test_sigterm_stops_a_ray_batch_like_a_local_one(tmp_path: Path, clip: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"input,output,steps\n{clip},a,1\n{clip},b,60\n")
    out = tmp_path / "out"
    args = ["batch", str(jobs), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "4", "--mask", "full",
            "--checkpoint-every", "2", "--no-html", "-o", str(out)]
    process = start([*args, "--ray", "local", "--workers", "1"])
    before = wait_for_line(process, "[1/2] a: done")
    checkpoint = out / "b.run" / "checkpoint.pt"
    deadline = time.monotonic() + BATCH_SECONDS
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, rest = process.communicate(timeout=BATCH_SECONDS)
    assert process.returncode == EXIT_TERMINATED, rest
    lines = [line.rstrip("\n") for line in before] + rest.strip().splitlines()
    assert all(line.startswith(("batch: ", "[1/2] a: ", "[2/2] b: ", "error: ")) for line in lines), lines  # no Ray line
    ended, error = lines[-2:]
    assert (ended.split(" after ")[0], ended.split(": ")[-1]) == ("[2/2] b: interrupted (exit 143)",
                                                                  "stopped by a signal"), rest
    assert error == ("error: batch stopped by a signal with 1 of 2 jobs done; run it again to go on (done jobs are "
                     "skipped, stopped ones resume)")
    rows = table(subprocess.CompletedProcess(args, process.returncode, stdout, rest))
    assert (rows["a"].split()[0], rows["b"].split()[:3]) == ("done", ["interrupted", "(exit", "143)"])
    assert json.loads((out / "b.batch.json").read_text())["state"] == "started" and checkpoint.exists()

    rerun = dmedit(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert {job: row.split()[0] for job, row in table(rerun).items()} == {"a": "skipped", "b": "done"}
    report = json.loads((out / "b.json").read_text())
    assert report["options"]["resume"] is True and report["steps_done"] == 60, "b went on from its checkpoint"
    assert not checkpoint.parent.exists()
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [], "no partial file left"
