"""`dmedit models` (list), `models show NAME`, `models pull NAME` and `models convert PATH`: the
registry's entries and their weights. The group's --registry reaches the subcommands through the
Typer context."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dmedit.cli.options import option_type
from dmedit.cli.runtime import exit_codes
from dmedit.core.console import Reporter
from dmedit.models.catalogue import conversion_lines, describe_entry, model_rows, pull_entry
from dmedit.runs.settings import ModelSettings

EntryName = Annotated[str, typer.Argument(help="Entry name.", show_default=False)]
ModelFolder = Annotated[Path, typer.Argument(help="A model folder (a `path` entry's, or one copied by hand).",
                                             show_default=False)]
RemovePickles = Annotated[bool, typer.Option("--remove-pickles",
                                             help="Delete each pickle checkpoint once its safetensors are there.")]
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
    """Download an entry's weights into the standard hub cache (needs a network); an entry with
    `weights = "pickle"` has its pickle checkpoints converted to safetensors there."""
    reporter = Reporter(held=None)  # each conversion's line as it is done
    with exit_codes(reporter):
        folder = pull_entry(name=name, registry_file=_registry(ctx=ctx), reporter=reporter)
        typer.echo(f"{name}: weights in {folder}")


def models_convert(path: ModelFolder, remove_pickles: RemovePickles = False) -> None:
    """Convert every pickle checkpoint (.bin, .pt, .pth) under a model folder to safetensors beside it,
    named as diffusers and transformers look for them. The pickles are read by PyTorch's restricted
    unpickler (tensors and plain containers only): one that asks to run code is refused (exit 4)."""
    with exit_codes(Reporter()):
        for line in conversion_lines(folder=path, remove_pickles=remove_pickles):
            typer.echo(line)


def _registry(*, ctx: typer.Context) -> Optional[Path]:
    return ctx.obj
