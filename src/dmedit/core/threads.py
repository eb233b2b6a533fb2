"""CPU thread settings, chosen before torch loads its OpenMP runtime.

The OpenMP runtime that torch ships (GNU libgomp in the CPU wheels) reads its environment once,
when torch is imported, so `configure_threads` must run before anything imports torch; this module
never imports it. It only sets defaults: a variable the user has set is never changed.

- Thread count (OMP_NUM_THREADS, MKL_NUM_THREADS): the CPUs this process may run on
  (`os.sched_getaffinity`, which honours `taskset` and container CPU sets), not every CPU of the
  host, so a process limited to 2 of 64 cores does not start 64 threads.
- Wait policy (GOMP_SPINCOUNT): an idle OpenMP thread spins this many times waiting for work
  before it sleeps. libgomp's default (about 300,000 spins, a few milliseconds) is fast on an idle
  machine and disastrous on a shared one: a thread spins away the time slice its partner needs to
  reach the same barrier (the README's tiny smoke run went from 7 s to 2 min 12 s).
  OMP_WAIT_POLICY=PASSIVE (no spinning) survives load but costs about 2x on an idle machine for
  small operators. A short spin (SPIN_COUNT) keeps most of the idle speed and degrades gracefully
  under load; it was chosen from the measurements in BENCHMARKS.md ("CPU threads under load",
  `python -m bench.threads`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set together, and only when the user has set neither (MKL falls back to OMP_NUM_THREADS)."""
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Either one set by the user means the user chose the wait policy: GOMP_SPINCOUNT would override
OMP_WAIT_POLICY in libgomp, so it is only set when both are unset."""
SPIN_COUNT_VARIABLE = "GOMP_SPINCOUNT"
SPIN_COUNT = 1_000
"""Spins before an idle libgomp thread sleeps (libgomp's own default is 300,000; PASSIVE is 0)."""


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, else os.cpu_count(), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux (macOS, Windows) or the call was refused
        count = 0
    return max(1, count or os.cpu_count() or 1)


def configure_threads(*, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set thread-count and wait-policy defaults in `environ`; return the variables set, with values.

    Call before torch is imported (torch's OpenMP runtime reads these once, at load); child
    processes inherit them. Variables the user has set are left alone, and so are their partners:
    OMP_NUM_THREADS or MKL_NUM_THREADS set -> neither is touched; OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set -> neither is touched. An empty dict means the user chose everything.
    """
    chosen: dict[str, str] = {}
    if not any(_is_set(environ=environ, name=name) for name in THREAD_COUNT_VARIABLES):
        count = str(available_cpus())
        chosen.update({name: count for name in THREAD_COUNT_VARIABLES})
    if not any(_is_set(environ=environ, name=name) for name in WAIT_POLICY_VARIABLES):
        chosen[SPIN_COUNT_VARIABLE] = str(SPIN_COUNT)
    environ.update(chosen)
    return chosen


def _is_set(*, environ: MutableMapping[str, str], name: str) -> bool:
    """An empty value counts as unset, as libgomp and MKL treat it."""
    return bool(environ.get(name, "").strip())
