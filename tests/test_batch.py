"""`dmedit batch` through real processes, as a user or a script meets it: a folder of clips with a
corrupt one, reruns that skip done jobs and retry failures, --force, a jobs file with per-job
prompts and options, bad jobs files refused up front, and a killed batch that goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clips import make_clip
from test_cli_errors import dmedit
from test_cli_faults import start, wait_for_line

EXIT_USAGE, EXIT_INPUT, EXIT_BATCH_FAILED = 2, 3, 6
TINY = ("--model", "tiny", "--frames", "4", "--steps", "1")
BUNDLE = tuple(f"{job}{suffix}" for job in "abc"
               for suffix in (".batch.json", ".html", ".json", ".masks", ".mp4", ".source.mp4"))
"""Each job's files: its batch record, page, run report, the detected mask it used, the edit, the
source span its page plays."""


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good clips and one corrupt one."""
    folder = tmp_path_factory.mktemp("shots")
    for name in "abc":
        make_clip(folder / f"{name}.mp4", frames=8)
    (folder / "broken.mp4").write_text("this is not a video\n")
    return folder


def batch(*args: str) -> subprocess.CompletedProcess:
    return dmedit("batch", *args)


def events(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def ends(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {event["job"]: event for event in events(result) if event["event"] == "end"}


def table(result: subprocess.CompletedProcess) -> dict[str, str]:
    """The summary table on stdout: job -> the rest of its row."""
    rows = result.stdout.strip().splitlines()
    assert rows[0].split() == ["job", "status", "seconds", "output"], result.stdout
    return {row.split()[0]: " ".join(row.split()[1:]) for row in rows[1:-1]}


def test_a_corrupt_clip_fails_alone_and_reruns_retry_only_the_failure(tmp_path: Path, shots: Path) -> None:
    out = tmp_path / "out"
    args = (str(shots), "--src", "a square", "--tgt", "a circle", *TINY, "-o", str(out))
    first = batch(*args, "--log-format", "jsonl")
    assert first.returncode == EXIT_BATCH_FAILED, first.stderr
    done = ends(first)
    assert {job: event["status"] for job, event in done.items()} == {
        "a": "done", "b": "done", "broken": "failed", "c": "done"}
    assert done["broken"]["exit_code"] == EXIT_INPUT and "broken.mp4" in done["broken"]["reason"]
    assert events(first)[-1] | {"seconds": 0} == {"event": "summary", "jobs": 4, "done": 3, "skipped": 0,
                                                   "failed": 1, "interrupted": 0, "pending": 0, "seconds": 0,
                                                   "halted": None}
    assert {done[job]["model_loads"] for job in "abc"} == {2}, "one video model and one detector, loaded once"
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith("broken")) == sorted(
        [*BUNDLE, "index.html"]), "each job's bundle and the batch's page"
    assert not (out / "broken.mp4").exists()
    last = first.stderr.strip().splitlines()[-1]
    assert last == "error: 1 of 4 jobs failed (broken); run the batch again to retry them"
    assert "Traceback" not in first.stderr
    written = {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in "abc"}

    rerun = batch(*args)
    assert rerun.returncode == EXIT_BATCH_FAILED, rerun.stderr
    rows = table(rerun)
    assert {job: row.split()[0] for job, row in rows.items()} == {
        "a": "skipped", "b": "skipped", "broken": "failed", "c": "skipped"}
    assert rows["broken"].startswith("failed (exit 3)") and "broken.mp4" in rows["broken"]
    assert "[3/4] broken: started" in rerun.stderr, "the failed job is tried again"
    assert rerun.stdout.strip().splitlines()[-1].startswith("4 jobs: 0 done, 3 skipped, 1 failed in ")
    assert {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in "abc"} == written

    forced = batch(*args, "--force", "--log-format", "jsonl")
    assert forced.returncode == EXIT_BATCH_FAILED, forced.stderr
    assert {job: event["status"] for job, event in ends(forced).items() if job != "broken"} == {
        "a": "done", "b": "done", "c": "done"}
    assert all((out / f"{name}.mp4").stat().st_mtime_ns != written[name] for name in "abc")


def test_a_jobs_file_gives_each_job_its_own_prompts_and_options(tmp_path: Path, shots: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,src,tgt,--steps,guidance-scale,no_audio,compare,output\n"
                    f"{shots / 'a.mp4'},a square,a red circle,2,7.5,true,true,\n"
                    f"{shots.name}/b.mp4,a disc,a star,,,,,b-star\n")
    (tmp_path / shots.name).symlink_to(shots)
    out = tmp_path / "out"
    result = batch(str(jobs), "--model", "tiny", "--frames", "4", "--steps", "1", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert set(table(result)) == {"a", "b-star"}
    first, second = (json.loads((out / name).read_text()) for name in ("a.json", "b-star.json"))
    assert (first["options"]["src"], first["options"]["tgt"], second["options"]["src"], second["options"]["tgt"]) == (
        "a square", "a red circle", "a disc", "a star")
    assert (first["steps_done"], second["steps_done"]) == (2, 1), "a job's own value wins over the command line's"
    assert (first["edit"]["guidance_scale"], first["seed"], second["seed"]) == (7.5, 3, 3)
    assert second["edit"]["guidance_scale"] != 7.5
    assert (first["options"]["output"]["audio"], second["options"]["output"]["audio"]) == (False, True)
    assert (out / "a.compare.mp4").is_file() and not (out / "b-star.compare.mp4").exists()
    assert second["options"]["video"] == str(tmp_path / shots.name / "b.mp4"), "relative to the jobs file"


@pytest.mark.parametrize("name, text, mentions", [
    ("jobs.csv", "input,src,tgt,stepz\na.mp4,a,b,1\n", "jobs.csv row 1: unknown column 'stepz'"),
    ("jobs.csv", "input,src,tgt,steps\na.mp4,a,b,1\na.mp4,a,b,0\n", "jobs.csv row 3: column 'steps'"),
    ("jobs.jsonl", '{"input": "a.mp4", "src": "a"}\n', "jobs.jsonl row 1: no tgt"),
    ("jobs.jsonl", '{"input": "a.mp4", "src": "a", "tgt": "b", "overwrite": true}\n', "column 'overwrite' applies"),
    ("jobs.toml", '[[jobs]]\ninput = "a.mp4"\nsrc = "a"\ntgt = "b"\n[[jobs]]\ninput = "a.mp4"\nsrc = "a"\ntgt = "c"\n',
     "jobs.toml job 2: writes"),
    ("jobs.txt", "a.mp4\n", "a jobs file is .csv, .jsonl or .toml"),
])
def test_a_bad_jobs_file_fails_up_front_in_one_line(tmp_path: Path, name: str, text: str, mentions: str) -> None:
    jobs = tmp_path / name
    jobs.write_text(text)
    result = batch(str(jobs), "--model", "tiny", "-o", str(tmp_path / "out"))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.count("\n") == 1 and mentions in result.stderr and result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_every_bad_job_is_named_before_any_job_runs(tmp_path: Path, shots: Path) -> None:
    """Settings only the merge with the model entry refuses (issue 23, item 5): one line a bad job."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,src,tgt,output,t_min,t_max,model\n"
                    f"{shots / 'a.mp4'},a,b,good,,,tiny\n"
                    f"{shots / 'b.mp4'},a,b,swapped,900,100,tiny\n"
                    f"{shots / 'c.mp4'},a,b,typo,,,tinny\n")
    result = batch(str(jobs), "--steps", "1", "-o", str(tmp_path / "out"))
    lines = result.stderr.splitlines()
    assert result.returncode == EXIT_USAGE and result.stdout == "", result.stderr
    assert len(lines) == 2, result.stderr
    assert "jobs.csv row 3" in lines[0] and "--t-min 900 is above --t-max 100" in lines[0], lines[0]
    assert "jobs.csv row 4" in lines[1] and "tinny" in lines[1], lines[1]
    assert not (tmp_path / "out").exists()


def test_a_folder_needs_both_prompts(tmp_path: Path, shots: Path) -> None:
    result = batch(str(shots), "--src", "a square", "-o", str(tmp_path / "out"))
    assert result.returncode == EXIT_USAGE and "needs --src and --tgt" in result.stderr, result.stderr


def test_a_killed_batch_goes_on_where_it_stopped(tmp_path: Path, shots: Path) -> None:
    out = tmp_path / "out"
    args = ["batch", str(shots), "--src", "a square", "--tgt", "a circle", "--model", "tiny", "--frames", "4",
            "--steps", "16", "--checkpoint-every", "2", "-o", str(out)]
    process = start(args)
    wait_for_line(process, "[1/4] a: done")
    checkpoint = out / "b.run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert checkpoint.exists() and not (out / "b.mp4").exists(), "killed in the middle of b"
    rerun = dmedit(*args)
    assert rerun.returncode == EXIT_BATCH_FAILED, rerun.stderr
    statuses = {job: row.split()[0] for job, row in table(rerun).items()}
    assert statuses == {"a": "skipped", "b": "done", "broken": "failed", "c": "done"}
    b, c = (json.loads((out / f"{name}.json").read_text()) for name in "bc")
    assert (b["options"]["resume"], c["options"]["resume"]) == (True, False), "b went on from its checkpoint"
    assert b["steps_done"] == 16 and not checkpoint.parent.exists()
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [], "no partial file left"


def test_help_lists_the_batch_and_run_options_without_importing_torch_or_ray() -> None:
    code = ("import sys\nfrom dmedit.cli.app import app\ntry:\n    app(['batch', '-h'], prog_name='dmedit')\n"
            "except SystemExit:\n    pass\nprint(sorted(name for name in ('torch', 'ray') if name in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                           "COLUMNS": "200"}, check=True)
    assert shown.stdout.strip().splitlines()[-1] == "[]"
    for text in ("--out-dir", "--workers", "--ray", "--force", "--log-format", "--steps", "--guidance-scale",
                 "--mask-prompt", "6 some jobs failed", "dmedit[ray]"):
        assert text in shown.stdout, text
    for text in ("--overwrite", "--skip-existing", "--resume", "--log-every"):
        assert text not in shown.stdout, text
