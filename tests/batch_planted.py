"""Job runners the batch tests plant in workers (`BatchSettings.runner`), never used by dmedit itself.

`dies_once`: the first time a worker runs a job whose name starts with "crash", the worker process
dies in the middle of the job (after reading the clip and detecting the mask, when the model would
load), as a process killed by the kernel would. A marker file beside the job's output remembers
that it died, so the retry on another worker runs the job normally.

`runs_out_of_memory`: a job whose name starts with "oom" runs out of memory when its model loads.
"""

from __future__ import annotations

import os

from dmedit.batch.jobs import JobSpec
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
