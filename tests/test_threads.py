"""Thread defaults: chosen from the CPU affinity, never over a user's value, set without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dmedit.core import threads
from dmedit.core.threads import SPIN_COUNT, configure_threads

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def test_thread_count_comes_from_the_affinity_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    environ: dict[str, str] = {"PATH": "/usr/bin"}

    chosen = configure_threads(environ=environ)

    expected = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert chosen == expected
    assert environ == {"PATH": "/usr/bin", **expected}
    assert "OMP_WAIT_POLICY" not in environ


def test_without_an_affinity_call_the_cpu_count_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert configure_threads(environ={})["OMP_NUM_THREADS"] == "6"

    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.available_cpus() == 1


@pytest.mark.parametrize(
    ("users", "chosen"),
    [
        ({"OMP_NUM_THREADS": "1"}, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"MKL_NUM_THREADS": "1"}, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
        ({"GOMP_SPINCOUNT": "infinite"}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
        ({"OMP_NUM_THREADS": "8", "OMP_WAIT_POLICY": "active"}, {}),
        ({"OMP_NUM_THREADS": "", "OMP_WAIT_POLICY": " "},
         {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),
    ],
)
def test_a_users_setting_is_never_overridden(
    monkeypatch: pytest.MonkeyPatch, users: dict[str, str], chosen: dict[str, str],
) -> None:
    """A thread count or wait policy the user set keeps its partner variable unset too (empty counts as unset)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    environ = dict(users)

    assert configure_threads(environ=environ) == chosen

    assert environ == {**users, **chosen}
    assert configure_threads(environ=environ) == {}  # a second call finds everything set


def test_configures_the_process_environment_without_importing_torch() -> None:
    """The CLI calls it before anything loads torch (and its OpenMP runtime, which reads these once)."""
    script = (
        "import json, os, sys\n"
        "import dmedit.core.threads\n"
        "chosen = dmedit.core.threads.configure_threads()\n"
        f"names = {THREAD_VARIABLES!r}\n"
        "sys.stdout.write(json.dumps({'torch': 'torch' in sys.modules, 'chosen': chosen,\n"
        "                             'environ': {name: os.environ.get(name) for name in names}}))\n"
    )
    environ = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ,
                          stdin=subprocess.DEVNULL, timeout=60, check=True)
    result = json.loads(done.stdout)

    assert result["torch"] is False
    cpus = str(threads.available_cpus())
    assert result["chosen"] == {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus, "GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert result["environ"] == {**result["chosen"], "OMP_WAIT_POLICY": None}
