"""`dmedit batch` takes every option of `dmedit run` (they apply to each job; a job's own column
wins) without restating them: the batch command's signature gains `run`'s parameters, with their
annotations (help, panel, checks) and defaults, so there is one definition of each run option.
Pure `inspect`: nothing heavy is imported, and `dmedit batch -h` lists them with their defaults.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Collection

RUN_OPTIONS_LEFT_OUT = ("video", "output", "overwrite", "skip_existing", "resume", "quiet", "log_every")
"""`run` parameters a batch has its own form of (JOBS, --out-dir, done jobs skipped, --force, -q),
or no use for (per-step progress lines)."""


def with_run_options(*, command: Callable[..., Any], run: Callable[..., Any],
                     leave_out: Collection[str] = RUN_OPTIONS_LEFT_OUT) -> Callable[..., Any]:
    """`command`, whose last parameter is `**run_options`, with `run`'s parameters (but those it
    has itself and `leave_out`) in place of it; Typer then passes them in `run_options`."""
    own = inspect.signature(command, eval_str=True)
    kept = [param for param in own.parameters.values() if param.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {param.name for param in kept} | set(leave_out)
    added = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for param in inspect.signature(run, eval_str=True).parameters.values() if param.name not in taken]
    kept = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in kept]
    command.__signature__ = own.replace(parameters=kept + added)  # type: ignore[attr-defined]
    command.__annotations__ = {param.name: param.annotation for param in kept + added} | {"return": None}
    return command
