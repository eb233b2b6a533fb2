"""`dmedit batch --workers N`: N worker processes on this machine, fed from the batch's one job queue.

Each worker is a spawned process (CUDA cannot be forked) with its own ModelCache, so it loads a
model entry once and keeps it for its next jobs. With CUDA, worker K uses GPU K (modulo the GPUs
it sees); on the CPU each worker gets an equal share of the CPUs unless the user set the thread
variables. Workers run in their own process group: Ctrl-C reaches the batch alone, which stops the
busy workers itself (they stop after the current step and write a checkpoint, as `dmedit run`
does); when the batch itself dies, its workers are sent SIGTERM. A worker that dies (killed,
crashed) is replaced, and batch.run_queue retries its job once.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
from dataclasses import dataclass
from typing import Any

from dmedit.core.errors import Terminated
from dmedit.batch.jobs import JobSpec
from dmedit.runs.signals import terminate_as_exception
from dmedit.batch.workers import JobOutcome, Worker, WorkerLost, interrupted, load_runner

JOIN_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


def _use_device(*, slot: int, threads: int | None) -> None:
    """Before torch loads: this worker's CPU threads; then its GPU (the K-th it sees), if any."""
    if threads is not None:
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(slot % torch.cuda.device_count())


def _die_with_the_batch() -> None:
    """Linux: SIGTERM this worker when the batch process dies (even by SIGKILL), so a job does not
    run on unwatched: it stops after its step with a checkpoint, which the next batch resumes."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (AttributeError, OSError):  # not Linux: the worker ends at its next job instead
        pass


def worker_main(connection: Any, slot: int, runner: str, threads: int | None) -> None:
    """A worker process: receive a job, send its outcome, until None or the batch is gone."""
    os.setpgrp()
    _die_with_the_batch()
    _use_device(slot=slot, threads=threads)
    worker = Worker(runner=load_runner(runner))
    job = None
    with terminate_as_exception():
        try:
            while (job := connection.recv()) is not None:
                connection.send(worker.run(job))
                job = None
        except (EOFError, OSError):
            return
        except (KeyboardInterrupt, Terminated) as error:
            signum = signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM
            if job is not None:
                with contextlib.suppress(OSError):
                    connection.send(interrupted(job=job, signum=signum))


@dataclass
class _Child:
    process: Any
    connection: Any


def _ended(process: Any) -> str:
    process.join(timeout=JOIN_SECONDS)
    code = process.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return f"worker process {process.pid} ended ({how})"


class ProcessPool:
    """N spawned worker processes; `slot` K is worker K."""

    def __init__(self, *, size: int, runner: str, threads: int | None) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.size, self.runner, self.threads = size, runner, threads
        self.children: list[_Child] = []
        self.busy: set[int] = set()
        for slot in range(size):
            self.children.append(self._start(slot))

    def _start(self, slot: int) -> _Child:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(theirs, slot, self.runner, self.threads),
                                       name=f"dmedit-worker-{slot}", daemon=True)
        process.start()
        theirs.close()
        return _Child(process=process, connection=ours)

    def submit(self, *, slot: int, job: JobSpec) -> None:
        try:
            self.children[slot].connection.send(job)
        except OSError:  # the idle worker died: a fresh one takes the job
            self.replace(slot=slot)
            self.children[slot].connection.send(job)
        self.busy.add(slot)

    def _receive(self, slot: int) -> JobOutcome | WorkerLost:
        child = self.children[slot]
        try:
            if child.connection.poll():
                return child.connection.recv()
        except (EOFError, OSError):
            pass
        return WorkerLost(_ended(child.process))

    def wait(self, *, timeout: float | None = None) -> list[tuple[int, JobOutcome | WorkerLost]]:
        """Outcomes of the busy workers that finished (or died), waiting for at least one."""
        watched: dict[Any, int] = {}
        for slot in self.busy:
            watched[self.children[slot].connection] = slot
            watched[self.children[slot].process.sentinel] = slot
        finished = sorted({watched[item] for item in multiprocessing.connection.wait(list(watched), timeout)})
        self.busy.difference_update(finished)
        return [(slot, self._receive(slot)) for slot in finished]

    def replace(self, *, slot: int) -> None:
        old = self.children[slot]
        if old.process.is_alive():
            old.process.kill()
        old.process.join(timeout=JOIN_SECONDS)
        old.connection.close()
        self.children[slot] = self._start(slot)

    def stop(self, *, signum: int) -> list[tuple[int, JobOutcome | WorkerLost]]:
        """Pass the signal to the busy workers and collect their outcomes (they stop after the step)."""
        for slot in self.busy:
            try:
                os.kill(self.children[slot].process.pid, signum)
            except ProcessLookupError:
                pass
        results = []
        while self.busy:
            results.extend(self.wait())
        return results

    def close(self) -> None:
        for child in self.children:
            try:
                child.connection.send(None)
            except OSError:
                pass
        for child in self.children:
            child.process.join(timeout=JOIN_SECONDS)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout=JOIN_SECONDS)
            child.connection.close()
