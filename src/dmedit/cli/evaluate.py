"""`dmedit eval` (score an edit against its source) and `dmedit ablate` (the full method and the
paper's three ablations, scored in one table). The scoring is evaluation.scoring, the ablation runs
evaluation.ablation; `ablate` takes every `run` option it does not set itself from
run_flags.RUN_OPTIONS, as `batch` does. Each command parses --scorers once (parse_scorers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dmedit.cli.options import option_type, with_options
from dmedit.cli.run_flags import RunControl, RunFlags, run_options
from dmedit.cli.runtime import exit_codes, prepare_environment
from dmedit.core.console import Reporter
from dmedit.core.errors import UsageError
from dmedit.core.flags import FRAMES, INPUT, MASKS, OUTPUT
from dmedit.models.scorers.choice import parse_scorers
from dmedit.runs.settings import ModelSettings, SpanSettings

EVALUATION = "Evaluation"
SCORERS_HELP = ("Models of the model-based metrics: 'default' (the registry's; a metric whose weights are not here is "
                "skipped, with the `dmedit models pull` that adds them), 'all' (the registry's, every one required), "
                "'none' (weight-free metrics only), 'tiny' (random-weight test models) or ROLE=ENTRY pairs "
                "(clip=..., lpips=..., tracker=...).")
ABLATE_LEFT_OUT = (
    "output", "skip_existing", "resume", "no_mask", "no_spatial_ssm", "no_temporal_ssm", "compare", "plot", "eval",
    "eval_scorers",
)
"""`run` options ablate sets itself (the variants, the outputs in --out-dir) or has no use for."""

Scorers = Annotated[Optional[str], typer.Option("--scorers", help=SCORERS_HELP, rich_help_panel=EVALUATION,
                                                show_default="default")]
Start = option_type(record=SpanSettings, name="start")
Registry = option_type(record=ModelSettings, name="registry")
Device = option_type(record=ModelSettings, name="device")
Offline = option_type(record=RunControl, name="offline")
Quiet = option_type(record=RunControl, name="quiet")


def eval_command(
    source: Annotated[Path, typer.Argument(help="The source video.", show_default=False)],
    edited: Annotated[Path, typer.Argument(help="The edited video (its run report EDITED.json, when there, gives the span, mask and --tgt).", show_default=False)],
    tgt: Annotated[Optional[str], typer.Option("--tgt", help="Text the edit should show (Text-Align).", rich_help_panel=INPUT, show_default="the run report's")] = None,
    mask: Annotated[Optional[str], typer.Option(help="'full', or a PNG, a folder of PNGs or a mask video: the object; the outside-mask metrics score the rest.", rich_help_panel=MASKS, show_default="EDITED.masks/ when the run kept its mask there, else the run report's")] = None,
    start: Start = None,
    frames: Annotated[Optional[str], typer.Option(help="Source frames compared: a number, or 'all'.", rich_help_panel=FRAMES, show_default="as many as EDITED has")] = None,
    scorers: Scorers = None,
    registry: Registry = None,
    device: Device = ModelSettings.device,
    offline: Offline = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON record instead of the table.", rich_help_panel=OUTPUT)] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the JSON record to FILE and the per-frame curves to FILE's name with .png.", rich_help_panel=OUTPUT, show_default="none")] = None,
    quiet: Quiet = False,
) -> None:
    """Score EDITED against SOURCE: the paper's metrics (Text-Align, Frame-Con, Frame-LPIPS,
    Motion-Fidelity) and weight-free ones (track motion fidelity, flow error, warp error,
    PSNR/SSIM outside the mask). Prints a table (or JSON with --json)."""
    reporter = Reporter(quiet=quiet)
    with exit_codes(reporter):
        prepare_environment(offline=offline)
        from dmedit.evaluation.metric_report import format_table  # imports cv2
        from dmedit.evaluation.compare import EvalRequest
        from dmedit.evaluation.scoring import evaluate, report_skipped  # imports torch

        request = EvalRequest(source=source, edited=edited, target_text=tgt, mask=mask, start=start, frames=frames,
                              registry=registry, device=device, scorers=parse_scorers(text=scorers))
        if out is not None:
            _check_out(out=out, inputs=(source, edited))
        metrics, record = evaluate(request=request)
        record = {"source": str(source), "edited": str(edited), **record}
        for note in record["notes"]:
            reporter.line(f"note: {note}")
        report_skipped(reporter=reporter, skipped=record["skipped"])
        reporter.release()
        if out is not None:
            _write_scores(out=out, metrics=metrics, record=record)
        typer.echo(json.dumps(record, indent=2) if as_json else format_table(metrics=metrics, skipped=record["skipped"]))


def _check_out(*, out: Path, inputs: tuple[Path, ...]) -> None:
    if out.suffix.lower() != ".json":
        raise UsageError(f"--out {out}: name a .json file (the curves go beside it as .png)")
    edited = inputs[-1]
    for path in (*inputs, edited.with_name(f"{edited.stem}.json")):
        if path.exists() and out.resolve() == path.resolve():
            raise UsageError(f"--out {out}: is an input (or EDITED's run report); choose another file")
    folder = next(parent for parent in out.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, not a folder")


def _write_scores(*, out: Path, metrics: dict[str, Any], record: dict[str, Any]) -> None:
    """OUT.json and OUT.png (the per-frame curves), staged and renamed into place together, in
    OUT's folder, created when missing (and removed again when the write fails)."""
    from dmedit.core.files import created_folders, write_json
    from dmedit.evaluation.metric_report import plot_curves
    from dmedit.runs.outputs import staged_bundle

    with created_folders(folder=out.parent), staged_bundle(output=out) as staging:
        plot_curves(path=staging / out.with_suffix(".png").name, series={"edit": metrics})
        write_json(path=staging / out.name, data=record)


with_options(command=eval_command)


def ablate(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder receiving the four runs, ablation.md/.json/.png, ablation.mp4 and index.html, the ablation's page (not with --no-html).", rich_help_panel=OUTPUT, show_default=False)],
    scorers: Scorers = None,
    **given: Any,
) -> None:
    """Run the full method and the paper's ablations (no mask, no S-SSM, no T-SSM) with one seed,
    score each, and write OUT_DIR/ablation.md, .json (every metric), .png (curves) and .mp4 (the
    four results side by side). Prints the Markdown table. Every `run` option below applies to
    all four runs; a detected mask is detected once and shared."""
    flags = RunFlags(values=given)
    control = flags.control
    reporter = Reporter(quiet=control.quiet, log_every=control.log_every)
    with exit_codes(reporter):
        prepare_environment(offline=control.offline)
        from dmedit.core.files import created_folders
        from dmedit.evaluation.ablation import AblationRequest, run_ablation  # imports torch

        request = AblationRequest(run=flags.request(), out_dir=out_dir, scorers=parse_scorers(text=scorers),
                                  overwrite=bool(given["overwrite"]))
        with created_folders(folder=out_dir):
            typer.echo(run_ablation(request=request, reporter=reporter), nl=False)


with_options(command=ablate, options=run_options(leave_out=ABLATE_LEFT_OUT,
                                                 changes={"video": {"help": "Input video (a file)."}}))
