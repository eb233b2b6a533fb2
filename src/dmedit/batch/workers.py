"""Workers of `dmedit batch`: each one keeps a ModelCache, so a model entry and its detector load
once per worker, and runs one job at a time with a job runner.

The runner is named by a "module:function" string (default `dmedit.batch.workers:run_job`) and loaded in
the worker, so a test can plant a runner of its own (e.g. one that kills its worker) without a
hook in this code. A runner takes (job=JobSpec, models=ModelCache) and returns a JobOutcome; it
never raises for a bad job: the failure is the outcome (exit code and one-line reason; whether the
disk ran out of space: then the queue starts no more jobs; whether the job's batch record could not
be written: then the batch ends with exit 1).

Pools of workers, all driven by batch.run_queue: `InProcessPool` (one worker in the batch's own
process), `ProcessPool` (N spawned processes, one job queue) and ray_workers.RayPool (actors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import io
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from rich.console import Console

from dmedit.batch.jobs import JobSpec
from dmedit.batch.state import write_sidecar
from dmedit.core.console import Reporter
from dmedit.core.disk import failed_io_line, out_of_space
from dmedit.core.errors import EXIT_FAILURE, EXIT_OOM, DmeditError, InterruptedRun
from dmedit.evaluation.scoring import run_extras
from dmedit.models.model_cache import ModelCache
from dmedit.runs.pipeline import run_edit

DEFAULT_RUNNER = "dmedit.batch.workers:run_job"
REASON_LENGTH = 300
Runner = Callable[..., "JobOutcome"]


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: status "done", "failed" or "interrupted", its exit code, seconds, the
    written output (done) or a one-line reason (otherwise), whether it failed for want of disk
    space (`disk_full`) or because the batch's record of it (its sidecar) could not be written
    (`record_failed`), and the worker that ran it with the number of models that worker has
    loaded so far."""

    index: int
    name: str
    status: str
    exit_code: int = 0
    seconds: float = 0.0
    output: str | None = None
    reason: str | None = None
    worker: str = ""
    model_loads: int = 0
    disk_full: bool = False
    record_failed: bool = False


@dataclass(frozen=True)
class WorkerLost:
    """The worker died while it ran a job (killed, crashed, its node gone): the job is retried once."""

    reason: str


class RecordNotWritten(Exception):
    """The batch's record of a job (its sidecar, batch.state) could not be written: `error` says why."""

    def __init__(self, error: OSError) -> None:
        super().__init__(failed_io_line(error=error))
        self.error = error


def _record(*, job: JobSpec, state: str, extra: dict | None = None) -> None:
    """write_sidecar, its failure a RecordNotWritten (the batch ends with exit 1 for it)."""
    try:
        write_sidecar(job=job, state=state, extra=extra)
    except OSError as error:
        raise RecordNotWritten(error) from error


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_LENGTH else text[: REASON_LENGTH - 3] + "..."


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def load_runner(spec: str) -> Runner:
    """'package.module:function' -> the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _silent_reporter() -> Reporter:
    return Reporter(console=Console(file=io.StringIO()), quiet=True)


def run_job(*, job: JobSpec, models: ModelCache) -> JobOutcome:
    """Run one job with `models` (the worker's cache): its sidecar marks it started, the run writes
    its bundle, the sidecar marks it done. Any failure of the job is returned, not raised; a
    signal (Ctrl-C, SIGTERM) still stops the worker."""
    started = time.perf_counter()

    def ended(status: str, code: int, reason: str | None = None, error: BaseException | None = None) -> JobOutcome:
        seconds = round(time.perf_counter() - started, 3)
        if status == "done":
            return JobOutcome(index=job.index, name=job.name, status=status, output=str(job.output), seconds=seconds)
        reason, disk_full = one_line(reason or status), error is not None and out_of_space(error=error)
        with contextlib.suppress(OSError):  # the failure is recorded beside the bundle too, when it can be
            write_sidecar(job=job, state=status, extra={"exit_code": code, "reason": reason, "seconds": seconds,
                                                        "disk_full": disk_full})
        return JobOutcome(index=job.index, name=job.name, status=status, exit_code=code, seconds=seconds,
                          reason=reason, disk_full=disk_full, record_failed=isinstance(error, RecordNotWritten))

    request = dataclasses.replace(job.request, resume=job.resume,
                                  output=dataclasses.replace(job.request.output, overwrite=True))
    try:
        _record(job=job, state="started")
        reporter = _silent_reporter()
        run_edit(request=request, reporter=reporter, models=models, extras=run_extras(request=request, reporter=reporter))
        _record(job=job, state="done", extra={"seconds": round(time.perf_counter() - started, 3)})
    except InterruptedRun as error:
        return ended("interrupted", error.exit_code, str(error))
    except RecordNotWritten as error:
        return ended("failed", EXIT_FAILURE, str(error), error)
    except DmeditError as error:
        return ended("failed", error.exit_code, str(error), error)
    except MemoryError:
        return ended("failed", EXIT_OOM, "out of memory")
    except OSError as error:
        return ended("failed", EXIT_FAILURE, failed_io_line(error=error), error)
    except Exception as error:  # a bug in one job must not stop the batch; its one line says what it was
        return ended("failed", EXIT_FAILURE, f"unexpected {type(error).__name__}: {error}", error)
    return ended("done", 0)


def _free_device_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class Worker:
    """Runs jobs one at a time with one ModelCache; a job of another group (model entry) first
    drops the loaded models, so a worker holds one entry's models at a time."""

    runner: Runner
    models: ModelCache = field(default_factory=ModelCache)
    group: Hashable | None = None
    name: str = field(default_factory=worker_name)

    def run(self, job: JobSpec) -> JobOutcome:
        if self.group is not None and job.group != self.group:
            self.models.clear()
            _free_device_memory()
        self.group = job.group
        outcome = self.runner(job=job, models=self.models)
        if outcome.status != "done":
            _free_device_memory()
        return dataclasses.replace(outcome, worker=self.name, model_loads=self.models.loads)


def interrupted(*, job: JobSpec, signum: int) -> JobOutcome:
    """The outcome of a job stopped by a signal outside the step loop (nothing was written)."""
    return JobOutcome(index=job.index, name=job.name, status="interrupted", exit_code=128 + signum,
                      reason="stopped by a signal", worker=worker_name())


class InProcessPool:
    """One worker in the batch's own process (the default without GPUs, and the fastest for one)."""

    size = 1

    def __init__(self, *, runner: str) -> None:
        self.worker = Worker(runner=load_runner(runner))
        self.job: JobSpec | None = None

    def submit(self, *, slot: int, job: JobSpec) -> None:
        self.job = job

    def wait(self) -> list[tuple[int, JobOutcome | WorkerLost]]:
        job, self.job = self.job, None
        assert job is not None
        return [(0, self.worker.run(job))]

    def replace(self, *, slot: int) -> None:
        """The worker is this process: it cannot be lost."""

    def stop(self, *, signum: int) -> list[tuple[int, JobOutcome | WorkerLost]]:
        job, self.job = self.job, None
        return [] if job is None else [(0, interrupted(job=job, signum=signum))]

    def close(self) -> None:
        self.worker.models.clear()
