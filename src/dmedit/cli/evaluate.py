"""`dmedit eval` (score an edit against its source) and `dmedit ablate` (the full method and the
paper's three ablations, scored in one table). The scoring is evaluation.py, the ablation runs
ablation.py; `ablate` takes every `run` option from cli.run (batch_options.with_run_options), as
`batch` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmedit.cli.app import (
    FRAMES, INPUT, MASKS, OUTPUT, Device, Offline, Overwrite, Quiet, Registry, Start, _option,
    _prepare_environment, exit_codes, run_request,
)
from dmedit.core.console import Reporter
from dmedit.runs.settings import ModelSettings

EVALUATION = "Evaluation"
SCORERS_HELP = ("Models of the model-based metrics: 'default' (the registry's), 'none' (weight-free metrics only), "
                "'tiny' (random-weight test models) or ROLE=ENTRY pairs (clip=..., lpips=..., tracker=...).")
ABLATE_LEFT_OUT = (
    "video", "output", "overwrite", "skip_existing", "resume", "quiet", "no_mask", "no_spatial_ssm",
    "no_temporal_ssm", "compare", "plot", "eval", "eval_scorers",
)
"""`run` parameters ablate sets itself (the variants, the outputs in --out-dir) or has no use for."""
LEFT_OUT_DEFAULTS = {"output": None, "skip_existing": False, "resume": False, "no_mask": False,
                     "no_spatial_ssm": False, "no_temporal_ssm": False, "compare": False, "plot": False,
                     "eval": False, "eval_scorers": None}

Scorers = Annotated[Optional[str], _option("--scorers", help=SCORERS_HELP, panel=EVALUATION, default="default")]


def eval_command(
    source: Annotated[Path, typer.Argument(help="The source video.", show_default=False, rich_help_panel=INPUT)],
    edited: Annotated[Path, typer.Argument(help="The edited video (its run report EDITED.json, when there, gives the span, mask and --tgt).", show_default=False, rich_help_panel=INPUT)],
    tgt: Annotated[Optional[str], _option("--tgt", help="Text the edit should show (Text-Align).", panel=INPUT, default="the run report's")] = None,
    mask: Annotated[Optional[str], _option(help="'full', or a PNG, a folder of PNGs or a mask video: the object; the outside-mask metrics score the rest.", panel=MASKS, default="the run report's")] = None,
    start: Start = None,
    frames: Annotated[Optional[str], _option(help="Source frames compared: a number, or 'all'.", panel=FRAMES, default="as many as EDITED has")] = None,
    scorers: Scorers = None,
    registry: Registry = None,
    device: Device = ModelSettings.device,
    offline: Offline = False,
    as_json: Annotated[bool, _option("--json", help="Print the JSON record instead of the table.", panel=OUTPUT)] = False,
    out: Annotated[Optional[Path], _option("--out", help="Also write the JSON record to FILE and the per-frame curves to FILE's name with .png.", panel=OUTPUT, default="none")] = None,
    quiet: Quiet = False,
) -> None:
    """Score EDITED against SOURCE: the paper's metrics (Text-Align, Frame-Con, Frame-LPIPS,
    Motion-Fidelity) and weight-free ones (track motion fidelity, flow error, warp error,
    PSNR/SSIM outside the mask). Prints a table (or JSON with --json)."""
    reporter = Reporter(quiet=quiet)
    with exit_codes(reporter):
        _prepare_environment(offline=offline)
        from dmedit.evaluation.scoring import EvalRequest, evaluate
        from dmedit.models.scorers.choice import parse_scorers
        from dmedit.evaluation.metric_report import format_table, plot_curves
        from dmedit.runs.report import write_json

        request = EvalRequest(source=source, edited=edited, target_text=tgt, mask=mask, start=start, frames=frames,
                              registry=registry, device=device, scorers=parse_scorers(text=scorers))
        if out is not None:
            _check_out(out=out, inputs=(source, edited))
        metrics, record = evaluate(request=request)
        record = {"source": str(source), "edited": str(edited), **record}
        for note in record["notes"]:
            reporter.line(f"note: {note}")
        reporter.release()
        if out is not None:
            plot_curves(path=out.with_suffix(".png"), series={"edit": metrics})
            write_json(path=out, data=record)
        typer.echo(json.dumps(record, indent=2) if as_json else format_table(metrics=metrics))


def _check_out(*, out: Path, inputs: tuple[Path, ...]) -> None:
    from dmedit.core.errors import UsageError

    if out.suffix.lower() != ".json":
        raise UsageError(f"--out {out}: name a .json file (the curves go beside it as .png)")
    edited = inputs[-1]
    for path in (*inputs, edited.with_name(f"{edited.stem}.json")):
        if path.exists() and out.resolve() == path.resolve():
            raise UsageError(f"--out {out}: is an input (or EDITED's run report); choose another file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")


def ablate(
    video: Annotated[Path, typer.Argument(help="Input video (a file).", show_default=False, rich_help_panel=INPUT)],
    out_dir: Annotated[Path, _option("--out-dir", help="Folder receiving the four runs, ablation.md/.json/.png and ablation.mp4.", panel=OUTPUT, default=False)],
    src: Annotated[str, _option("--src", help="Text describing the object now, e.g. 'a bird'.", panel=INPUT, default=False)],
    tgt: Annotated[str, _option("--tgt", help="Text describing the object wanted, e.g. 'a parrot'.", panel=INPUT, default=False)],
    scorers: Scorers = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    **run_options: object,
) -> None:
    """Run the full method and the paper's ablations (no mask, no S-SSM, no T-SSM) with one seed,
    score each, and write OUT_DIR/ablation.md, .json (every metric), .png (curves) and .mp4 (the
    four results side by side). Prints the Markdown table. Every `run` option below applies to
    all four runs; a detected mask is detected once and shared."""
    reporter = Reporter(quiet=quiet, log_every=int(run_options.get("log_every") or Reporter.log_every))
    with exit_codes(reporter):
        _prepare_environment(offline=bool(run_options["offline"]))
        from dmedit.evaluation.ablation import AblationRequest, run_ablation
        from dmedit.models.scorers.choice import parse_scorers

        flags = {**LEFT_OUT_DEFAULTS, **run_options, "video": video, "src": src, "tgt": tgt, "overwrite": overwrite,
                 "quiet": quiet}
        request = AblationRequest(run=run_request(flags=flags), out_dir=out_dir, scorers=parse_scorers(text=scorers),
                                  overwrite=overwrite)
        typer.echo(run_ablation(request=request, reporter=reporter), nl=False)
