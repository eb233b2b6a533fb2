"""`dmedit batch`: many jobs, each model entry loaded once per worker, done jobs skipped, a bad job
recorded and the batch going on, a summary at the end.

One job queue (`run_queue`) feeds any pool of workers: the batch's own process (one worker),
N local processes (process_pool) or Ray actors (ray_workers). Jobs are queued by model group (the
entry and how it loads) and a free worker takes a job of the group it last ran when there is one,
so each worker loads as few models as it can. A job whose worker died is retried once, on the
next free worker (a fresh one replaces the dead). Ctrl-C or SIGTERM stops the busy jobs (after
their current step, with a checkpoint), prints the summary and exits 130 or 143; the next run of
the batch goes on where it stopped (batch_state). A job that fails for want of disk space (its
outcome's `disk_full`) stops the queue from starting more: they would fail the same way; the
summary counts them as not started (pending) and says why, the exit is 6, and the next run, once
space is freed, runs the failed job and the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Literal

from dmedit.batch.gallery import PAGE_NAME, Gallery, check_page_path
from dmedit.batch.state import plan_jobs
from dmedit.core.console import Reporter
from dmedit.core.errors import EXIT_FAILURE, BatchFailed, DmeditError, InterruptedRun, Terminated
from dmedit.batch.jobs import JobSpec
from dmedit.batch.process_pool import ProcessPool
from dmedit.batch.ray_workers import RayPool
from dmedit.batch.workers import DEFAULT_RUNNER, InProcessPool, JobOutcome, WorkerLost
from dmedit.core.files import writable_folder
from dmedit.core.threads import available_cpus

LogFormat = Literal["text", "jsonl"]
STATUSES = ("done", "skipped", "failed", "interrupted", "pending")
"""A job's status in the summary: pending ones never started (a signal stopped the batch first)."""
Emit = Callable[[str], None]


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs: `workers` local processes (None: one per CUDA GPU, else 1) or Ray actors
    at `ray` (auto, local or an address; workers None: one per GPU of the cluster); `force` reruns
    done jobs; `log_format` jsonl prints one JSON event a line on stdout; `runner` is the
    'module:function' each worker runs a job with."""

    workers: int | None = None
    ray: str | None = None
    force: bool = False
    log_format: LogFormat = "text"
    runner: str = DEFAULT_RUNNER
    share_cpus: bool = True
    """Local worker processes (and Ray actors without a GPU) split the CPUs between them (False: the
    user set the thread variables, which Ray actors then get too)."""
    out_dir: Path | None = None
    """The jobs' folder (-o): checked writable before any job runs; it holds the batch's page."""
    gallery: bool = True
    """Write OUT_DIR/index.html (batch.gallery), rewritten as jobs start and end."""


@dataclass(frozen=True)
class Events:
    """Progress of the jobs: plain lines on stderr (`reporter`) and, for jsonl, one JSON object per
    job start and end on stdout (`emit`)."""

    reporter: Reporter
    emit: Emit
    log_format: LogFormat
    total: int
    gallery: Gallery | None = None
    """The batch's page (batch.gallery), told of every job's start and end."""

    def _json(self, **fields: Any) -> None:
        if self.log_format == "jsonl":
            self.emit(json.dumps(fields))

    def start(self, *, job: JobSpec, attempt: int) -> None:
        again = f" again (attempt {attempt})" if attempt > 1 else ""
        if self.gallery is not None:
            self.gallery.start(job=job)
        self.reporter.line(f"[{job.index}/{self.total}] {job.name}: started{again}")
        self._json(event="start", job=job.name, index=job.index, input=str(job.request.video),
                   output=str(job.output), attempt=attempt)

    def end(self, *, outcome: JobOutcome, attempt: int = 1) -> None:
        head = f"[{outcome.index}/{self.total}] {outcome.name}"
        if self.gallery is not None:
            self.gallery.end(outcome=outcome)
        if outcome.status == "done":
            self.reporter.line(f"{head}: done in {outcome.seconds:.1f}s -> {outcome.output}")
        elif outcome.status == "skipped":
            self.reporter.notice(f"{head}: done before, skipped ({outcome.output}; --force reruns it)")
        else:
            self.reporter.notice(f"{head}: {outcome.status} (exit {outcome.exit_code}) after "
                                 f"{outcome.seconds:.1f}s: {outcome.reason}")
        self._json(event="end", job=outcome.name, index=outcome.index, status=outcome.status,
                   exit_code=outcome.exit_code, seconds=outcome.seconds, output=outcome.output,
                   reason=outcome.reason, attempt=attempt, worker=outcome.worker or None,
                   model_loads=outcome.model_loads)

    def lost(self, *, job: JobSpec, lost: WorkerLost, attempt: int, retry: bool) -> None:
        then = "retrying it on another worker" if retry else "not retried again"
        self.reporter.notice(f"[{job.index}/{self.total}] {job.name}: {lost.reason}; {then}")
        self._json(event="end", job=job.name, index=job.index, status="lost", exit_code=None, seconds=None,
                   output=None, reason=lost.reason, attempt=attempt, worker=None, model_loads=None)


@dataclass
class JobQueue:
    """Jobs waiting, in model-group order; retries first; a worker's own group preferred."""

    waiting: deque[tuple[JobSpec, int]] = field(default_factory=deque)

    @classmethod
    def of(cls, jobs: list[JobSpec]) -> "JobQueue":
        order: dict[Hashable, int] = {}
        for job in jobs:
            order.setdefault(job.group, len(order))
        ranked = sorted(jobs, key=lambda job: (order[job.group], job.index))
        return cls(waiting=deque((job, 1) for job in ranked))

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def retry(self, job: JobSpec, attempt: int) -> None:
        self.waiting.appendleft((job, attempt))

    def take(self, *, group: Hashable | None) -> tuple[JobSpec, int]:
        for position, (job, attempt) in enumerate(self.waiting):
            if job.group == group:
                del self.waiting[position]
                return job, attempt
        return self.waiting.popleft()


def _lost_for_good(*, job: JobSpec, lost: WorkerLost, stopping: bool) -> JobOutcome:
    if stopping:
        return JobOutcome(index=job.index, name=job.name, status="interrupted", exit_code=128 + signal.SIGINT,
                          reason=f"stopped by a signal ({lost.reason})")
    return JobOutcome(index=job.index, name=job.name, status="failed", exit_code=EXIT_FAILURE,
                      reason=f"its worker died twice; last: {lost.reason}")


@dataclass(frozen=True)
class QueueEnd:
    """How the queue ended: every job's outcome, the signal that stopped the batch (None: none), and
    why it stopped starting jobs without a signal (None: it did not; else a job failed for want of
    disk space, and the others would fail the same way)."""

    outcomes: list[JobOutcome]
    stopped: int | None = None
    halted: str | None = None


def _halt_reason(*, outcomes: list[JobOutcome]) -> str | None:
    """Why no more jobs start: the first job that failed for want of disk space, if any."""
    full = next((outcome for outcome in outcomes if outcome.disk_full), None)
    return None if full is None else f"the disk ran out of space in job {full.name}"


def run_queue(*, jobs: list[JobSpec], pool: Any, events: Events) -> QueueEnd:
    """Run `jobs` on `pool`'s workers. A signal stops the busy jobs; a job failing for want of disk
    space stops the queue from starting more (the busy ones finish); the rest are pending."""
    queue, running, groups = JobQueue.of(jobs), {}, {}
    outcomes: list[JobOutcome] = []
    stopped: int | None = None
    halted: str | None = None
    try:
        while running or (queue and stopped is None and halted is None):
            for slot in range(pool.size):
                if slot not in running and queue and stopped is None and halted is None:
                    job, attempt = queue.take(group=groups.get(slot))
                    running[slot], groups[slot] = (job, attempt), job.group
                    events.start(job=job, attempt=attempt)
                    pool.submit(slot=slot, job=job)
            for slot, result in pool.wait():
                stopped = _settle(slot=slot, result=result, running=running, queue=queue, pool=pool,
                                  events=events, outcomes=outcomes) or stopped
            halted = halted or _halt_reason(outcomes=outcomes)
    except (KeyboardInterrupt, Terminated) as error:
        stopped = signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM
        for slot, result in pool.stop(signum=stopped):
            _settle(slot=slot, result=result, running=running, queue=queue, pool=None, events=events,
                    outcomes=outcomes)
        for job, attempt in running.values():
            outcome = JobOutcome(index=job.index, name=job.name, status="interrupted", exit_code=128 + stopped,
                                 reason="stopped by a signal")
            outcomes.append(outcome)
            events.end(outcome=outcome, attempt=attempt)
    outcomes += [JobOutcome(index=job.index, name=job.name, status="pending",
                            reason=f"not started: {halted or 'the batch stopped'}") for job, _ in queue.waiting]
    return QueueEnd(outcomes=outcomes, stopped=stopped, halted=halted)


def _settle(*, slot: int, result: JobOutcome | WorkerLost, running: dict, queue: JobQueue, pool: Any,
            events: Events, outcomes: list[JobOutcome]) -> int | None:
    """Record one finished (or lost) job; returns the signal number when the job was interrupted."""
    job, attempt = running.pop(slot)
    if isinstance(result, WorkerLost):
        retry = attempt < 2 and pool is not None
        events.lost(job=job, lost=result, attempt=attempt, retry=retry)
        if pool is not None:
            pool.replace(slot=slot)
        if retry:
            queue.retry(job, attempt + 1)
            return None
        result = _lost_for_good(job=job, lost=result, stopping=pool is None)
    outcomes.append(result)
    events.end(outcome=result, attempt=attempt)
    return result.exit_code - 128 if result.status == "interrupted" else None


@dataclass(frozen=True)
class BatchSummary:
    """Every job's outcome (in the jobs' order), the batch's seconds, the signal that stopped it,
    and why it started no more jobs (`halted`, QueueEnd's)."""

    outcomes: list[JobOutcome]
    seconds: float
    stopped: int | None = None
    halted: str | None = None

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failed(self) -> list[JobOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def table(self) -> list[str]:
        """job | status | seconds | output (a failed job's reason in its place), and a total line."""
        rows = [("job", "status", "seconds", "output")]
        for outcome in self.outcomes:
            status = outcome.status if outcome.exit_code == 0 else f"{outcome.status} (exit {outcome.exit_code})"
            rows.append((outcome.name, status, f"{outcome.seconds:.1f}", outcome.output or outcome.reason or ""))
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
                 for row in rows]
        counts = ", ".join(f"{self.count(status)} {status}" for status in STATUSES
                           if status in ("done", "failed") or self.count(status))
        jobs = f"{len(self.outcomes)} job{'s' if len(self.outcomes) != 1 else ''}"
        return [*lines, f"{jobs}: {counts} in {self.seconds:.1f}s{self._halt_note()}"]

    def _halt_note(self) -> str:
        """"; N not started: why; free space ..." when the queue halted with jobs left ("" otherwise)."""
        if self.halted is None or not self.count("pending"):
            return ""
        return (f"; {self.count('pending')} not started: {self.halted}; free space and run the batch again "
                "to go on")

    def raise_for_failures(self) -> None:
        """InterruptedRun (130/143) when a signal stopped the batch; DmeditError (exit 1) when the
        batch could not write its record of a job; BatchFailed (exit 6) when jobs failed."""
        if self.stopped is not None:
            done = self.count("done") + self.count("skipped")
            raise InterruptedRun(f"batch stopped by a signal with {done} of {len(self.outcomes)} jobs done; run it "
                                 "again to go on (done jobs are skipped, stopped ones resume)", signum=self.stopped)
        unrecorded = next((outcome for outcome in self.outcomes if outcome.record_failed), None)
        if unrecorded is not None:
            raise DmeditError(f"cannot write the batch's record of job {unrecorded.name}: {unrecorded.reason}"
                              f"{self._halt_note() or '; run the batch again to retry it'}")
        if self.failed:
            names = ", ".join(outcome.name for outcome in self.failed[:5]) + (", ..." if len(self.failed) > 5 else "")
            raise BatchFailed(f"{len(self.failed)} of {len(self.outcomes)} jobs failed ({names})"
                              f"{self._halt_note() or '; run the batch again to retry them'}")


def default_workers() -> int:
    """One worker per CUDA GPU that torch sees, else 1."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


@contextlib.contextmanager
def open_pool(*, settings: BatchSettings, reporter: Reporter) -> Iterator[Any]:
    """The pool of workers the settings ask for, closed at the end. While Ray runs, anything it
    prints goes to stderr: stdout keeps the batch's results only."""
    if settings.ray is not None:
        with contextlib.redirect_stdout(sys.stderr):
            pool = RayPool(address=settings.ray, size=settings.workers, runner=settings.runner, warn=reporter.warn,
                           share_cpus=settings.share_cpus)
            try:
                yield pool
            finally:
                pool.close()
        return
    size = settings.workers or default_workers()
    pool = (InProcessPool(runner=settings.runner) if size == 1
            else ProcessPool(size=size, runner=settings.runner,
                             threads=cpu_share(workers=size) if settings.share_cpus else None))
    try:
        yield pool
    finally:
        pool.close()


def run_batch(*, jobs: list[JobSpec], settings: BatchSettings, reporter: Reporter, emit: Emit) -> BatchSummary:
    """Skip the done jobs, run the others on the settings' workers, show the summary (stdout for
    text, stderr with a JSON summary event for jsonl). `emit` writes one line to stdout."""
    started = time.perf_counter()
    reporter.release()
    if settings.out_dir is not None:
        writable_folder(folder=settings.out_dir)
        if settings.gallery:
            check_page_path(path=settings.out_dir / PAGE_NAME, jobs=jobs)
    to_run, done = plan_jobs(jobs=jobs, force=settings.force)
    events = Events(reporter=reporter, emit=emit, log_format=settings.log_format, total=len(jobs))
    outcomes = [JobOutcome(index=job.index, name=job.name, status="skipped", output=str(job.output)) for job in done]
    for outcome in outcomes:
        events.end(outcome=outcome)
    if settings.out_dir is not None and settings.gallery:
        events = dataclasses.replace(events, gallery=Gallery.opened(
            path=settings.out_dir / PAGE_NAME, jobs=jobs, skipped=outcomes, warn=reporter.warn))
    ended = QueueEnd(outcomes=[])
    if to_run:
        with open_pool(settings=settings, reporter=reporter) as pool:
            reporter.line(f"batch: {len(to_run)} of {len(jobs)} jobs to run on {pool.size} "
                          f"worker{'s' if pool.size > 1 else ''}")
            ended = run_queue(jobs=to_run, pool=pool, events=events)
        outcomes += ended.outcomes
    summary = BatchSummary(outcomes=sorted(outcomes, key=lambda outcome: outcome.index),
                           seconds=round(time.perf_counter() - started, 3), stopped=ended.stopped,
                           halted=ended.halted)
    if events.gallery is not None:
        events.gallery.finish(outcomes=summary.outcomes)
    _show(summary=summary, events=events)
    return summary


def _show(*, summary: BatchSummary, events: Events) -> None:
    if events.log_format == "text":
        for line in summary.table():
            events.emit(line)
        return
    for line in summary.table():
        events.reporter.line(line)
    counts = {status: summary.count(status) for status in STATUSES}
    events.emit(json.dumps({"event": "summary", "jobs": len(summary.outcomes), **counts, "seconds": summary.seconds,
                            "halted": summary.halted}))


def cpu_share(*, workers: int) -> int:
    """CPU threads for each of `workers` local worker processes."""
    return max(1, available_cpus() // workers)
