"""`dmedit models` (list), `models show NAME` and `models pull NAME`: the registry's entries and
their weights. The group's --registry reaches the subcommands through the Typer context."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dmedit.cli.options import option_type
from dmedit.cli.runtime import exit_codes
from dmedit.core.console import Reporter
from dmedit.models.catalogue import describe_entry, model_rows, pull_entry
from dmedit.runs.settings import ModelSettings

EntryName = Annotated[str, typer.Argument(help="Entry name.", show_default=False)]
Registry = option_type(record=ModelSettings, name="registry")


def models_list(ctx: typer.Context, registry: Registry = None) -> None:
    """List the registry's video models, detectors and metric scorers, and whether their weights are here."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = registry
        return
    with exit_codes(Reporter()):
        for row in model_rows(registry_file=registry):
            typer.echo(row)


def models_show(ctx: typer.Context, name: EntryName) -> None:
    """Show one entry with every field, where its weights are looked for, and whether they are present."""
    with exit_codes(Reporter()):
        typer.echo(describe_entry(name=name, registry_file=_registry(ctx=ctx)))


def models_pull(ctx: typer.Context, name: EntryName) -> None:
    """Download an entry's weights into the standard hub cache (needs a network)."""
    with exit_codes(Reporter()):
        folder = pull_entry(name=name, registry_file=_registry(ctx=ctx))
        typer.echo(f"{name}: weights in {folder}")


def _registry(*, ctx: typer.Context) -> Optional[Path]:
    return ctx.obj
