"""`dmedit` processes for the tests, without paying the start-up every time.

A `dmedit run` on the tiny model spends about 4 of its 4.5 CPU seconds importing torch, diffusers
and transformers. The suite starts about a hundred of them, so each test process (one per xdist
worker) keeps a warm parent: a Python process that has imported dmedit's modules, after setting the
thread variables `dmedit` sets before torch loads, and then forks once per command. The child
is a real process with its own pid, working directory, environment, stdin (/dev/null), stdout and
stderr files and exit status, and runs the real entry point (`python -m dmedit`), so what a test
asserts (exit codes, stderr lines, files written, signals) is what a user gets.

What a fork cannot show is start-up itself: tests of that (`--version` without torch, the thread
variables) start a fresh interpreter, and so does every command whose environment differs from the
one the warm parent imported its libraries under (huggingface_hub reads its variables at import).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from dmedit.core.threads import configure_threads

WARM_PARENT = r"""
import atexit, json, os, resource, runpy, sys, traceback

from dmedit.core.threads import configure_threads

configure_threads()
import dmedit.batch.queue, dmedit.cli.app, dmedit.evaluation.ablation, dmedit.evaluation.scoring, dmedit.runs.pipeline
import jinja2, matplotlib.backends.backend_agg, matplotlib.figure  # imported lazily by every run's page and figures


def child(request):
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):
            os.dup2(os.open(path, flags), fd)
        if request["file_size_limit"] is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size_limit"],) * 2)
        sys.argv = ["dmedit", *request["args"]]
        try:
            runpy.run_module("dmedit", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                sys.stderr.write(f"{stop.code}\n")
        except BaseException:
            traceback.print_exc()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


replies = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


class WarmParent:
    """The warm parent of this test process, started with the session's environment."""

    def __init__(self, *, environment: dict[str, str]) -> None:
        self.environment = environment
        self.process = subprocess.Popen([sys.executable, "-c", WARM_PARENT], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=environment)
        self.pending = b""
        atexit.register(self.close)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def _reply(self, *, timeout: float) -> dict:
        """The parent's next line, read unbuffered so that a second line is never held back."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the warm dmedit parent exited with {self.process.wait()}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, *, args: list[str], cwd: Path | None, timeout: float, file_size_limit: int | None
            ) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="dmedit-call-") as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            out.touch()
            err.touch()
            request = {"args": args, "cwd": str(cwd or os.getcwd()), "env": dict(os.environ),
                       "stdout": str(out), "stderr": str(err), "file_size_limit": file_size_limit}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self._reply(timeout=60)["pid"]
            try:
                returncode = self._reply(timeout=timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply(timeout=60)
                raise subprocess.TimeoutExpired(args, timeout, output=out.read_text(), stderr=err.read_text()) from None
            return subprocess.CompletedProcess(args=[sys.executable, "-m", "dmedit", *args], returncode=returncode,
                                               stdout=out.read_text(), stderr=err.read_text())


SESSION_ENVIRONMENT: dict[str, str] = {}
"""The environment every test shares (conftest's hermetic_environment sets it); the warm parent
starts with it."""
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "TORCH", "PYTORCH_", "CUDA_", "OMP_",
                        "MKL_", "GOMP_", "KMP_", "NUMPY_", "OPENCV_")
"""Variables the libraries the warm parent imported read when they load. A command whose values of
these differ from the warm parent's runs in a fresh interpreter; every other variable reaches the
forked child as it is."""
_warm: list[WarmParent] = []


def _read_at_import(environment: Mapping[str, str]) -> dict[str, str]:
    """The import-time variables of a `dmedit` process started with `environment` (after
    configure_threads, which `dmedit` and the warm parent run before torch loads)."""
    effective = dict(environment)
    configure_threads(environ=effective)
    return {name: value for name, value in effective.items() if name.startswith(IMPORT_TIME_PREFIXES)}


def _limit_file_size(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def dmedit(*args: str, cwd: Path | None = None, timeout: float = 240, fresh: bool = False,
           file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m dmedit ARGS` with this process's environment, stdin from /dev/null and text output
    captured, like subprocess.run; forked from the warm parent unless `fresh` or a variable read
    at import differs from the warm parent's. `file_size_limit`: no file of the process may grow
    past that many bytes (RLIMIT_FSIZE: a write beyond fails with EFBIG, as on a full disk; in a
    forked child its stdout and stderr files are under the limit too, so keep them short)."""
    if fresh or not SESSION_ENVIRONMENT or _read_at_import(os.environ) != _read_at_import(SESSION_ENVIRONMENT):
        return subprocess.run([sys.executable, "-m", "dmedit", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=os.environ.copy(), stdin=subprocess.DEVNULL,
                              preexec_fn=_limit_file_size(file_size_limit))
    if not _warm or _warm[0].process.poll() is not None:
        _warm[:] = [WarmParent(environment=dict(SESSION_ENVIRONMENT))]
    return _warm[0].run(args=list(args), cwd=cwd, timeout=timeout, file_size_limit=file_size_limit)
