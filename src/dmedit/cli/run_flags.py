"""`dmedit run`'s options, derived once from the settings records, for every command that takes them.

`run` takes all of RUN_OPTIONS; `batch` and `ablate` take them but those they set themselves
(`run_options(leave_out=...)`); a jobs file's columns are converted and checked by the same
parameters (`job_options`). RunControl holds the three options that are no setting of the edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Mapping

import typer

from dmedit.batch.jobs import Convert, RunOptions
from dmedit.cli.options import REQUIRED, CommandOption, record_options, with_options
from dmedit.core.console import Reporter
from dmedit.core.errors import UsageError
from dmedit.core.flags import CONTROL, MODEL, Flag, record_from, setting
from dmedit.runs.settings import RunRequest


@dataclass(frozen=True)
class RunControl:
    """How a command talks and whether it may reach the model hub: offline (set before anything
    imports huggingface_hub), log_every (plain progress lines), quiet (errors and skips only)."""

    offline: bool = setting(False, Flag(help="Never contact the model hub.", panel=MODEL))
    log_every: int = setting(Reporter.log_every, Flag(help="Plain progress: one line every K steps.", panel=CONTROL,
                                                      low=1))
    quiet: bool = setting(False, Flag(help="Nothing on stderr but errors and skips.", panel=CONTROL,
                                      names=("-q", "--quiet")))


RUN_OPTIONS: tuple[CommandOption, ...] = (*record_options(record=RunRequest), *record_options(record=RunControl))
"""Every option of `dmedit run`, in the records' field order."""


@dataclass(frozen=True)
class RunFlags:
    """A command's parsed run options (parameter name -> value), as the records they describe."""

    values: Mapping[str, Any]

    @property
    def control(self) -> RunControl:
        return record_from(record=RunControl, values=self.values)

    def request(self) -> RunRequest:
        """The grouped, checked settings (UsageError for a bad value or combination)."""
        return record_from(record=RunRequest, values=self.values)


def run_options(*, leave_out: Collection[str] = (),
                changes: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[CommandOption, ...]:
    """RUN_OPTIONS but those named in `leave_out` (a command's own or unused ones); `changes`:
    parameter name -> form fields a command words its own way (record_options)."""
    options = RUN_OPTIONS if not changes else (*record_options(record=RunRequest, changes=changes),
                                               *record_options(record=RunControl, changes=changes))
    return tuple(option for option in options if option.name not in leave_out)


def build_run_request(*, flags: Mapping[str, Any]) -> RunRequest:
    """Run options by parameter name -> the checked RunRequest (a jobs file's request builder)."""
    return RunFlags(values=flags).request()


def job_options() -> RunOptions:
    """What a jobs file's columns need: a converter per run option (the option's own parsing and
    checks, a bad value a UsageError), run's defaults and the request builder."""
    def command(**values: Any) -> None:
        """Holds run's parameters so that Typer makes their Click parameters."""

    holder = typer.Typer()
    holder.command()(with_options(command=command, options=RUN_OPTIONS))
    click_command = typer.main.get_command(holder)
    context = click_command.context_class(click_command)
    converters = {param.name: _converter(param=param, context=context)
                  for param in click_command.params if param.name is not None}
    defaults = {option.name: None if option.default is REQUIRED else option.default for option in RUN_OPTIONS}
    return RunOptions(converters=converters, defaults=defaults, build=build_run_request)


def _converter(*, param: Any, context: Any) -> Convert:
    """`param`'s own conversion and checks of a raw value, a refusal as a one-line UsageError."""
    def convert(raw: Any) -> Any:
        try:
            return param.process_value(context, raw)
        except typer.TyperException as error:
            message = error.format_message() if hasattr(error, "format_message") else str(error)
            raise UsageError(" ".join(message.split())) from None

    return convert
