"""The `dmedit` command line (Typer): the app, `run`, `mask` and `probe`, and the registration of
the other commands (cli.models, cli.batch, cli.evaluate), which know nothing of this module.

Every option of a setting is derived from its settings record (core.flags, cli.options): `run`'s
from run_flags.RUN_OPTIONS, which `batch` and `ablate` share. Nothing heavy is imported at module
level: `dmedit --version` and `dmedit -h` never import torch. stdout carries only results (written
paths, probe facts); progress and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version as package_version
from typing import Annotated, Any

import typer

from dmedit.cli.batch import BATCH_EXIT_CODES_HELP, batch
from dmedit.cli.evaluate import ablate, eval_command
from dmedit.cli.models import models_convert, models_list, models_pull, models_show
from dmedit.cli.options import PanelledCommand, PanelledGroup, option_type, record_options, with_options
from dmedit.cli.run_flags import RUN_OPTIONS, RunControl, RunFlags
from dmedit.cli.runtime import EXIT_CODES_HELP, HELP_SETTINGS, exit_codes, prepare_environment
from dmedit.core.console import Reporter
from dmedit.core.errors import EXIT_INTERRUPTED, EXIT_USAGE
from dmedit.core.flags import record_from
from dmedit.runs.settings import MaskRequest, RunRequest

MASK_OPTIONS = (
    *record_options(record=MaskRequest, only=(
        "video", "mask_prompt", "output", "start", "frames", "stride", "fps", "model", "detector", "registry",
        "device", "box_threshold", "text_threshold", "smooth", "dilate", "overwrite"), changes={
        "mask_prompt": {"required": True},
        "output": {"help": "Base name: writes OUT.mask.mp4 and OUT.masks/.", "shown": "IN"},
        "model": {"help": "Model whose frame count and detector apply."}}),
    *record_options(record=RunControl, only=("offline", "quiet")),
)
"""`dmedit mask`'s options: the detection's part of run's, some worded for a preview."""

app = typer.Typer(
    name="dmedit",
    help="Edit an object in a video from text (DreamMotion), keeping its motion and its surroundings.\n\n"
    + EXIT_CODES_HELP,
    context_settings=HELP_SETTINGS, rich_markup_mode="rich", no_args_is_help=True,
    pretty_exceptions_show_locals=False, add_completion=False,
)
models_app = typer.Typer(help="List, inspect, download and convert the models of the registry.\n\n"
                         + EXIT_CODES_HELP, context_settings=HELP_SETTINGS, invoke_without_command=True,
                         cls=PanelledGroup)
app.add_typer(models_app, name="models")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dmedit {package_version('dmedit')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Edit an object in a video from text (DreamMotion)."""


Video = option_type(record=RunRequest, name="video")


def probe(
    video: Video,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Print a video's size, rotation, exact frame rate, frame count, duration, codec and audio."""
    from dmedit.media.video import probe as probe_video, readable_input  # imports av and cv2

    reporter = Reporter()
    with exit_codes(reporter), readable_input(path=video) as readable:
        facts = probe_video(path=readable, shown_as=video).to_dict()
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:14} {value}")


def run(**values: Any) -> None:
    """Edit VIDEO: turn --src into --tgt, keeping motion and everything else. Prints the output path."""
    _run_command(flags=RunFlags(values=values))


def _run_command(*, flags: RunFlags) -> None:
    control = flags.control
    reporter = Reporter(quiet=control.quiet, log_every=control.log_every)
    reporter.count_start_up()
    with exit_codes(reporter):
        with reporter.stage("start-up"):
            prepare_environment(offline=control.offline)
            request = flags.request()  # bad settings fail here, before torch and the model libraries load
            from dmedit.evaluation.scoring import run_extras
            from dmedit.runs.pipeline import run_edit
        written = run_edit(request=request, reporter=reporter, extras=run_extras(request=request, reporter=reporter))
        if written is not None:
            typer.echo(str(written))


with_options(command=run, options=RUN_OPTIONS)


def mask_preview(**values: Any) -> None:
    """Detect the object and write a mask preview (OUT.mask.mp4) and PNGs (OUT.masks/) for `run --mask`.
    Prints the two written paths."""
    control = RunFlags(values=values).control
    reporter = Reporter(quiet=control.quiet)
    with exit_codes(reporter):
        prepare_environment(offline=control.offline)
        request = record_from(record=MaskRequest, values=values)
        from dmedit.runs.pipeline import run_mask_preview  # imports torch
        for path in run_mask_preview(request=request, reporter=reporter):
            typer.echo(str(path))


with_options(command=mask_preview, options=MASK_OPTIONS)


def _register() -> None:
    """Every command on the app, each with its exit codes below its help."""
    for name, command in {"probe": probe, "run": run, "mask": mask_preview, "batch": batch, "eval": eval_command,
                          "ablate": ablate}.items():
        epilog = BATCH_EXIT_CODES_HELP if command is batch else EXIT_CODES_HELP
        app.command(name, epilog=epilog, cls=PanelledCommand)(command)
    models_app.callback()(models_list)
    models_app.command("show", cls=PanelledCommand)(models_show)
    models_app.command("pull", cls=PanelledCommand)(models_pull)
    models_app.command("convert", cls=PanelledCommand)(models_convert)


_register()


def main() -> None:
    """Entry point: a command-line usage error is one line on stderr and exit 2, like ours."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as error:  # Typer's (vendored) Click errors: bad or missing flags
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        hint = f" (see {context.command_path} -h)" if context is not None else ""
        Reporter().error(" ".join(f"{message}{hint}".split()))
        sys.exit(getattr(error, "exit_code", EXIT_USAGE))
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
