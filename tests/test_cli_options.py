"""Each option is defined once, in its settings record: the flags of `run`, `batch`, `ablate` and a
jobs file's columns are derived from the records' command-line forms and build the records back.
A new setting (a throwaway record here, or any flagged EditConfig field) needs nothing else."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from typer.testing import CliRunner

from dmedit.cli.app import app
from dmedit.cli.evaluate import ABLATE_LEFT_OUT
from dmedit.cli.options import record_options, with_options
from dmedit.cli.run_flags import RunFlags, job_options
from dmedit.core.config import EditConfig
from dmedit.core.errors import UsageError
from dmedit.core.flags import (
    METHOD, MODELS, Argument, Flag, Switch, flag_names, forms_of, overrides_record, parameter_name, record_from,
    setting,
)
from dmedit.runs.settings import EditOverrides, RunRequest

runner = CliRunner()


@dataclass(frozen=True)
class ToyConfig:
    """A method record with a loss weight added the way EditConfig gets one."""

    steps: int = setting(10, Flag(help="Steps.", panel=METHOD, shown=MODELS, low=1))
    lambda_foo: float = setting(1.0, Flag(help="Weight of the foo loss.", panel=METHOD, shown=MODELS),
                                Switch("--no-foo", help="Ablation: drop foo.", panel=METHOD, value=0.0))
    reduction: Literal["mean", "sum"] = setting("mean", Flag(help="How foo sums.", panel=METHOD))


ToyOverrides = overrides_record(record=ToyConfig, name="ToyOverrides", module=__name__, doc="Toy overrides.")


@dataclass(frozen=True)
class ToyRequest:
    video: Path = setting(dataclasses.MISSING, Argument(help="Input video."))
    edit: ToyOverrides = field(default_factory=ToyOverrides)  # type: ignore[valid-type]


def toy_app(seen: list[Any]) -> typer.Typer:
    def toy(**values: Any) -> None:
        """Build the toy request from the parsed values."""
        seen.append(record_from(record=ToyRequest, values=values))

    toy_app = typer.Typer()
    toy_app.command()(with_options(command=toy, options=record_options(record=ToyRequest)))
    return toy_app


def test_a_new_loss_weight_gets_its_flag_switch_help_and_request_from_its_record_alone() -> None:
    seen: list[Any] = []
    shown = runner.invoke(toy_app(seen), ["--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for text in ("--lambda-foo", "Weight of the foo loss.", "--no-foo", "(the model's)", "mean|sum"):
        assert text in shown.output
    assert runner.invoke(toy_app(seen), ["v.mp4", "--lambda-foo", "2.5", "--reduction", "sum"]).exit_code == 0
    assert runner.invoke(toy_app(seen), ["v.mp4", "--lambda-foo", "2.5", "--no-foo"]).exit_code == 0
    assert runner.invoke(toy_app(seen), ["v.mp4"]).exit_code == 0
    assert [request.edit.as_dict() for request in seen] == [
        {"lambda_foo": 2.5, "reduction": "sum"}, {"lambda_foo": 0.0, "reduction": "mean"}, {"reduction": "mean"}
    ], "a default shown in -h is passed; one from the model entry is left to it (None)"
    assert runner.invoke(toy_app(seen), ["v.mp4", "--steps", "0"]).exit_code == 2, "the record's bound"


def flagged_edit_fields() -> list[tuple[dataclasses.Field, Flag | Switch]]:
    return [(field, form) for field in dataclasses.fields(EditConfig) for form in forms_of(field)]


def given_value(*, field: dataclasses.Field, form: Flag) -> tuple[str, Any]:
    """A valid value other than the default, as typed on the command line and as parsed."""
    hint = typing.get_type_hints(EditConfig)[field.name]
    if typing.get_origin(hint) is Literal:
        choice = [value for value in typing.get_args(hint) if value != field.default][0]
        return choice, choice
    number = int(form.low or 0) + 3
    return str(number), hint(number)


def test_every_flagged_edit_setting_is_a_run_batch_and_ablate_option() -> None:
    helps = {command: runner.invoke(app, [command, "-h"], terminal_width=400, env={"COLUMNS": "400"}).output
             for command in ("run", "batch", "ablate")}
    assert EditOverrides.__dataclass_fields__.keys() == EditConfig.__dataclass_fields__.keys()
    for field, form in flagged_edit_fields():
        for name in flag_names(form=form, field=field):
            assert name in helps["run"] and name in helps["batch"], name
            assert (name in helps["ablate"]) != (parameter_name(form=form, field=field) in ABLATE_LEFT_OUT), name


@pytest.mark.parametrize("field, form", flagged_edit_fields(), ids=lambda item: getattr(item, "name", ""))
def test_every_flagged_edit_setting_round_trips_into_the_run_request(field: dataclasses.Field,
                                                                     form: Flag | Switch) -> None:
    command = typer.main.get_command(app).commands["run"]
    name = flag_names(form=form, field=field)[0]
    typed, parsed = (None, form.value) if isinstance(form, Switch) else given_value(field=field, form=form)
    args = ["v.mp4", "--src", "a", "--tgt", "b", name, *([] if typed is None else [typed])]
    context = command.make_context("run", args)
    request = RunFlags(values=context.params).request()
    assert isinstance(request, RunRequest)
    assert getattr(request.edit, field.name) == parsed
    assert request.edit.as_dict()[field.name] == parsed, "what EditConfig.merged receives"


def test_a_jobs_file_column_converts_with_runs_own_parameter() -> None:
    options = job_options()
    for field, form in flagged_edit_fields():
        column = parameter_name(form=form, field=field)
        assert column in options.converters and column in options.defaults, column
    assert options.converters["steps"]("4") == 4
    assert options.converters["checkpointing"]("none") == "none"
    with pytest.raises(UsageError, match=re.escape("Invalid value for '--steps'")):
        options.converters["steps"]("0")
    request = options.build(flags={**options.defaults, "video": Path("v.mp4"), "src": "a", "tgt": "b",
                                   "checkpointing": "none", "no_audio": True, "lr": 0.5})
    assert (request.model.checkpointing, request.output.audio, request.edit.learning_rate) == (None, False, 0.5)


@pytest.mark.parametrize("command", ["run", "mask", "batch", "eval", "ablate"])
def test_each_panel_once_and_help_last(command: str) -> None:
    shown = runner.invoke(app, [command, "-h"], terminal_width=200, env={"COLUMNS": "200"}).output
    panels = re.findall(r"╭─ (\w[\w ]*?) ─", shown)
    assert len(panels) == len(set(panels)) and "Options" not in panels, panels
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert "--help" in rows[-1], rows[-1]
