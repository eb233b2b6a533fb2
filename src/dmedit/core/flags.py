"""How a settings field appears on the command line, stated once beside the field (plain data).

A settings record (EditConfig, runs.settings' records) declares a field with `setting(default,
Flag(...), Switch(...))`; the command line (cli.options) derives every Typer parameter from these
forms, and `record_from` builds the record back from the parsed values. Nothing here knows Typer.

Forms: `Flag` is an option taking the field's value (--steps N); `Switch` is a flag without a value
that sets the field to a fixed value (--no-audio: audio False; --no-spatial-ssm: lambda_spatial 0);
`Argument` is a positional parameter (VIDEO). A parameter's name (its Python name, and a jobs
file's column) is its longest flag name without the dashes: --lr -> lr, --no-audio -> no_audio.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Union

INPUT, FRAMES, OUTPUT, MODEL, METHOD, MASKS, CONTROL = (
    "Input", "Frames", "Output", "Model", "Method", "Masks", "Run control"
)
PANELS = (INPUT, OUTPUT, FRAMES, MODEL, METHOD, MASKS, CONTROL)
"""The help panels of the run options, in the order `-h` shows them."""
MODELS = "the model's"
"""The default shown for a setting whose default comes from the model entry."""
FORMS_KEY = "dmedit.command_line"
"""The key of a field's metadata holding its command-line forms."""
OVERRIDDEN_DEFAULT_KEY = "dmedit.overridden_default"
"""The key of an overrides record's field metadata holding the overridden record's default."""


@dataclass(frozen=True)
class Flag:
    """An option taking the field's value.

    names: the flag names (default: --field-name; "--compile/--no-compile" for an on/off pair);
    shown: None shows the field's default in `-h`; a text is shown instead when the default comes
    from elsewhere (the model entry, the input), and the option then passes None when left out;
    low/high: the command line's bounds; none_choice: a choice word that stands for None
    (--checkpointing none); required: the option must be given even though the field has a default.
    """

    help: str
    panel: str
    names: tuple[str, ...] = ()
    shown: str | None = None
    low: float | None = None
    high: float | None = None
    none_choice: str | None = None
    required: bool = False


@dataclass(frozen=True)
class Switch:
    """A flag without a value that sets the field to `value` when given (--no-audio: False)."""

    name: str
    help: str
    panel: str
    value: Any


@dataclass(frozen=True)
class Argument:
    """A positional parameter (panel None: the help's default Arguments panel)."""

    help: str
    panel: str | None = None


Form = Union[Flag, Switch, Argument]


def setting(default: Any = dataclasses.MISSING, *forms: Form, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line forms (a Flag before the Switch that overrides it)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={FORMS_KEY: forms})


def forms_of(field: dataclasses.Field) -> tuple[Form, ...]:
    """The command-line forms of a field (none for a field the command line does not set)."""
    return tuple(field.metadata.get(FORMS_KEY, ()))


def parameter_name(*, form: Form, field: dataclasses.Field) -> str:
    """The parameter's Python name: the longest flag name without dashes, else the field's name."""
    if isinstance(form, Switch):
        return _name_of(form.name)
    if isinstance(form, Flag) and form.names:
        return _name_of(max((name.split("/")[0] for name in form.names), key=len))
    return field.name


def flag_names(*, form: Flag | Switch, field: dataclasses.Field) -> tuple[str, ...]:
    """The names a flag is given by on the command line."""
    if isinstance(form, Switch):
        return (form.name,)
    return form.names or (f"--{field.name.replace('_', '-')}",)


def literal_choices(hint: Any) -> tuple[Any, ...]:
    """The values of a Literal type, of a union of Literals (in order) and None when it is in it."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if hint is type(None):
        return (None,)
    return tuple(value for part in typing.get_args(hint) for value in literal_choices(part))


def _name_of(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def shown_default(*, field: dataclasses.Field) -> Any:
    """The default `-h` shows and an option passes when left out: the field's, or for an
    overrides record (`overrides_record`) the overridden record's."""
    return field.metadata.get(OVERRIDDEN_DEFAULT_KEY, field.default)


def nested_records(*, record: type) -> dict[str, type]:
    """The fields of `record` holding a settings record of their own (RunRequest.span ...)."""
    hints = typing.get_type_hints(record)
    return {field.name: hints[field.name] for field in dataclasses.fields(record)
            if dataclasses.is_dataclass(hints[field.name])}


def flagged_fields(*, record: type) -> Iterator[tuple[type, dataclasses.Field]]:
    """(record, field) for each field of `record` and of its nested records, in field order."""
    nested = nested_records(record=record)
    for field in dataclasses.fields(record):
        if field.name in nested:
            yield from flagged_fields(record=nested[field.name])
        elif forms_of(field):
            yield record, field


def record_from(*, record: type, values: Mapping[str, Any]) -> Any:
    """`record` (and its nested records) built from parsed command-line values by parameter name.

    A field keeps its default when none of its parameters is in `values` or its value is None; a
    Switch that was given wins over its field's Flag. The record checks what it receives."""
    nested = nested_records(record=record)
    given: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        if field.name in nested:
            given[field.name] = record_from(record=nested[field.name], values=values)
            continue
        for form in forms_of(field):
            value = values.get(parameter_name(form=form, field=field))
            if isinstance(form, Switch):
                if value:
                    given[field.name] = form.value
            elif value is not None:
                none_choice = isinstance(form, Flag) and form.none_choice is not None and value == form.none_choice
                given[field.name] = None if none_choice else value
    return record(**given)


def overrides_record(*, record: type, name: str, module: str, doc: str) -> type:
    """A frozen record with `record`'s fields, each optional with None (= not given) as its
    default, the same command-line forms, and `as_dict()` -> the given values."""
    hints = typing.get_type_hints(record)

    def as_dict(self: Any) -> dict[str, Any]:
        """The overrides that were given (None values dropped)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    fields = [(field.name, Union[hints[field.name], None],
               dataclasses.field(default=None, metadata={**field.metadata, OVERRIDDEN_DEFAULT_KEY: field.default}))
              for field in dataclasses.fields(record)]
    made = dataclasses.make_dataclass(name, fields, frozen=True, namespace={"as_dict": as_dict, "__doc__": doc})
    made.__module__ = module
    return made
