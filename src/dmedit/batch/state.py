"""What a batch remembers between its runs: a sidecar OUT.batch.json beside each job's bundle.

The sidecar records the job's input fingerprint (size, mtime_ns and a SHA-256 of the input's
first and last MiB) and its options (the run request as a dict). A worker writes it, each time
atomically, with state "started" before a job runs, then "done" after the bundle is in place, or
"failed" / "interrupted" with the exit code, the reason and `disk_full` (it failed for want of
space), when the disk still takes that much. A job is done when OUT.mp4, OUT.json and a "done"
sidecar with the same fingerprint and options exist: the next run of the batch skips it. Any other
sidecar with the same fingerprint and options is a job that did not finish (a killed batch, a
signal, a full disk): it resumes from its checkpoint (OUT.run/) when one was written. A job with no
sidecar (not started: a batch that stopped for a full disk or a signal) runs afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from dmedit.batch.jobs import JobSpec
from dmedit.core.files import write_text
from dmedit.runs.outputs import companion

SIDECAR_SUFFIX = ".batch.json"
SIDECAR_FORMAT = 1
ENDS_BYTES = 1 << 20
"""Bytes hashed at each end of an input for its fingerprint (with its size and mtime)."""


def sidecar_path(*, output: Path) -> Path:
    return companion(output=output, suffix=SIDECAR_SUFFIX)


def input_fingerprint(*, path: Path) -> dict[str, Any] | None:
    """Size, mtime_ns and a SHA-256 of the first and last MiB; None when the file cannot be read
    (the job then runs, and fails with the run's own message)."""
    try:
        with open(path, "rb") as handle:
            facts = os.fstat(handle.fileno())
            digest = hashlib.sha256(handle.read(ENDS_BYTES))
            if facts.st_size > ENDS_BYTES:
                handle.seek(max(ENDS_BYTES, facts.st_size - ENDS_BYTES))
                digest.update(handle.read(ENDS_BYTES))
    except OSError:
        return None
    return {"size": facts.st_size, "mtime_ns": facts.st_mtime_ns, "sha256_ends": digest.hexdigest()}


def job_options(*, job: JobSpec) -> dict[str, Any]:
    """The job's request as JSON values (paths as strings), as the sidecar records it."""
    return json.loads(json.dumps(job.request.to_dict(), default=str))


def read_sidecar(*, output: Path) -> dict[str, Any] | None:
    """The sidecar's record, or None when it is missing or unreadable (the job then runs)."""
    try:
        record = json.loads(sidecar_path(output=output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == SIDECAR_FORMAT else None


def write_sidecar(*, job: JobSpec, state: str, extra: Mapping[str, Any] | None = None) -> None:
    """Write the job's sidecar atomically (a hidden partial file of this process, then a rename);
    a failed write is an OSError naming the sidecar, with the error's number (a full disk)."""
    path = sidecar_path(output=job.output)
    record = {"format": SIDECAR_FORMAT, "state": state, "job": job.name, "input_path": str(job.request.video),
              "input": job.fingerprint, "options": job_options(job=job),
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path=path, text=json.dumps(record, indent=2) + "\n")


def _same_job(*, record: Mapping[str, Any] | None, job: JobSpec) -> bool:
    return (record is not None and job.fingerprint is not None and record.get("input") == job.fingerprint
            and record.get("options") == job_options(job=job))


def is_done(*, job: JobSpec) -> bool:
    """The job's bundle is in place and its sidecar says it was made from this input with these options."""
    record = read_sidecar(output=job.output)
    bundle = job.output.is_file() and companion(output=job.output, suffix=".json").is_file()
    return bundle and _same_job(record=record, job=job) and record is not None and record.get("state") == "done"


def plan_jobs(*, jobs: list[JobSpec], force: bool) -> tuple[list[JobSpec], list[JobSpec]]:
    """(jobs to run, jobs done before). Each job gets its input fingerprint, and resumes when a
    killed batch left it started with the same input and options. `force` runs every job afresh."""
    to_run, done = [], []
    for job in jobs:
        job = dataclasses.replace(job, fingerprint=input_fingerprint(path=job.request.video))
        if not force and is_done(job=job):
            done.append(job)
            continue
        started = not force and _same_job(record=read_sidecar(output=job.output), job=job)
        to_run.append(dataclasses.replace(job, resume=started))
    return to_run, done
