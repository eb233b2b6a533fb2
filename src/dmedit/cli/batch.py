"""`dmedit batch`: many clips, each worker loading a model once (batch.py runs the queue).

Its own options are here; every `run` option is added to its signature from cli.run by
batch_options.with_run_options, so each run option is defined once (in cli.py).
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmedit.cli.app import INPUT, Quiet, _option, _prepare_environment, app, exit_codes, run_request
from dmedit.core.console import Reporter

BATCH = "Batch"
BATCH_EXIT_CODES_HELP = (
    "Exit codes: 0 every job done (or done before), 6 some jobs failed (each one in the summary, with its "
    "exit code and reason), 1 system error, 2 usage (bad flags, jobs file, row or column), 130 interrupted, "
    "143 terminated (run the batch again to go on)."
)


class LogFormat(str, Enum):
    text = "text"
    jsonl = "jsonl"


def batch(
    jobs: Annotated[Path, typer.Argument(help="A jobs file (.csv, .jsonl or .toml; one job a row: input, src, tgt and any run option) or a folder of videos.", show_default=False, rich_help_panel=INPUT)],
    out_dir: Annotated[Path, _option("-o", "--out-dir", help="Folder receiving each job's bundle: NAME.mp4, NAME.json (report), NAME.batch.json and companions.", panel=BATCH, default=False)],
    src: Annotated[Optional[str], _option("--src", help="Text describing the object now, for every job (a job's src wins).", panel=INPUT, default=False)] = None,
    tgt: Annotated[Optional[str], _option("--tgt", help="Text describing the object wanted, for every job (a job's tgt wins).", panel=INPUT, default=False)] = None,
    workers: Annotated[Optional[int], _option(help="Worker processes here (with --ray: worker actors), each loading a model once.", panel=BATCH, default="one per GPU, else 1", min=1)] = None,
    ray: Annotated[Optional[str], _option("--ray", help="Run on Ray, one worker per GPU: auto (this machine's cluster, else a new local one), local, or a cluster address. pip install 'dmedit\\[ray]'.", panel=BATCH, default="off")] = None,
    force: Annotated[bool, _option("--force", help="Run done jobs again.", panel=BATCH)] = False,
    log_format: Annotated[LogFormat, _option(help="jsonl: one JSON event a line on stdout per job start and end, then the summary.", panel=BATCH)] = LogFormat.text,
    quiet: Quiet = False,
    **run_options: object,
) -> None:
    """Edit many clips (a jobs file, or a folder of videos with --src/--tgt); prints a summary table.

    Every `run` option below applies to each job (a job's own column wins). Each worker loads a
    model once; done jobs are skipped; a failed job is recorded and the rest go on. The summary on
    stdout: job, status, seconds, output."""
    from dmedit.core.threads import THREAD_COUNT_VARIABLES

    given = {**run_options, "src": src, "tgt": tgt}
    reporter = Reporter(quiet=quiet)
    stdout = sys.stdout  # results only: what Ray prints while it runs goes to stderr (batch.open_pool)
    user_threads = any(os.environ.get(name, "").strip() for name in THREAD_COUNT_VARIABLES)
    with exit_codes(reporter):
        _prepare_environment(offline=bool(given["offline"]))
        from dmedit.batch.queue import BatchSettings, run_batch
        from dmedit.core.errors import UsageError
        from dmedit.batch.jobs import RunOptions, load_jobs

        if jobs.is_dir() and (src is None or tgt is None):
            raise UsageError(f"{jobs}: a folder of videos needs --src and --tgt")
        command = typer.main.get_command(app).commands["run"]
        options = RunOptions(params={param.name: param for param in command.params},
                             context=command.context_class(command), build=run_request)
        specs = load_jobs(source=jobs, given=given, options=options, out_dir=out_dir)
        settings = BatchSettings(workers=workers, ray=ray, force=force, log_format=log_format.value,
                                 share_cpus=not user_threads)
        summary = run_batch(jobs=specs, settings=settings, reporter=reporter,
                            emit=lambda line: typer.echo(line, file=stdout))
        summary.raise_for_failures()
