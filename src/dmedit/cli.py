"""The `dmedit` command line (Typer). Parses flags into requests, maps errors to exit codes.

Nothing heavy is imported at module level: `dmedit --version` and `dmedit -h` never import torch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from dmedit.console import Reporter
from dmedit.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OOM, DmeditError

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 system error (e.g. disk full), 2 usage, 3 bad input video or mask, "
    "4 model missing or unloadable, 5 out of memory, 130 interrupted."
)

app = typer.Typer(
    name="dmedit",
    help="Edit an object in a video from text (DreamMotion), keeping its motion and its surroundings.\n\n"
    + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
models_app = typer.Typer(
    help="List, inspect and download the models of the registry.\n\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")

INPUT, FRAMES, OUTPUT, MODEL, METHOD, MASKS, CONTROL = (
    "Input", "Frames", "Output", "Model", "Method", "Masks", "Run control"
)


class Fit(str, Enum):
    crop = "crop"
    pad = "pad"
    stretch = "stretch"


class OutSize(str, Enum):
    source = "source"
    model = "model"


class Checkpointing(str, Enum):
    none = "none"
    block = "block"
    layer = "layer"


class SsmKeysChoice(str, Enum):
    conditional = "conditional"
    unconditional = "unconditional"


@contextmanager
def exit_codes(reporter: Reporter) -> Iterator[None]:
    """DmeditError -> its exit code with one line on stderr; Ctrl-C -> 130; OOM -> 5."""
    try:
        yield
    except DmeditError as error:
        reporter.error(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        reporter.error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as error:  # the system refused a read or write (disk full, permissions): no traceback
        where = f"{error.filename}: " if error.filename else ""
        reporter.error(f"{where}{error.strerror or error}")
        raise typer.Exit(EXIT_FAILURE) from None
    except Exception as error:
        # torch.OutOfMemoryError (matched by name: this module never imports torch) or MemoryError,
        # from model loading, detection or decoding; the step loop raises OutOfMemoryError itself.
        if not isinstance(error, MemoryError) and type(error).__name__ != "OutOfMemoryError":
            raise
        reporter.error("out of memory; try --checkpointing block, fewer --frames, --offload or --vae-chunk 1")
        raise typer.Exit(EXIT_OOM) from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dmedit {package_version('dmedit')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Edit an object in a video from text (DreamMotion)."""


def _prepare_environment(*, offline: bool) -> None:
    """Must run before anything imports huggingface_hub."""
    if offline:
        from dmedit.hub import set_offline

        set_offline()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command(epilog=EXIT_CODES_HELP)
def probe(
    video: Annotated[Path, typer.Argument(help="Video file to describe.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Print a video's size, exact frame rate, frame count, duration, codec and audio."""
    import json

    from dmedit.video import probe as probe_video

    reporter = Reporter()
    with exit_codes(reporter):
        info = probe_video(path=video)
        facts = info.to_dict()
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:12} {value}")


@app.command(epilog=EXIT_CODES_HELP)
def run(
    video: Annotated[Path, typer.Argument(help="Input video.", show_default=False, rich_help_panel=INPUT)],
    src: Annotated[str, typer.Option("--src", help="Text describing the object now, e.g. 'a bird'.", rich_help_panel=INPUT)],
    tgt: Annotated[str, typer.Option("--tgt", help="Text describing the object wanted, e.g. 'a parrot'.", rich_help_panel=INPUT)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output MP4 [default: IN.dmedit.mp4].", rich_help_panel=OUTPUT, show_default=False)] = None,
    start: Annotated[Optional[str], typer.Option(help="First frame: an index (12) or seconds (1.5s).", rich_help_panel=FRAMES)] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames to edit [default: the model's].", rich_help_panel=FRAMES, show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Take every K-th frame.", rich_help_panel=FRAMES)] = None,
    fps: Annotated[Optional[float], typer.Option(min=0.001, help="Sample at this frame rate.", rich_help_panel=FRAMES)] = None,
    fit: Annotated[Fit, typer.Option(help="How frames meet the model's size.", rich_help_panel=FRAMES)] = Fit.crop,
    crf: Annotated[int, typer.Option(min=0, max=51, help="H.264 quality (lower is better).", rich_help_panel=OUTPUT)] = 18,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Drop the source's audio.", rich_help_panel=OUTPUT)] = False,
    out_size: Annotated[OutSize, typer.Option(help="Write at the source's or the model's resolution.", rich_help_panel=OUTPUT)] = OutSize.source,
    compare: Annotated[bool, typer.Option("--compare", help="Also write OUT.compare.mp4: source | mask | edited.", rich_help_panel=OUTPUT)] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Also write OUT.loss.png with the loss curves.", rich_help_panel=OUTPUT)] = False,
    no_composite: Annotated[bool, typer.Option("--no-composite", help="Write the model's whole frame instead of source pixels outside the mask.", rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.", rich_help_panel=OUTPUT)] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Exit 0 without work when the output exists.", rich_help_panel=OUTPUT)] = False,
    model: Annotated[Optional[str], typer.Option(help="Registry entry [default: zeroscope].", rich_help_panel=MODEL, show_default=False)] = None,
    registry: Annotated[Optional[Path], typer.Option(help="A models.toml merged over the built-in one.", rich_help_panel=MODEL)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL)] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.", rich_help_panel=MODEL)] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the model hub.", rich_help_panel=MODEL)] = False,
    offload: Annotated[bool, typer.Option("--offload", help="Keep text encoder and VAE on the CPU while the U-Net works.", rich_help_panel=MODEL)] = False,
    vae_chunk: Annotated[int, typer.Option(min=1, help="Frames per VAE call (lower uses less memory).", rich_help_panel=MODEL)] = 8,
    checkpointing: Annotated[Checkpointing, typer.Option(help="Recompute U-Net activations in backward (per block or layer) so long clips fit in GPU memory.", rich_help_panel=MODEL)] = Checkpointing.none,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimisation steps [default: the model's].", rich_help_panel=METHOD, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same output on the CPU).", rich_help_panel=METHOD)] = 0,
    guidance_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance w.", rich_help_panel=METHOD, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate.", rich_help_panel=METHOD, show_default=False)] = None,
    t_min: Annotated[Optional[int], typer.Option(help="Smallest timestep drawn.", rich_help_panel=METHOD, show_default=False)] = None,
    t_max: Annotated[Optional[int], typer.Option(help="Largest timestep drawn.", rich_help_panel=METHOD, show_default=False)] = None,
    dds_scale: Annotated[Optional[float], typer.Option(help="Scale applied to the V-DDS gradient.", rich_help_panel=METHOD, show_default=False)] = None,
    lambda_spatial: Annotated[Optional[float], typer.Option(min=0, help="Weight of the spatial self-similarity loss.", rich_help_panel=METHOD, show_default=False)] = None,
    lambda_temporal: Annotated[Optional[float], typer.Option(min=0, help="Weight of the temporal self-similarity loss.", rich_help_panel=METHOD, show_default=False)] = None,
    no_spatial_ssm: Annotated[bool, typer.Option("--no-spatial-ssm", help="Ablation: drop S-SSM.", rich_help_panel=METHOD)] = False,
    no_temporal_ssm: Annotated[bool, typer.Option("--no-temporal-ssm", help="Ablation: drop T-SSM.", rich_help_panel=METHOD)] = False,
    no_mask: Annotated[bool, typer.Option("--no-mask", help="Ablation: V-DDS gradient over the whole frame.", rich_help_panel=METHOD)] = False,
    ssm_keys: Annotated[Optional[SsmKeysChoice], typer.Option(help="Which passes' keys the SSM losses compare.", rich_help_panel=METHOD, show_default=False)] = None,
    mask: Annotated[Optional[str], typer.Option(help="'full', or a PNG, a folder of PNGs or a mask video [default: detect].", rich_help_panel=MASKS, show_default=False)] = None,
    mask_prompt: Annotated[Optional[str], typer.Option(help="Objects to detect, '.'-separated [default: --src].", rich_help_panel=MASKS, show_default=False)] = None,
    detector: Annotated[Optional[str], typer.Option(help="Detector entry [default: the model's].", rich_help_panel=MASKS, show_default=False)] = None,
    box_threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Detector box score threshold.", rich_help_panel=MASKS, show_default=False)] = None,
    text_threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Detector text score threshold.", rich_help_panel=MASKS, show_default=False)] = None,
    smooth: Annotated[int, typer.Option(min=1, help="Average boxes over K neighbouring frames.", rich_help_panel=MASKS)] = 1,
    dilate: Annotated[Optional[float], typer.Option(min=0, help="Grow boxes by PX pixels [default: 5% of the box].", rich_help_panel=MASKS, show_default=False)] = None,
    feather: Annotated[float, typer.Option(min=0, help="Soften the composite edge by PX pixels.", rich_help_panel=MASKS)] = 2.0,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1, help="Write a checkpoint every K steps [default: 50].", rich_help_panel=CONTROL, show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run from its checkpoint.", rich_help_panel=CONTROL)] = False,
    log_every: Annotated[int, typer.Option(min=1, help="Plain progress: one line every K steps.", rich_help_panel=CONTROL)] = 10,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.", rich_help_panel=CONTROL)] = False,
) -> None:
    """Edit VIDEO: turn --src into --tgt, keeping motion and everything else."""
    reporter = Reporter(quiet=quiet, log_every=log_every)
    with exit_codes(reporter):
        _prepare_environment(offline=offline)
        from dmedit.pipeline import RunRequest, run_edit

        request = RunRequest(
            video=video, src=src, tgt=tgt, output=output, start=start, frames=frames, stride=stride,
            fps=fps, fit=fit.value, crf=crf, audio=not no_audio, out_size=out_size.value, compare=compare,
            plot=plot, composite=not no_composite, overwrite=overwrite, skip_existing=skip_existing,
            model=model, registry=registry, device=device, dtype=dtype, offload=offload, vae_chunk=vae_chunk,
            checkpointing=None if checkpointing is Checkpointing.none else checkpointing.value, mask=mask, mask_prompt=mask_prompt, detector=detector, box_threshold=box_threshold,
            text_threshold=text_threshold, smooth=smooth, dilate=dilate, feather=feather, resume=resume,
            edit_overrides=dict(
                steps=steps, seed=seed, guidance_scale=guidance_scale, learning_rate=lr, t_min=t_min,
                t_max=t_max, dds_scale=dds_scale,
                lambda_spatial=0.0 if no_spatial_ssm else lambda_spatial,
                lambda_temporal=0.0 if no_temporal_ssm else lambda_temporal,
                use_mask=False if no_mask else None, ssm_keys=ssm_keys.value if ssm_keys else None,
                checkpoint_every=checkpoint_every, log_every=log_every,
            ),
        )
        run_edit(request=request, reporter=reporter)


@app.command("mask", epilog=EXIT_CODES_HELP)
def mask_preview(
    video: Annotated[Path, typer.Argument(help="Input video.", show_default=False, rich_help_panel=INPUT)],
    mask_prompt: Annotated[str, typer.Option(help="Objects to detect, '.'-separated.", rich_help_panel=MASKS)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Base name: writes OUT.mask.mp4 and OUT.masks/ [default: next to IN].", rich_help_panel=OUTPUT, show_default=False)] = None,
    start: Annotated[Optional[str], typer.Option(help="First frame: an index (12) or seconds (1.5s).", rich_help_panel=FRAMES)] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames [default: the model's].", rich_help_panel=FRAMES, show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Take every K-th frame.", rich_help_panel=FRAMES)] = None,
    fps: Annotated[Optional[float], typer.Option(min=0.001, help="Sample at this frame rate.", rich_help_panel=FRAMES)] = None,
    model: Annotated[Optional[str], typer.Option(help="Model whose frame defaults apply [default: zeroscope].", rich_help_panel=MODEL, show_default=False)] = None,
    detector: Annotated[Optional[str], typer.Option(help="Detector entry [default: the model's].", rich_help_panel=MODEL, show_default=False)] = None,
    registry: Annotated[Optional[Path], typer.Option(help="A models.toml merged over the built-in one.", rich_help_panel=MODEL)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL)] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the model hub.", rich_help_panel=MODEL)] = False,
    box_threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Detector box score threshold.", rich_help_panel=MASKS, show_default=False)] = None,
    text_threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Detector text score threshold.", rich_help_panel=MASKS, show_default=False)] = None,
    smooth: Annotated[int, typer.Option(min=1, help="Average boxes over K neighbouring frames.", rich_help_panel=MASKS)] = 1,
    dilate: Annotated[Optional[float], typer.Option(min=0, help="Grow boxes by PX pixels [default: 5% of the box].", rich_help_panel=MASKS, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.", rich_help_panel=CONTROL)] = False,
) -> None:
    """Detect the object and write a mask preview (OUT.mask.mp4) and PNGs (OUT.masks/) for `run --mask`."""
    reporter = Reporter(quiet=quiet)
    with exit_codes(reporter):
        _prepare_environment(offline=offline)
        from dmedit.pipeline import MaskRequest, run_mask_preview

        request = MaskRequest(
            video=video, mask_prompt=mask_prompt, output=output, start=start, frames=frames, stride=stride,
            fps=fps, model=model, detector=detector, registry=registry, device=device,
            box_threshold=box_threshold, text_threshold=text_threshold, smooth=smooth, dilate=dilate,
            overwrite=overwrite,
        )
        run_mask_preview(request=request, reporter=reporter)


@models_app.callback()
def models_list(
    ctx: typer.Context,
    registry: Annotated[Optional[Path], typer.Option(help="A models.toml merged over the built-in one.")] = None,
) -> None:
    """List the registry's video models and detectors, and whether their weights are here."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = registry
        return
    from dmedit.catalogue import model_rows

    reporter = Reporter()
    with exit_codes(reporter):
        for row in model_rows(registry_file=registry):
            typer.echo(row)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Entry name.", show_default=False)],
) -> None:
    """Show one entry with every field, where its weights are looked for, and whether they are present."""
    from dmedit.catalogue import describe_entry

    reporter = Reporter()
    with exit_codes(reporter):
        typer.echo(describe_entry(name=name, registry_file=ctx.obj))


@models_app.command("pull")
def models_pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Entry name.", show_default=False)],
) -> None:
    """Download an entry's weights into the standard hub cache (needs a network)."""
    from dmedit.catalogue import pull_entry

    reporter = Reporter()
    with exit_codes(reporter):
        folder = pull_entry(name=name, registry_file=ctx.obj)
        typer.echo(f"{name}: weights in {folder}")


def main() -> None:
    app()
