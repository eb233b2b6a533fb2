"""The batch's job queue on every kind of worker, through the Python API (in this process, so a
test can plant a job runner): one worker grouping jobs by model entry, local worker processes and
Ray actors (a local Ray with two CPU workers) that lose a worker mid-job and retry its job, Ray
actors that get the batch's environment (not their node's) and a Ray batch that starts no more jobs
once one fails for want of disk space."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest
from rich.console import Console

from clips import make_clip
from dmedit.cli.run_flags import job_options
from dmedit.batch.queue import BatchSettings, BatchSummary, run_batch
from dmedit.core.console import Reporter
from dmedit.core.errors import BatchFailed
from dmedit.batch.jobs import RunOptions, load_jobs
from dmedit.models.hub import OFFLINE_ENVS

TESTS = Path(__file__).resolve().parent
TINY = {"model": "tiny", "frames": "4", "steps": 1}
PLANTED = "batch_planted:dies_once"
RAY_BATCH_SECONDS = 300
"""A Ray batch still running after this long is stuck (an actor waiting for a CPU it never gets):
the test fails instead of hanging the suite."""


@contextlib.contextmanager
def fails_after(seconds: int) -> Iterator[None]:
    """TimeoutError in the block once `seconds` have passed (SIGALRM; the batch waits for Ray in
    one-second slices, so the error reaches it)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the batch was still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_options() -> RunOptions:
    return job_options()


def run(source: Path, out: Path, settings: BatchSettings, **given: object) -> tuple[BatchSummary, list[dict]]:
    """The batch as `dmedit batch SOURCE -o OUT --log-format jsonl` runs it: (summary, JSON events)."""
    lines: list[str] = []
    jobs = load_jobs(source=source, given={"src": "a square", "tgt": "a circle", **TINY, **given},
                     options=run_options(), out_dir=out)
    reporter = Reporter(console=Console(file=io.StringIO()), quiet=True)
    with fails_after(RAY_BATCH_SECONDS) if settings.ray is not None else contextlib.nullcontext():
        summary = run_batch(jobs=jobs, settings=settings, reporter=reporter, emit=lines.append)
    return summary, [json.loads(line) for line in lines]


def statuses(summary: BatchSummary) -> dict[str, str]:
    return {outcome.name: outcome.status for outcome in summary.outcomes}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shots")
    for name in ("a", "b", "crash"):
        make_clip(folder / f"{name}.mp4", frames=8)
    return folder


@pytest.fixture(scope="module")
def local_ray(tiny_model_dir: Path):
    """A local Ray of two CPUs whose workers import this folder's modules (the planted runners)
    and, like the workers of a node started elsewhere, lack this process's offline switches: what
    they get of this process's environment is what the batch forwards."""
    import ray

    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved.get("PYTHONPATH")]))
    for name in OFFLINE_ENVS:
        os.environ.pop(name, None)
    try:
        ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield ray
    ray.shutdown()


def test_one_worker_groups_jobs_by_model_entry(tmp_path: Path, shots: Path, tiny_model_dir: Path) -> None:
    registry = tmp_path / "mine.toml"
    registry.write_text(f'[models.my-tiny]\nbase = "tiny"\npath = "{tiny_model_dir}"\n')
    jobs = tmp_path / "jobs.jsonl"
    rows = [{"input": str(shots / "a.mp4"), "output": "a1"}, {"input": str(shots / "a.mp4"), "output": "a2",
            "model": "my-tiny", "registry": str(registry)}, {"input": str(shots / "b.mp4"), "output": "b1"},
            {"input": str(shots / "b.mp4"), "output": "b2", "model": "my-tiny", "registry": str(registry)}]
    jobs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary, events = run(jobs, tmp_path / "out", BatchSettings(workers=1, log_format="jsonl"))
    assert statuses(summary) == {"a1": "done", "a2": "done", "b1": "done", "b2": "done"}
    order = [event["job"] for event in events if event["event"] == "start"]
    assert order == ["a1", "b1", "a2", "b2"], "the jobs of one entry run together"
    loads = [event["model_loads"] for event in events if event["event"] == "end"]
    assert loads == [2, 2, 4, 4], "each entry (and the detector) loads once: 4 loads, not 8"


def test_a_job_out_of_memory_is_recorded_and_the_worker_goes_on(tmp_path: Path, shots: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a", "oom", "b"):
        (folder / f"{name}.mp4").symlink_to(shots / "a.mp4")
    summary, events = run(folder, tmp_path / "out", BatchSettings(workers=1, log_format="jsonl",
                                                                 runner="batch_planted:runs_out_of_memory"))
    assert statuses(summary) == {"a": "done", "b": "done", "oom": "failed"}
    (failed,) = summary.failed
    assert failed.exit_code == 5 and failed.reason.startswith("out of memory during load model"), failed.reason
    assert {event["worker"] for event in events if event["event"] == "end"} == {failed.worker}
    with pytest.raises(BatchFailed) as raised:
        summary.raise_for_failures()
    assert raised.value.exit_code == 6 and str(raised.value).startswith("1 of 3 jobs failed (oom)")


def died_and_retried(events: list[dict], job: str) -> None:
    mine = [event for event in events if event.get("job") == job and event["event"] != "summary"]
    kinds = [(event["event"], event.get("status"), event["attempt"]) for event in mine]
    assert kinds == [("start", None, 1), ("end", "lost", 1), ("start", None, 2), ("end", "done", 2)], kinds
    assert mine[1]["reason"].startswith("worker"), mine[1]["reason"]


def test_local_worker_processes_retry_the_job_of_a_worker_that_died(tmp_path: Path, shots: Path) -> None:
    out = tmp_path / "out"
    summary, events = run(shots, out, BatchSettings(workers=2, log_format="jsonl", runner=PLANTED))
    assert statuses(summary) == {"a": "done", "b": "done", "crash": "done"}
    died_and_retried(events, "crash")
    assert (out / "crash.worker-died").is_file() and (out / "crash.mp4").is_file()
    workers = {event["worker"] for event in events if event.get("status") == "done"}
    assert len(workers) >= 2, "two worker processes (and the one that replaced the dead)"


def test_ray_runs_a_folder_on_two_cpu_workers_each_loading_once(tmp_path: Path, shots: Path, local_ray) -> None:
    """--workers 3 on a Ray of 2 CPUs and no GPU runs 2 actors (a third would wait forever: issue 23, item 7)."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.mp4").symlink_to(shots / ("a.mp4" if name == "c" else f"{name}.mp4"))
    (folder / "broken.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    summary, events = run(folder, out, BatchSettings(ray="auto", workers=3, log_format="jsonl"))
    assert statuses(summary) == {"a": "done", "b": "done", "broken": "failed", "c": "done"}
    assert [outcome.exit_code for outcome in summary.failed] == [3]
    assert all((out / f"{name}.mp4").is_file() and (out / f"{name}.json").is_file() for name in "abc")
    loads: dict[str, int] = {}
    for event in events:
        if event.get("status") == "done":
            loads[event["worker"]] = event["model_loads"]
    assert len(loads) == 2 and set(loads.values()) == {2}, f"two actors, each loading model and detector once: {loads}"
    assert local_ray.is_initialized(), "a batch leaves a Ray it joined running"


def test_ray_retries_the_job_of_a_worker_killed_mid_job(tmp_path: Path, shots: Path, local_ray) -> None:
    out = tmp_path / "out"
    summary, events = run(shots, out, BatchSettings(ray="auto", workers=2, log_format="jsonl", runner=PLANTED))
    assert statuses(summary) == {"a": "done", "b": "done", "crash": "done"}
    summary.raise_for_failures()
    died_and_retried(events, "crash")
    assert json.loads((out / "crash.json").read_text())["steps_done"] == 1


def test_ray_workers_get_the_batch_environment_not_their_nodes(
        tmp_path: Path, shots: Path, tiny_model_dir: Path, local_ray, monkeypatch: pytest.MonkeyPatch) -> None:
    """--offline (HF_HUB_OFFLINE, set in the batch's process) and $DMEDIT_MODELS reach the actors,
    whose Ray started without them (issue 23, item 6)."""
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.my-tiny]\nbase = "tiny"\npath = "{tiny_model_dir}"\n')
    monkeypatch.setenv("DMEDIT_MODELS", str(registry))
    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "a.mp4").symlink_to(shots / "a.mp4")
    out = tmp_path / "out"
    settings = BatchSettings(ray="auto", workers=1, log_format="jsonl", runner="batch_planted:needs_offline")
    summary, _ = run(folder, out, settings, model="my-tiny")
    assert statuses(summary) == {"a": "done"}, [outcome.reason for outcome in summary.outcomes]
    model = json.loads((out / "a.json").read_text())["model"]
    assert (model["name"], model["source_file"]) == ("my-tiny", str(registry)), "the entry $DMEDIT_MODELS defines"


def test_ray_starts_no_more_jobs_once_one_fails_for_want_of_disk_space(
        tmp_path: Path, shots: Path, local_ray) -> None:
    """Issue 23, item 4 on Ray actors: the failed job says why, the next is not started, a rerun goes on."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a", "full", "z"):
        (folder / f"{name}.mp4").symlink_to(shots / "a.mp4")
    out = tmp_path / "out"
    summary, events = run(folder, out, BatchSettings(ray="auto", workers=1, log_format="jsonl",
                                                     runner="batch_planted:fills_the_disk"))
    assert statuses(summary) == {"a": "done", "full": "failed", "z": "pending"}
    assert [event["job"] for event in events if event["event"] == "start"] == ["a", "full"]
    (failed,) = summary.failed
    assert failed.disk_full and "full.run/checkpoint.pt" in failed.reason and "File too large" in failed.reason
    assert events[-1]["halted"] == "the disk ran out of space in job full"
    assert json.loads((out / "full.batch.json").read_text())["disk_full"] is True
    with pytest.raises(BatchFailed) as raised:
        summary.raise_for_failures()
    assert str(raised.value) == ("1 of 3 jobs failed (full); 1 not started: the disk ran out of space in job full; "
                                 "free space and run the batch again to go on")
    rerun, _ = run(folder, out, BatchSettings(workers=1, log_format="jsonl"))
    assert statuses(rerun) == {"a": "skipped", "full": "done", "z": "done"}
