"""The batch's page, OUT_DIR/index.html: one card per job (a poster frame of the edit, the prompts,
the status with a failed job's exit code and reason, the time, links to the job's page, report and
video), rewritten atomically whenever a job starts or ends, so a page opened mid-batch shows where
the batch stands (it reloads itself until the batch is over).

The poster is the edit's middle frame as a small JPEG inside the page (no extra file); the layout
and the escaping are runs.page's.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from dmedit.batch.jobs import JobSpec
from dmedit.batch.workers import JobOutcome
from dmedit.core.disk import failed_io_line
from dmedit.core.errors import DmeditError, UsageError
from dmedit.core.files import write_text
from dmedit.media.video import probe, read_frames, select_span
from dmedit.runs.outputs import companion
from dmedit.runs.page import page_link, render_page

PAGE_NAME = "index.html"
POSTER_WIDTH = 320
RELOAD_SECONDS = 10
"""How often a page opened mid-batch reloads itself."""


def check_page_path(*, path: Path, jobs: Sequence[JobSpec]) -> None:
    """UsageError, before any job runs, when a job's own page would be the batch's page (a job named "index")."""
    for job in jobs:
        if job.request.output.html and companion(output=job.output, suffix=".html").resolve() == path.resolve():
            raise UsageError(f"{job.where}: job '{job.name}' would write its page over the batch's page {path}; "
                             "name its output otherwise (the output column) or pass --no-html")


def poster_uri(*, video: Path) -> str | None:
    """The video's middle frame, POSTER_WIDTH wide, as a JPEG data: URI; None when it cannot be read."""
    try:
        info = probe(path=video)
        frame = read_frames(info=info, span=select_span(info=info, start=str(info.frame_count // 2), frames=1))[0]
    except (DmeditError, OSError, ValueError):
        return None
    image = Image.fromarray(frame)
    image.thumbnail((POSTER_WIDTH, POSTER_WIDTH * 4))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _report_seconds(*, output: Path) -> float | None:
    """The total time in a job's report (a job done before this batch)."""
    try:
        report = json.loads(companion(output=output, suffix=".json").read_text(encoding="utf-8"))
        return float(report["timings_s"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Gallery:
    """The cards of a batch's jobs and where the page goes; each change rewrites the page."""

    path: Path
    jobs: list[JobSpec]
    states: dict[int, JobOutcome | str] = field(default_factory=dict)
    """A job's outcome, or "running" / "pending"."""
    shown: dict[int, tuple[str | None, float | None]] = field(default_factory=dict)
    """A finished job's poster and time, read once."""
    started: float = field(default_factory=time.monotonic)
    warn: Callable[[str], None] = lambda line: None
    """Told once when the page cannot be written (a full disk): the page is left as it is and the
    batch goes on, so that its jobs' outcomes, its summary and its exit code are the batch's own."""
    failed: bool = False

    @classmethod
    def opened(cls, *, path: Path, jobs: Sequence[JobSpec], skipped: Sequence[JobOutcome],
               warn: Callable[[str], None]) -> "Gallery":
        """The page of a batch about to run its jobs, written once with the jobs done before."""
        gallery = cls(path=path, jobs=list(jobs), states={outcome.index: outcome for outcome in skipped}, warn=warn)
        gallery.write(running=True)
        return gallery

    def start(self, *, job: JobSpec) -> None:
        self.states[job.index] = "running"
        self.write(running=True)

    def end(self, *, outcome: JobOutcome) -> None:
        self.states[outcome.index] = outcome
        self.shown.pop(outcome.index, None)
        self.write(running=True)

    def finish(self, *, outcomes: Sequence[JobOutcome]) -> None:
        """The page of the ended batch: every job's last outcome, no more reloads."""
        for outcome in outcomes:
            self.states[outcome.index] = outcome
        self.write(running=False)

    def write(self, *, running: bool) -> None:
        if self.failed:
            return
        try:
            self._write(running=running)
        except OSError as error:
            self.failed = True
            self.warn(f"the batch page is no longer updated: {failed_io_line(error=error)}")

    def _write(self, *, running: bool) -> None:
        cards = [self._card(job=job) for job in self.jobs]
        counts = {status: sum(card["status"] == status for card in cards) for status in
                  ("done", "skipped", "failed", "interrupted", "running", "pending")}
        context = {"title": f"dmedit batch: {self.path.parent.name or self.path.parent}", "cards": cards,
                   "counts": {status: count for status, count in counts.items() if count},
                   "seconds": time.monotonic() - self.started, "running": running,
                   "reload": RELOAD_SECONDS, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(path=self.path, text=render_page(package="dmedit.batch", template="gallery.html.j2",
                                                    context=context))

    def _card(self, *, job: JobSpec) -> dict[str, Any]:
        state = self.states.get(job.index, "pending")
        outcome = state if isinstance(state, JobOutcome) else None
        status = outcome.status if outcome else state
        finished = status in ("done", "skipped")
        if finished and job.index not in self.shown:
            seconds = _report_seconds(output=job.output) if status == "skipped" else outcome.seconds
            self.shown[job.index] = (poster_uri(video=job.output), seconds)
        poster, seconds = self.shown[job.index] if finished else (None, outcome.seconds if outcome else None)

        def link(suffix: str | None) -> str | None:
            target = job.output if suffix is None else companion(output=job.output, suffix=suffix)
            return page_link(target=target, page=self.path) if target.is_file() else None

        return {"index": job.index, "name": job.name, "src": job.request.src, "tgt": job.request.tgt,
                "input": job.request.video.name, "status": status, "seconds": seconds,
                "exit_code": outcome.exit_code if outcome and outcome.exit_code else None,
                "reason": outcome.reason if outcome and not finished else None,
                "poster": poster,
                "page": link(".html"), "report": link(".json"), "video": link(None)}
