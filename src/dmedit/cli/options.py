"""Typer parameters derived from the settings records' command-line forms (core.flags).

`record_options` turns each form of a record's fields into a parameter: its names, type (a
Literal's choices, Optional when the default comes from elsewhere), default, help, panel and
bounds; `with_options` gives a command function (taking `**values`) those parameters, and
`option_type` gives one as an annotation for a hand-written signature. The help panels come in
one order (core.flags.PANELS) and `--help` closes the last one (`PanelledCommand`).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterable, Mapping, Optional

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from dmedit.core.flags import (
    INPUT, PANELS, Argument, Flag, Form, Switch, flag_names, flagged_fields, forms_of, literal_choices,
    parameter_name, shown_default,
)

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class CommandOption:
    """One parameter of a command: its Python name (a jobs file's column), its Typer annotation,
    its default (REQUIRED when it has none) and its help panel."""

    name: str
    annotation: Any
    default: Any
    panel: str | None

    def parameter(self) -> inspect.Parameter:
        """The keyword-only parameter a command signature holds."""
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, annotation=self.annotation,
                                 default=self.default)


def record_options(*, record: type, changes: Mapping[str, Mapping[str, Any]] | None = None,
                   only: Iterable[str] | None = None) -> tuple[CommandOption, ...]:
    """A parameter for each command-line form of `record`'s fields and of its nested records'.

    changes: parameter name -> form fields replaced (a command that words an option its own way);
    only: the parameter names kept (all when None)."""
    kept = None if only is None else set(only)
    options = []
    for owner, field in flagged_fields(record=record):
        hint = typing.get_type_hints(owner)[field.name]
        for form in forms_of(field):
            name = parameter_name(form=form, field=field)
            if kept is None or name in kept:
                form = dataclasses.replace(form, **(changes or {}).get(name, {}))
                options.append(_command_option(name=name, form=form, field=field, hint=hint))
    return tuple(options)


def option_type(*, record: type, name: str, **changes: Any) -> Any:
    """The Annotated type of one of `record`'s parameters, for a hand-written signature."""
    (option,) = record_options(record=record, changes={name: changes}, only=(name,))
    return option.annotation


def _command_option(*, name: str, form: Form, field: dataclasses.Field, hint: Any) -> CommandOption:
    if isinstance(form, Argument):
        info = typer.Argument(help=form.help, show_default=False, rich_help_panel=form.panel)
        return CommandOption(name=name, annotation=Annotated[value_type(hint=hint), info], default=REQUIRED,
                             panel=form.panel)
    if isinstance(form, Switch):
        info = typer.Option(form.name, help=form.help, rich_help_panel=form.panel)
        return CommandOption(name=name, annotation=Annotated[bool, info], default=False, panel=form.panel)
    required = form.required or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING)
    default = REQUIRED if required else None if form.shown is not None else shown_default(field=field)
    checks = {key: bound for key, bound in (("min", form.low), ("max", form.high)) if bound is not None}
    shown = False if required else True if form.shown is None else form.shown
    info = typer.Option(*flag_names(form=form, field=field), help=form.help, rich_help_panel=form.panel,
                        show_default=shown, **checks)
    kind = value_type(hint=hint, form=form)
    return CommandOption(name=name, annotation=Annotated[Optional[kind] if default is None else kind, info],
                         default=default, panel=form.panel)


def value_type(*, hint: Any, form: Flag | None = None) -> Any:
    """The type the command line parses a field's value as: its Literal choices (with the form's
    word for None), its one type, or text the record parses (int | "all")."""
    parts = [part for part in (typing.get_args(hint) if _is_union(hint) else (hint,)) if part is not type(None)]
    if all(typing.get_origin(part) is typing.Literal for part in parts):
        none_choice = form.none_choice if form is not None else None
        choices = tuple(none_choice if value is None else value for value in literal_choices(hint))
        return typing.Literal[tuple(choice for choice in choices if choice is not None)]
    return parts[0] if len(parts) == 1 else str


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, type(int | None))


def with_options(*, command: Callable[..., Any], options: Iterable[CommandOption] = ()) -> Callable[..., Any]:
    """`command` with its own parameters and `options` (but those it names itself) in its signature,
    in panel order, all keyword-only: Typer passes the options in `command`'s `**values`."""
    own = inspect.signature(command, eval_str=True)
    kept = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in own.parameters.values()
            if param.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {param.name for param in kept}
    added = [option.parameter() for option in options if option.name not in taken]
    parameters = _in_panel_order(parameters=kept + added)
    command.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {param.name: param.annotation for param in parameters} | {"return": None}
    return command


def _in_panel_order(*, parameters: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Arguments first, then the panels of PANELS, a command's own panels right after Input."""
    panels = [_panel(parameter=param) for param in parameters]
    own = list(dict.fromkeys(panel for panel in panels if panel is not None and panel not in PANELS))
    order = [None, INPUT, *own, *PANELS[1:]]
    return [param for _, param in sorted(zip(panels, parameters), key=lambda pair: order.index(pair[0]))]


def _panel(*, parameter: inspect.Parameter) -> str | None:
    infos = typing.get_args(parameter.annotation)[1:] if typing.get_origin(parameter.annotation) is Annotated else ()
    return next((getattr(info, "rich_help_panel", None) for info in infos), None)


class _HelpLast:
    """--help as the last row of the last panel shown, not alone in an "Options" panel."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        panels = [param.rich_help_panel for param in self.params  # type: ignore[attr-defined]
                  if isinstance(param, TyperOption) and param.rich_help_panel]
        if option is not None and panels:
            option.rich_help_panel = list(dict.fromkeys(panels))[-1]
        return option


class PanelledCommand(_HelpLast, TyperCommand):
    """A command whose --help closes its last panel."""


class PanelledGroup(_HelpLast, TyperGroup):
    """A command group whose --help closes its last panel."""
