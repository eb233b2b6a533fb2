"""`dmedit batch --ray auto|local|ADDRESS`: one worker actor per GPU of a Ray cluster (`pip install
'dmedit[ray]'`), fed from the batch's one job queue (batch.run_queue) like local workers.

Each actor (`num_gpus=1`, so Ray gives it one GPU of its own; `num_cpus=1` on a cluster without
GPUs) holds a workers.Worker and so loads a model entry once. An actor that dies (its process
killed, its node gone) is replaced by a fresh one and its job is retried once. Every node needs
dmedit installed, the inputs at the same paths and --out-dir on shared storage: the actors write
each bundle there atomically, as `dmedit run` does.

--ray auto joins the cluster of this machine (RAY_ADDRESS, or one started with `ray start`) and
starts a local one when there is none; local always starts one here; anything else is the
address of a cluster (host:6379 or ray://host:10001). A batch joins a Ray already initialised in
its process (a script or a test) and leaves it running.

Actors get the environment a local run honours (`worker_environment`: --offline, the hub and model
caches, $DMEDIT_MODELS, the thread settings), through Ray's runtime_env: a node's worker processes
otherwise have the environment that node's Ray was started with. Ray's own SIGTERM handler (it
exits at once) is replaced by the batch's again after ray.init, so SIGTERM stops a Ray batch as it
stops a local one: the summary, exit 143, done jobs kept, the busy ones resumed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator

from dmedit.core.errors import UsageError
from dmedit.core.threads import THREAD_COUNT_VARIABLES, WAIT_POLICY_VARIABLES
from dmedit.batch.jobs import JobSpec
from dmedit.batch.workers import JobOutcome, Worker, WorkerLost, load_runner, one_line
from dmedit.engine.compilation import CACHE_ENV as INDUCTOR_CACHE_ENV
from dmedit.models.hub import CACHE_ENV, OFFLINE_ENVS
from dmedit.models.registry import MODELS_ENV
from dmedit.runs.signals import stop_after_step

LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024
"""A local Ray's object store: jobs and outcomes are small (the bundles go to --out-dir)."""
WAIT_SECONDS = 1.0
"""ray.wait in slices: Ctrl-C and SIGTERM are noted during a slice and reach the batch after it."""
CONNECT_SECONDS = 10.0
WORKER_ENVIRONMENT = (*OFFLINE_ENVS, "HF_HUB_DISABLE_PROGRESS_BARS", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE",
                      "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", CACHE_ENV, MODELS_ENV,
                      INDUCTOR_CACHE_ENV, *WAIT_POLICY_VARIABLES)
"""Variables a run reads (set by the user, or by cli.runtime.prepare_environment from --offline),
forwarded to every actor when set here; the thread counts too when the user set them."""


def worker_environment(*, share_cpus: bool) -> dict[str, str]:
    """This process's values of WORKER_ENVIRONMENT (and of the thread counts unless `share_cpus`:
    the user chose them), for the actors' runtime_env."""
    names = WORKER_ENVIRONMENT + (() if share_cpus else THREAD_COUNT_VARIABLES)
    return {name: os.environ[name] for name in names if os.environ.get(name, "").strip()}


class WorkerActor:
    """The body of a worker actor: one Worker (and so one ModelCache) for the actor's life."""

    def __init__(self, runner: str, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.worker = Worker(runner=load_runner(runner))

    def run(self, job: JobSpec) -> JobOutcome:
        return self.worker.run(job)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray on this machine and on the cluster: pip install 'dmedit[ray]'") from None
    return ray


def _check_reachable(*, address: str) -> None:
    """UsageError unless host:port (or ray://host:port) answers within CONNECT_SECONDS: Ray itself
    retries an address that does not answer for many minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise UsageError(f"--ray {address}: nothing answers there ({error.strerror or error}); "
                         "is the cluster started (ray start --head)?") from None


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Put this process's SIGTERM handler back after the block: ray.init installs one that exits
    at once (with a Ray traceback, exit 1 for a Ray it started) instead of stopping the batch."""
    kept = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if kept is not None:
            signal.signal(signal.SIGTERM, kept)


def connect(*, ray: Any, address: str) -> bool:
    """Join or start Ray for `address`; True when this batch started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    if address not in ("auto", "local"):
        _check_reachable(address=address)
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    local = {**quiet, "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
    try:
        with sigterm_handler_kept():
            if address == "auto":
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:
                    ray.init(address="local", **local)
            else:
                ray.init(address=address, **(local if address == "local" else quiet))
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise UsageError(f"--ray {address}: cannot reach Ray ({one_line(str(error))})") from None
    return True


class RayPool:
    """Worker actors on a Ray cluster; `slot` K is actor K."""

    def __init__(self, *, address: str, size: int | None, runner: str, warn: Any, share_cpus: bool = True) -> None:
        self.ray = _import_ray()
        self.owns = connect(ray=self.ray, address=address)
        resources = self.ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if gpus and size is not None and size > gpus:
            warn(f"--workers {size}: the cluster has {gpus} GPUs; running {gpus} workers, one per GPU")
            size = gpus
        if not gpus and size is not None and size > cpus:  # an actor beyond the CPUs would wait forever
            warn(f"--workers {size}: the cluster has {cpus} CPUs and no GPU; running {cpus} workers, one per CPU")
            size = cpus
        self.size = size or gpus or 1
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        environment = worker_environment(share_cpus=share_cpus)
        self.actor_class = self.ray.remote(WorkerActor).options(
            **resources, max_restarts=0, **({"runtime_env": {"env_vars": environment}} if environment else {}))
        self.runner, self.threads = runner, None if gpus or not share_cpus else 1
        self.actors = [self._start() for _ in range(self.size)]
        self.pending: dict[int, Any] = {}

    def _start(self) -> Any:
        return self.actor_class.remote(self.runner, self.threads)

    def submit(self, *, slot: int, job: JobSpec) -> None:
        self.pending[slot] = self.actors[slot].run.remote(job)

    def _result(self, reference: Any) -> JobOutcome | WorkerLost:
        try:
            return self.ray.get(reference)
        except self.ray.exceptions.RayActorError as error:
            return WorkerLost(f"worker lost ({type(error).__name__}): {one_line(str(error).splitlines()[0])}")
        except self.ray.exceptions.RayError as error:
            return WorkerLost(f"worker failed ({type(error).__name__}): {one_line(str(error).splitlines()[-1])}")

    def wait(self, *, timeout: float | None = None) -> list[tuple[int, JobOutcome | WorkerLost]]:
        """Outcomes of the busy actors that finished (or died), waiting for at least one."""
        slots = {reference: slot for slot, reference in self.pending.items()}
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list[Any] = []
        with stop_after_step() as signalled:  # a handler raising inside ray.wait's C code is a SystemError
            while not ready and not signalled() and (deadline is None or time.monotonic() < deadline):
                ready, _ = self.ray.wait(list(slots), num_returns=1, timeout=WAIT_SECONDS)
        if signalled():
            signal.raise_signal(signalled())  # to the batch's own handler, between two slices
        results = []
        for reference in ready:
            slot = slots[reference]
            del self.pending[slot]
            results.append((slot, self._result(reference)))
        return results

    def replace(self, *, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start()

    def stop(self, *, signum: int) -> list[tuple[int, JobOutcome | WorkerLost]]:
        """Actors stop at once (a job's last checkpoint is kept; --resume is automatic on rerun)."""
        self.pending.clear()
        return []

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.owns:
            self.ray.shutdown()
