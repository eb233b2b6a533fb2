"""The one stderr console: stage lines, a step progress bar, errors.

On a terminal, Rich draws a live bar (step, t, loss terms, steps/s, ETA). Otherwise (batch
scripts, CI logs) every stage and every `log_every`-th step is one plain line. `quiet` silences
everything but errors.

Lines are held back until `release()`: the cheap checks before the expensive part (probe, span,
masks, model load) either all pass and are then reported, or the run fails with exactly one
error line on stderr.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def process_age_s() -> float:
    """Seconds since this process started (Linux's /proc/self/stat, 10 ms resolution); 0 elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def make_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def format_terms(terms: Mapping[str, float]) -> str:
    parts = []
    for name, value in terms.items():
        parts.append(f"t={int(value)}" if name == "t" else f"{name}={value:.3g}")
    return " ".join(parts)


@dataclass
class Reporter:
    """Progress on stderr; also records each stage's wall time for the run report."""

    console: Console = field(default_factory=make_console)
    quiet: bool = False
    log_every: int = 10
    timings: dict[str, float] = field(default_factory=dict)
    held: list[str] | None = field(default_factory=list)
    current: str | None = None
    started: float = field(default_factory=time.perf_counter)
    stage_started: float = 0.0

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal and not self.quiet

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.held is not None:
            self.held.append(text)
            return
        self.console.print(text, markup=False)

    def release(self) -> None:
        """Print the held lines; from now on lines print at once."""
        held, self.held = self.held or [], None
        for text in held:
            self.line(text)

    def warn(self, text: str) -> None:
        """A line the user should read (shown unless quiet), prefixed "warning:"."""
        self.line(f"warning: {text}")

    def notice(self, text: str) -> None:
        """A line shown even when quiet (e.g. an output skipped by --skip-existing)."""
        self.console.print(text, markup=False)

    def elapsed(self) -> float:
        """Seconds since this reporter was made (the command's start)."""
        return time.perf_counter() - self.started

    def timings_so_far(self) -> dict[str, float]:
        """Each stage's seconds, the stage now running counted up to now, "total" (elapsed) and
        "unstaged" (total minus the stages: the seconds no stage claims)."""
        timings = dict(self.timings)
        if self.current is not None and self.current != "optimise":
            timings[self.current] = timings.get(self.current, 0.0) + time.perf_counter() - self.stage_started
        total = self.elapsed()
        return timings | {"unstaged": max(0.0, total - sum(timings.values())), "total": total}

    def count_start_up(self) -> None:
        """Count the process's life before this reporter (interpreter start and imports) as the
        "start-up" stage, and the total from the process's start."""
        age = process_age_s()
        self.started -= age
        self.timings["start-up"] = self.timings.get("start-up", 0.0) + age

    def split_stage(self, *, stage: str, parts: Mapping[str, float]) -> None:
        """Move `parts` (name -> seconds measured inside `stage`) out of `stage` into stages of their own."""
        for name, seconds in parts.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            self.timings[stage] = max(0.0, self.timings.get(stage, 0.0) - seconds)
        if self.timings.get(stage, 1.0) < 0.001:  # nothing left of it
            del self.timings[stage]

    def error(self, text: str) -> None:
        self.console.print(f"error: {text}", markup=False, style="bold red" if self.console.is_terminal else None)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stage_started, self.current = time.perf_counter(), name
        if self.interactive:
            with self.console.status(f"{name} ..."):
                yield
        else:
            yield
        self.current = None
        elapsed = time.perf_counter() - self.stage_started
        self.timings[name] = self.timings.get(name, 0.0) + elapsed
        self.line(f"{name}: done in {elapsed:.2f}s")

    @contextmanager
    def steps(self, *, total: int) -> Iterator["StepReporter"]:
        self.release()
        started, self.current = time.perf_counter(), "optimise"
        if self.interactive:
            progress = Progress(
                TextColumn("optimise"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[terms]}", table_column=Column(
                    no_wrap=True, overflow="ellipsis", max_width=max(12, self.console.width - 56))),
                console=self.console,
                transient=False,
            )
            with progress:
                task = progress.add_task("optimise", total=total, terms="", rate="")
                yield StepReporter(reporter=self, total=total, progress=progress, task=task)
        else:
            yield StepReporter(reporter=self, total=total)
        self.current = None
        self.timings["optimise"] = self.timings.get("optimise", 0.0) + time.perf_counter() - started


@dataclass
class StepReporter:
    reporter: Reporter
    total: int
    first: int | None = None
    progress: Progress | None = None
    task: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def update(self, step: int, terms: Mapping[str, float]) -> None:
        """`step` is the 0-based index of the step just finished. The first update fixes where this
        run started (a resumed run starts past 0), so rate and ETA count only the steps run here."""
        if self.first is None:
            self.first = step
            if self.progress is not None:  # restored steps are not progress made at this speed
                self.progress.reset(self.task, completed=step)
        done = step + 1
        elapsed = time.perf_counter() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        text = format_terms(terms)
        if self.progress is not None:
            self.progress.update(self.task, completed=done, terms=text, rate=f"{rate:.2f} step/s")
            return
        every = max(1, self.reporter.log_every)
        if done % every == 0 or done == self.total or done == self.first + 1:
            eta = (self.total - done) / rate if rate > 0 else 0.0
            self.reporter.line(f"step {done}/{self.total} {text} {rate:.2f} step/s eta {eta:.0f}s")
