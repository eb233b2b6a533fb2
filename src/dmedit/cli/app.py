"""The `dmedit` command line (Typer): flags -> settings (settings.py), errors -> exit codes.

Nothing heavy is imported at module level: `dmedit --version` and `dmedit -h` never import torch.
Every default shown by `-h` comes from the settings dataclasses, where it is defined once.
stdout carries only results (written paths, probe facts); progress and errors go to stderr.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from enum import Enum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from dmedit.cli.run_options import with_run_options
from dmedit.cli.options import (  # noqa: F401 (re-exported for the command modules)
    INPUT, FRAMES, OUTPUT, MODEL, METHOD, MASKS, CONTROL, MODELS, Fit, OutSize, Checkpointing, CompileMode, SsmKeys, SsmReduction, StopAfter, _option, VideoArg, Start, Frames, Stride, Fps, ModelName, Registry, Device, Offline, Detector, BoxThreshold, TextThreshold, Smooth, Dilate, Overwrite, Quiet,
)
from dmedit.core.config import EditConfig
from dmedit.core.console import Reporter
from dmedit.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, DmeditError, Terminated
from dmedit.runs.settings import (
    CascadeSettings, EditOverrides, MaskRequest, MaskSettings, ModelSettings, OutputSettings, RunRequest, SpanSettings,
)

EXIT_CODES_HELP = (
    "Exit codes: 0 ok (also a skipped existing output), 1 system error (e.g. disk full), 2 usage, "
    "3 bad input video or mask, 4 model missing or unloadable, 5 out of memory, 130 interrupted, "
    "143 terminated."
)
HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="dmedit",
    help="Edit an object in a video from text (DreamMotion), keeping its motion and its surroundings.\n\n"
    + EXIT_CODES_HELP,
    context_settings=HELP_SETTINGS, rich_markup_mode="rich", no_args_is_help=True,
    pretty_exceptions_show_locals=False, add_completion=False,
)
models_app = typer.Typer(help="List, inspect and download the models of the registry.\n\n" + EXIT_CODES_HELP,
                         context_settings=HELP_SETTINGS, invoke_without_command=True)
app.add_typer(models_app, name="models")

@contextmanager
def exit_codes(reporter: Reporter) -> Iterator[None]:
    """DmeditError -> its exit code with one line on stderr; Ctrl-C -> 130; SIGTERM -> 143;
    a refused system read or write -> 1. Every one of them without a traceback."""
    from dmedit.runs.signals import terminate_as_exception

    try:
        with terminate_as_exception():
            yield
    except DmeditError as error:
        reporter.error(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        reporter.error("interrupted; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        reporter.error("terminated; nothing was written")
        raise typer.Exit(EXIT_TERMINATED) from None
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        reporter.error(f"{where}{error.strerror or error}")
        raise typer.Exit(EXIT_FAILURE) from None


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


def _prepare_environment(*, offline: bool) -> None:
    """Must run before anything imports torch or huggingface_hub."""
    from dmedit.core.threads import configure_threads

    configure_threads()
    if offline:
        from dmedit.models.hub import set_offline

        set_offline()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command(epilog=EXIT_CODES_HELP)
def probe(
    video: VideoArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Print a video's size, rotation, exact frame rate, frame count, duration, codec and audio."""
    import json

    from dmedit.media.video import probe as probe_video, readable_input

    reporter = Reporter()
    with exit_codes(reporter), readable_input(path=video) as readable:
        facts = probe_video(path=readable, shown_as=video).to_dict()
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:14} {value}")


@app.command(epilog=EXIT_CODES_HELP)
def run(
    video: VideoArg,
    src: Annotated[str, _option("--src", help="Text describing the object now, e.g. 'a bird'.", panel=INPUT, default=False)],
    tgt: Annotated[str, _option("--tgt", help="Text describing the object wanted, e.g. 'a parrot'.", panel=INPUT, default=False)],
    output: Annotated[Optional[Path], _option("-o", "--output", help="Output MP4.", panel=OUTPUT, default="IN.dmedit.mp4")] = None,
    start: Start = None,
    frames: Frames = None,
    stride: Stride = None,
    fps: Fps = None,
    fit: Annotated[Fit, _option(help="How frames meet the model's size (crop follows the mask).", panel=FRAMES)] = Fit(SpanSettings.fit),
    window: Annotated[Optional[int], _option(help="Frames per temporal window when the span is longer than the model takes.", panel=FRAMES, default=MODELS, min=1)] = None,
    window_overlap: Annotated[Optional[int], _option(help="Frames neighbouring windows share.", panel=FRAMES, default="half the window", min=0)] = None,
    windows_per_step: Annotated[int, _option(help="Windows each step visits, at random (0: all).", panel=FRAMES, min=0)] = EditConfig.windows_per_step,
    crf: Annotated[int, _option(help="H.264 quality (lower is better).", panel=OUTPUT, min=0, max=51)] = OutputSettings.crf,
    no_audio: Annotated[bool, _option("--no-audio", help="Drop the source's audio.", panel=OUTPUT)] = False,
    out_size: Annotated[OutSize, _option(help="Write at the source's or the model's resolution.", panel=OUTPUT)] = OutSize(OutputSettings.size),
    compare: Annotated[bool, _option("--compare", help="Also write OUT.compare.mp4: source | mask | edited.", panel=OUTPUT)] = False,
    plot: Annotated[bool, _option("--plot", help="Also write OUT.loss.png with the loss curves.", panel=OUTPUT)] = False,
    eval: Annotated[bool, _option("--eval", help="Score the edit (dmedit eval's metrics) into the report's 'eval' key; curves in OUT.eval.png.", panel=OUTPUT)] = False,
    eval_scorers: Annotated[Optional[str], _option(help="--eval's models: default, none (weight-free only), tiny or ROLE=ENTRY pairs.", panel=OUTPUT, default="default")] = None,
    no_composite: Annotated[bool, _option("--no-composite", help="Write the model's whole frame, not source pixels outside the mask.", panel=OUTPUT)] = False,
    overwrite: Overwrite = False,
    skip_existing: Annotated[bool, _option("--skip-existing", help="Exit 0 without work when the output exists.", panel=OUTPUT)] = False,
    model: ModelName = ModelSettings.name,
    registry: Registry = None,
    device: Device = ModelSettings.device,
    dtype: Annotated[str, _option(help="auto, fp32, fp16 or bf16 (auto: the model's for the device).", panel=MODEL)] = ModelSettings.dtype,
    offline: Offline = False,
    offload: Annotated[bool, _option("--offload", help="Keep text encoder and VAE on the CPU while the U-Net works.", panel=MODEL)] = False,
    vae_chunk: Annotated[int, _option(help="Frames per VAE call (lower uses less memory).", panel=MODEL, min=1)] = ModelSettings.vae_chunk,
    checkpointing: Annotated[Checkpointing, _option(help="Recompute U-Net activations in backward (per block or layer): long clips fit. auto: chosen from free memory.", panel=MODEL)] = Checkpointing.auto,
    compile: Annotated[Optional[bool], _option("--compile/--no-compile", help="torch.compile the U-Net (compiled once per shape, cached on disk).", panel=MODEL, default="on for CUDA")] = None,
    compile_mode: Annotated[CompileMode, _option(help="Inductor mode; reduce-overhead also replays CUDA graphs (CUDA only).", panel=MODEL)] = CompileMode.default,
    keyframe_size: Annotated[Optional[str], _option(help="Cascades (show1): keyframe size HEIGHTxWIDTH (the paper's 80x128, the model card's 40x64).", panel=MODEL, default=MODELS)] = None,
    stop_after: Annotated[Optional[StopAfter], _option(help="Cascades (show1): write the frames of this stage and run none after it.", panel=MODEL, default="the last stage")] = None,
    steps: Annotated[Optional[int], _option(help="Optimisation steps.", panel=METHOD, default=MODELS, min=1)] = None,
    seed: Annotated[int, _option(help="Random seed (same seed and inputs, same output file on one machine).", panel=METHOD, min=0)] = EditConfig.seed,
    guidance_scale: Annotated[Optional[float], _option(help="Classifier-free guidance w (diffusers' convention).", panel=METHOD, default=MODELS)] = None,
    lr: Annotated[Optional[float], _option("--lr", help="SGD learning rate.", panel=METHOD, default=MODELS)] = None,
    t_min: Annotated[Optional[int], _option(help="Smallest timestep drawn.", panel=METHOD, default=MODELS)] = None,
    t_max: Annotated[Optional[int], _option(help="Largest timestep drawn.", panel=METHOD, default=MODELS)] = None,
    dds_scale: Annotated[Optional[float], _option(help="Weight of the V-DDS gradient.", panel=METHOD, default=MODELS)] = None,
    lambda_spatial: Annotated[Optional[float], _option(help="Weight of the spatial self-similarity loss.", panel=METHOD, default=MODELS)] = None,
    lambda_temporal: Annotated[Optional[float], _option(help="Weight of the temporal self-similarity loss.", panel=METHOD, default=MODELS)] = None,
    ssm_reduction: Annotated[Optional[SsmReduction], _option(help="SSM losses as means over map entries, or sums (the paper's Eq. 12, 15).", panel=METHOD, default=MODELS)] = None,
    no_spatial_ssm: Annotated[bool, _option("--no-spatial-ssm", help="Ablation: drop S-SSM.", panel=METHOD)] = False,
    no_temporal_ssm: Annotated[bool, _option("--no-temporal-ssm", help="Ablation: drop T-SSM.", panel=METHOD)] = False,
    no_mask: Annotated[bool, _option("--no-mask", help="Ablation: V-DDS gradient over the whole frame.", panel=METHOD)] = False,
    ssm_keys: Annotated[Optional[SsmKeys], _option(help="Which passes' keys the SSM losses compare.", panel=METHOD, default=MODELS)] = None,
    mask: Annotated[Optional[str], _option(help="'full', or a PNG, a folder of PNGs or a mask video.", panel=MASKS, default="detect --mask-prompt")] = None,
    mask_prompt: Annotated[Optional[str], _option(help="Objects to detect, '.'-separated.", panel=MASKS, default="--src")] = None,
    detector: Detector = None,
    box_threshold: BoxThreshold = None,
    text_threshold: TextThreshold = None,
    smooth: Smooth = MaskSettings.smooth,
    dilate: Dilate = None,
    feather: Annotated[float, _option(help="Soften the composite edge by PX pixels.", panel=MASKS, min=0)] = MaskSettings.feather,
    checkpoint_every: Annotated[int, _option(help="Write a checkpoint every K steps.", panel=CONTROL, min=1)] = EditConfig.checkpoint_every,
    resume: Annotated[bool, _option("--resume", help="Continue from the checkpoint of a stopped run (starts fresh when there is none).", panel=CONTROL)] = False,
    log_every: Annotated[int, _option(help="Plain progress: one line every K steps.", panel=CONTROL, min=1)] = Reporter.log_every,
    quiet: Quiet = False,
) -> None:
    """Edit VIDEO: turn --src into --tgt, keeping motion and everything else. Prints the output path."""
    _run_command(flags=dict(locals()))


def _run_command(*, flags: dict) -> None:
    reporter = Reporter(quiet=flags["quiet"], log_every=flags["log_every"])
    reporter.count_start_up()
    with exit_codes(reporter):
        with reporter.stage("start-up"):  # imports torch and the model libraries
            _prepare_environment(offline=flags["offline"])
            from dmedit.runs.pipeline import run_edit

            request = run_request(flags=flags)
        written = run_edit(request=request, reporter=reporter)
        if written is not None:
            typer.echo(str(written))


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def run_request(*, flags: dict) -> RunRequest:
    """`dmedit run`'s flags (parameter name -> value) -> the grouped, checked settings."""
    return RunRequest(
        video=flags["video"], src=flags["src"], tgt=flags["tgt"], resume=flags["resume"],
        span=SpanSettings(start=flags["start"], frames=flags["frames"], stride=flags["stride"], fps=flags["fps"],
                          fit=flags["fit"].value),
        mask=MaskSettings(source=flags["mask"], prompt=flags["mask_prompt"], detector=flags["detector"],
                          box_threshold=flags["box_threshold"], text_threshold=flags["text_threshold"],
                          smooth=flags["smooth"], dilate=flags["dilate"], feather=flags["feather"]),
        model=ModelSettings(name=flags["model"], registry=flags["registry"], device=flags["device"],
                            dtype=flags["dtype"], offload=flags["offload"], vae_chunk=flags["vae_chunk"],
                            checkpointing=None if flags["checkpointing"] is Checkpointing.none
                            else flags["checkpointing"].value, compile=flags["compile"],
                            compile_mode=flags["compile_mode"].value),
        edit=EditOverrides(
            steps=flags["steps"], seed=flags["seed"], guidance_scale=flags["guidance_scale"],
            learning_rate=flags["lr"], t_min=flags["t_min"], t_max=flags["t_max"], dds_scale=flags["dds_scale"],
            lambda_spatial=0.0 if flags["no_spatial_ssm"] else flags["lambda_spatial"],
            lambda_temporal=0.0 if flags["no_temporal_ssm"] else flags["lambda_temporal"],
            use_mask=False if flags["no_mask"] else None, ssm_keys=_value(flags["ssm_keys"]),
            ssm_reduction=_value(flags["ssm_reduction"]), checkpoint_every=flags["checkpoint_every"],
            window=flags["window"], window_overlap=flags["window_overlap"],
            windows_per_step=flags["windows_per_step"]),
        output=OutputSettings(path=flags["output"], crf=flags["crf"], audio=not flags["no_audio"],
                              size=flags["out_size"].value, compare=flags["compare"], plot=flags["plot"],
                              composite=not flags["no_composite"], overwrite=flags["overwrite"],
                              skip_existing=flags["skip_existing"], eval=flags["eval"],
                              eval_scorers=flags["eval_scorers"]),
        cascade=CascadeSettings(keyframe_size=flags["keyframe_size"], stop_after=_value(flags["stop_after"])),
    )


@app.command("mask", epilog=EXIT_CODES_HELP)
def mask_preview(
    video: VideoArg,
    mask_prompt: Annotated[str, _option(help="Objects to detect, '.'-separated.", panel=MASKS, default=False)],
    output: Annotated[Optional[Path], _option("-o", "--output", help="Base name: writes OUT.mask.mp4 and OUT.masks/.", panel=OUTPUT, default="IN")] = None,
    start: Start = None,
    frames: Frames = None,
    stride: Stride = None,
    fps: Fps = None,
    model: Annotated[str, _option(help="Model whose frame count and detector apply.", panel=MODEL)] = ModelSettings.name,
    detector: Detector = None,
    registry: Registry = None,
    device: Device = ModelSettings.device,
    offline: Offline = False,
    box_threshold: BoxThreshold = None,
    text_threshold: TextThreshold = None,
    smooth: Smooth = MaskSettings.smooth,
    dilate: Dilate = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Detect the object and write a mask preview (OUT.mask.mp4) and PNGs (OUT.masks/) for `run --mask`.
    Prints the two written paths."""
    reporter = Reporter(quiet=quiet)
    with exit_codes(reporter):
        _prepare_environment(offline=offline)
        from dmedit.runs.pipeline import run_mask_preview

        request = MaskRequest(
            video=video, span=SpanSettings(start=start, frames=frames, stride=stride, fps=fps),
            mask=MaskSettings(prompt=mask_prompt, detector=detector, box_threshold=box_threshold,
                              text_threshold=text_threshold, smooth=smooth, dilate=dilate),
            model=ModelSettings(name=model, registry=registry, device=device),
            output=OutputSettings(path=output, overwrite=overwrite),
        )
        for path in run_mask_preview(request=request, reporter=reporter):
            typer.echo(str(path))


@models_app.callback()
def models_list(ctx: typer.Context, registry: Registry = None) -> None:
    """List the registry's video models, detectors and metric scorers, and whether their weights are here."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = registry
        return
    from dmedit.models.catalogue import model_rows

    with exit_codes(Reporter()):
        for row in model_rows(registry_file=registry):
            typer.echo(row)


@models_app.command("show")
def models_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Entry name.", show_default=False)]) -> None:
    """Show one entry with every field, where its weights are looked for, and whether they are present."""
    from dmedit.models.catalogue import describe_entry

    with exit_codes(Reporter()):
        typer.echo(describe_entry(name=name, registry_file=ctx.obj))


@models_app.command("pull")
def models_pull(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Entry name.", show_default=False)]) -> None:
    """Download an entry's weights into the standard hub cache (needs a network)."""
    from dmedit.models.catalogue import pull_entry

    with exit_codes(Reporter()):
        folder = pull_entry(name=name, registry_file=ctx.obj)
        typer.echo(f"{name}: weights in {folder}")


from dmedit.cli.batch import BATCH_EXIT_CODES_HELP, batch  # noqa: E402 (it uses the options above)

app.command(epilog=BATCH_EXIT_CODES_HELP)(with_run_options(command=batch, run=run))

from dmedit.cli.evaluate import ABLATE_LEFT_OUT, ablate, eval_command  # noqa: E402 (as batch_command)

app.command("eval", epilog=EXIT_CODES_HELP)(eval_command)
app.command(epilog=EXIT_CODES_HELP)(with_run_options(command=ablate, run=run, leave_out=ABLATE_LEFT_OUT))


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
