"""`dmedit batch`: many clips, each worker loading a model once (batch.queue runs the queue).

Its own options are here; every `run` option (but those a batch sets itself) comes from
run_flags.RUN_OPTIONS, and a jobs file's columns are converted by run's parameters (job_options).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from dmedit.batch.jobs import load_jobs
from dmedit.cli.options import with_options
from dmedit.cli.run_flags import RunFlags, job_options, run_options
from dmedit.cli.runtime import exit_codes, prepare_environment
from dmedit.core.console import Reporter
from dmedit.core.errors import UsageError
from dmedit.core.flags import INPUT, record_from
from dmedit.runs.settings import OutputSettings
from dmedit.core.threads import THREAD_COUNT_VARIABLES

BATCH = "Batch"
BATCH_EXIT_CODES_HELP = (
    "Exit codes: 0 every job done (or done before), 6 some jobs failed (each one in the summary, with its "
    "exit code and reason; a full disk starts no more jobs), 1 system error (also: a job's NAME.batch.json "
    "cannot be written), 2 usage (bad flags, jobs file, row or column), 130 interrupted, "
    "143 terminated (run the batch again to go on)."
)
RUN_OPTIONS_LEFT_OUT = ("video", "output", "overwrite", "skip_existing", "resume", "log_every")
"""`run` options a batch has its own form of (JOBS, --out-dir, done jobs skipped, --force) or no use
for (per-step progress lines)."""
LogFormat = Literal["text", "jsonl"]


def batch(
    jobs: Annotated[Path, typer.Argument(help="A jobs file (.csv, .jsonl or .toml; one job a row: input, src, tgt and any run option) or a folder of videos.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Folder receiving each job's bundle (NAME.mp4, NAME.json report, NAME.html page, NAME.batch.json and companions) and index.html, a card per job (not with --no-html).", rich_help_panel=BATCH, show_default=False)],
    src: Annotated[Optional[str], typer.Option("--src", help="Text describing the object now, for every job (a job's src wins).", rich_help_panel=INPUT, show_default=False)] = None,
    tgt: Annotated[Optional[str], typer.Option("--tgt", help="Text describing the object wanted, for every job (a job's tgt wins).", rich_help_panel=INPUT, show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes here (with --ray: worker actors), each loading a model once.", rich_help_panel=BATCH, show_default="one per GPU, else 1", min=1)] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run on Ray, one worker per GPU: auto (this machine's cluster, else a new local one), local, or a cluster address. pip install 'dmedit\\[ray]'.", rich_help_panel=BATCH, show_default="off")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run done jobs again.", rich_help_panel=BATCH)] = False,
    log_format: Annotated[LogFormat, typer.Option(help="jsonl: one JSON event a line on stdout per job start and end, then the summary.", rich_help_panel=BATCH)] = "text",
    **given: Any,
) -> None:
    """Edit many clips (a jobs file, or a folder of videos with --src/--tgt); prints a summary table.

    Every `run` option below applies to each job (a job's own column wins). Each worker loads a
    model once; done jobs are skipped; a failed job is recorded and the rest go on. The summary on
    stdout: job, status, seconds, output."""
    control = RunFlags(values=given).control
    reporter = Reporter(quiet=control.quiet)
    stdout = sys.stdout  # results only: what Ray prints while it runs goes to stderr (batch.open_pool)
    user_threads = any(os.environ.get(name, "").strip() for name in THREAD_COUNT_VARIABLES)
    with exit_codes(reporter):
        prepare_environment(offline=control.offline)
        from dmedit.batch.queue import BatchSettings, run_batch  # imports torch

        if jobs.is_dir() and (src is None or tgt is None):
            raise UsageError(f"{jobs}: a folder of videos needs --src and --tgt")
        specs = load_jobs(source=jobs, given={**given, "src": src, "tgt": tgt}, options=job_options(),
                          out_dir=out_dir)
        settings = BatchSettings(workers=workers, ray=ray, force=force, log_format=log_format,
                                 share_cpus=not user_threads, out_dir=out_dir,
                                 gallery=record_from(record=OutputSettings, values=given).html)
        summary = run_batch(jobs=specs, settings=settings, reporter=reporter,
                            emit=lambda line: typer.echo(line, file=stdout))
        summary.raise_for_failures()


with_options(command=batch, options=run_options(leave_out=RUN_OPTIONS_LEFT_OUT))
