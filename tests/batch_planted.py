"""Job runners the batch tests plant in workers (`BatchSettings.runner`), never used by dmedit itself.

`dies_once`: the first time a worker runs a job whose name starts with "crash", the worker process
dies in the middle of the job (after reading the clip and detecting the mask, when the model would
load), as a process killed by the kernel would. A marker file beside the job's output remembers
that it died, so the retry on another worker runs the job normally.

`runs_out_of_memory`: a job whose name starts with "oom" runs out of memory when its model loads.

`fills_the_disk`: a job whose name starts with "full" runs with its worker's files limited to
FULL_DISK_BYTES (RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk), so its
checkpoint cannot be written; the limit is lifted when the job ends.

`needs_offline`: a job fails (exit 4) when its worker's hub is not offline, that is when it would
try to download (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE unset in the worker's environment).

`copies_the_page`: keeps the batch's page (OUT_DIR/index.html) as it is when each job starts, in
OUT_DIR/../seen/NAME.html, then runs the job.
"""

from __future__ import annotations

import os
import resource
import shutil

from dmedit.batch.jobs import JobSpec
from dmedit.models.hub import is_offline
from dmedit.models.model_cache import ModelCache
from dmedit.batch.workers import JobOutcome, run_job

KILLED = 137


def dies_once(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    marker = job.output.with_name(f"{job.name}.worker-died")
    if job.name.startswith("crash") and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))

        def die(**_: object) -> None:
            os._exit(KILLED)

        models.backend = die  # type: ignore[method-assign]
    return run_job(job=job, models=models)


def runs_out_of_memory(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    if not job.name.startswith("oom"):
        return run_job(job=job, models=models)
    loaded = models.backend

    def exhausted(**_: object) -> None:
        raise MemoryError

    models.backend = exhausted  # type: ignore[method-assign]
    try:
        return run_job(job=job, models=models)
    finally:
        models.backend = loaded  # type: ignore[method-assign]


def copies_the_page(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    seen = job.output.parent.parent / "seen"
    seen.mkdir(exist_ok=True)
    shutil.copyfile(job.output.parent / "index.html", seen / f"{job.name}.html")
    return run_job(job=job, models=models)


FULL_DISK_BYTES = 8 * 1024
"""More than a batch record, less than a checkpoint."""


def fills_the_disk(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    if not job.name.startswith("full"):
        return run_job(job=job, models=models)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, hard))
    try:
        return run_job(job=job, models=models)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def needs_offline(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    if not is_offline():
        return JobOutcome(index=job.index, name=job.name, status="failed", exit_code=4,
                          reason="the worker is online: HF_HUB_OFFLINE is not set there")
    return run_job(job=job, models=models)
