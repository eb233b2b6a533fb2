"""What a user asks of `dmedit run`, `dmedit mask`, `batch` and `ablate`, grouped and typed.

Each setting is defined here once, with its default and its command-line form (core.flags): the
command line derives its flags, help, panels, bounds and choices from these records and builds them
back from the parsed values; it passes None for a setting the user left out only where the default
comes from the model entry (frames, method settings, detector thresholds). Every number is checked
when a group is built, so a bad value is a one-line usage error (exit 2) before any video is decoded
or any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dmedit.core.config import DEFAULT_CRF, CompileMode, EditConfig, ModelEntry, require_finite
from dmedit.core.errors import UsageError
from dmedit.core.flags import (
    CONTROL, FRAMES, INPUT, MASKS, MODEL, MODELS, OUTPUT, Argument, Flag, Switch, literal_choices, overrides_record,
    setting,
)
from dmedit.models.scorers.choice import Scorers, parse_scorers

FitMode = Literal["crop", "pad", "stretch"]
OutSize = Literal["source", "model"]
Granularity = Literal["block", "layer"]
Checkpointing = Literal["auto"] | None | Granularity
"""None: no activation checkpointing (--checkpointing none)."""
StopAfter = Literal["keyframes", "interpolation", "sr1", "sr2"]
DTYPES = ("auto", "fp32", "fp16", "bf16")
"""--dtype's values (taken as text, checked by ModelSettings)."""
DEFAULT_MODEL = "zeroscope"
MAX_FEATHER_PX = 1000.0
MAX_DILATE_PX = 100_000.0
MAX_VAE_CHUNK = 4096


VIDEO_ARGUMENT = Argument(help="Input video (a file, or a pipe such as <(cat clip.mp4)).")
DETECTOR_DEFAULT = "the detector's"


def _require_choice(*, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class SpanSettings:
    """Which source frames are edited and how they meet the model's size.

    start: a frame index ("12") or seconds ("1.5s"); frames: None = the model entry's count, "all" =
    every frame from start to the end (a span longer than the model's window is edited in
    overlapping windows); stride: every K-th frame; fps: sample at this rate (not with stride);
    fit: crop | pad | stretch.
    """

    start: str | None = setting(None, Flag(help="First frame: an index (12) or seconds (1.5s).", panel=FRAMES,
                                           shown="0"))
    frames: int | Literal["all"] | None = setting(None, Flag(
        help="Frames to edit: a number, or 'all' (to the end; long spans go in windows).", panel=FRAMES, shown=MODELS))
    stride: int | None = setting(None, Flag(help="Take every K-th frame.", panel=FRAMES, shown="1", low=1))
    fps: float | None = setting(None, Flag(help="Sample at this frame rate.", panel=FRAMES, shown="the source's"))
    fit: FitMode = setting("crop", Flag(help="How frames meet the model's size (crop follows the mask).",
                                        panel=FRAMES))

    def __post_init__(self) -> None:
        if isinstance(self.frames, str):
            if self.frames.strip().lower() != "all" and not self.frames.strip().isdigit():
                raise UsageError(f"--frames must be a number of frames or 'all', got {self.frames!r}")
            frames = self.frames.strip().lower()
            object.__setattr__(self, "frames", "all" if frames == "all" else int(frames))
        if isinstance(self.frames, int):
            require_finite(name="--frames", value=self.frames, low=1, high=1_000_000)
        if self.stride is not None:
            require_finite(name="--stride", value=self.stride, low=1, high=1_000_000)
        if self.fps is not None:
            require_finite(name="--fps", value=self.fps, low=0.001, high=1000)
        if self.stride is not None and self.fps is not None:
            raise UsageError("--stride and --fps cannot be used together; pick one")
        _require_choice(name="--fit", value=self.fit, choices=literal_choices(FitMode))


@dataclass(frozen=True)
class MaskSettings:
    """Where the edit may happen.

    source: None = detect `prompt` (default: the run's --src); "full"; or a PNG, a folder of PNGs or
    a mask video. detector/box_threshold/text_threshold: None = the model entry's detector and its
    thresholds. smooth: average boxes over K frames; dilate: grow boxes by PX (None = 5% of the
    box); feather: soften the composite's edge by PX.
    """

    source: str | None = setting(None, Flag(help="'full', or a PNG, a folder of PNGs or a mask video.", panel=MASKS,
                                            names=("--mask",), shown="detect --mask-prompt"))
    prompt: str | None = setting(None, Flag(help="Objects to detect, '.'-separated.", panel=MASKS,
                                            names=("--mask-prompt",), shown="--src"))
    detector: str | None = setting(None, Flag(help="Detector entry.", panel=MASKS, shown=MODELS))
    box_threshold: float | None = setting(None, Flag(help="Detector box score threshold.", panel=MASKS,
                                                     shown=DETECTOR_DEFAULT, low=0, high=1))
    text_threshold: float | None = setting(None, Flag(help="Detector text score threshold.", panel=MASKS,
                                                      shown=DETECTOR_DEFAULT, low=0, high=1))
    smooth: int = setting(1, Flag(help="Average boxes over K neighbouring frames.", panel=MASKS, low=1))
    dilate: float | None = setting(None, Flag(help="Grow boxes by PX pixels.", panel=MASKS, shown="5% of the box"))
    feather: float = setting(2.0, Flag(help="Soften the composite edge by PX pixels.", panel=MASKS, low=0))

    def __post_init__(self) -> None:
        for name, value in (("--box-threshold", self.box_threshold), ("--text-threshold", self.text_threshold)):
            if value is not None:
                require_finite(name=name, value=value, low=0.0, high=1.0)
        require_finite(name="--smooth", value=self.smooth, low=1, high=10_000)
        if self.dilate is not None:
            require_finite(name="--dilate", value=self.dilate, low=0.0, high=MAX_DILATE_PX)
        require_finite(name="--feather", value=self.feather, low=0.0, high=MAX_FEATHER_PX)
        if self.prompt is not None and not self.prompt.strip():
            raise UsageError("--mask-prompt is empty: name the object to detect, e.g. --mask-prompt 'a bird'")

    @property
    def detects(self) -> bool:
        return self.source is None


@dataclass(frozen=True)
class ModelSettings:
    """Which model entry runs, where and how.

    name: registry entry; registry: a models.toml merged over the built-in one; device: auto, cpu,
    cuda, cuda:N or mps; dtype: auto, fp32, fp16 or bf16; offload: keep the text encoder and VAE
    on the CPU while the U-Net works; vae_chunk: frames per VAE call; checkpointing: "auto" (chosen
    from the free memory, speed.choose_checkpointing), None, "block" or "layer" activation
    checkpointing of the U-Net's grad call; compile: torch.compile the U-Net (None: eager,
    until GPU figures show compiling pays) in compile_mode (compilation.MODES).
    """

    name: str = setting(DEFAULT_MODEL, Flag(help="Registry entry.", panel=MODEL, names=("--model",)))
    registry: Path | None = setting(None, Flag(help="A models.toml merged over the built-in one.", panel=MODEL,
                                               shown="none"))
    device: str = setting("auto", Flag(help="auto, cpu, cuda, cuda:N or mps.", panel=MODEL))
    dtype: str = setting("auto", Flag(help="auto, fp32, fp16 or bf16 (auto: the model's for the device).", panel=MODEL))
    offload: bool = setting(False, Flag(help="Keep text encoder and VAE on the CPU while the U-Net works.",
                                        panel=MODEL))
    vae_chunk: int = setting(8, Flag(help="Frames per VAE call (lower uses less memory).", panel=MODEL, low=1))
    checkpointing: Checkpointing = setting("auto", Flag(
        help="Recompute U-Net activations in backward (per block or layer): long clips fit. auto: chosen from free "
             "memory.", panel=MODEL, none_choice="none"))
    compile: bool | None = setting(None, Flag(
        help="torch.compile the U-Net (once per shape, cached on disk; a failed compile falls back to eager). "
             "Off until GPU figures show it pays over a whole run (BENCHMARKS.md).", panel=MODEL,
        names=("--compile/--no-compile",), shown="off (eager)"))
    compile_mode: CompileMode = setting("default", Flag(
        help="Inductor mode; reduce-overhead also replays CUDA graphs (CUDA only).", panel=MODEL))

    def __post_init__(self) -> None:
        require_finite(name="--vae-chunk", value=self.vae_chunk, low=1, high=MAX_VAE_CHUNK)
        _require_choice(name="--dtype", value=self.dtype, choices=DTYPES)
        _require_choice(name="--checkpointing", value=self.checkpointing,
                        choices=literal_choices(Checkpointing))
        _require_choice(name="--compile-mode", value=self.compile_mode, choices=literal_choices(CompileMode))


@dataclass(frozen=True)
class OutputSettings:
    """What is written: path (None = IN.dmedit.mp4 beside the input), H.264 crf, the source's audio,
    size (source or model resolution), companions (compare video, loss plot, the page OUT.html with
    the source span OUT.source.mp4 it plays), compositing, and
    what to do when the output exists; eval: score the edit into the report (`eval` key, OUT.eval.png),
    with the model-based metrics' models `eval_scorers` (models.scorers.choice.parse_scorers; None = the registry's)."""

    path: Path | None = setting(None, Flag(help="Output MP4.", panel=OUTPUT, names=("-o", "--output"),
                                           shown="IN.dmedit.mp4"))
    crf: int = setting(DEFAULT_CRF, Flag(help="H.264 quality (lower is better).", panel=OUTPUT, low=0, high=51))
    audio: bool = setting(True, Switch("--no-audio", help="Drop the source's audio.", panel=OUTPUT, value=False))
    size: OutSize = setting("source", Flag(help="Write at the source's or the model's resolution.", panel=OUTPUT,
                                           names=("--out-size",)))
    compare: bool = setting(False, Flag(help="Also write OUT.compare.mp4: source | mask | edited.", panel=OUTPUT))
    plot: bool = setting(False, Flag(help="Also write OUT.loss.png with the loss curves.", panel=OUTPUT))
    html: bool = setting(True, Switch("--no-html", panel=OUTPUT, value=False, help=(
        "Do not write OUT.html, the run's page (source and edit played together, figures, settings), "
        "nor OUT.source.mp4, the source span it plays.")))
    composite: bool = setting(True, Switch("--no-composite", panel=OUTPUT, value=False,
                                           help="Write the model's whole frame, not source pixels outside the mask."))
    overwrite: bool = setting(False, Flag(help="Replace existing outputs.", panel=OUTPUT))
    skip_existing: bool = setting(False, Flag(help="Exit 0 without work when the output exists.", panel=OUTPUT))
    eval: bool = setting(False, Flag(
        help="Score the edit (dmedit eval's metrics) into the report's 'eval' key; curves in OUT.eval.png.",
        panel=OUTPUT))
    eval_scorers: str | None = setting(None, Flag(
        help="--eval's models: default (missing ones skipped), all, none (weight-free only), tiny or ROLE=ENTRY pairs.",
        panel=OUTPUT,
        shown="default"))

    def __post_init__(self) -> None:
        require_finite(name="--crf", value=self.crf, low=0, high=51)
        _require_choice(name="--out-size", value=self.size, choices=literal_choices(OutSize))
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing contradict each other; pass one of them")
        self.scorers  # noqa: B018 (parsed now: a bad value is a usage error before any work)

    @property
    def scorers(self) -> Scorers:
        """The models `--eval` scores with (models.scorers.choice.parse_scorers)."""
        return parse_scorers(text=self.eval_scorers, flag="--eval-scorers")


EditOverrides = overrides_record(
    record=EditConfig, name="EditOverrides", module=__name__,
    doc="Method settings given on the command line, one optional field per EditConfig field; None = the "
        "model entry's value (then EditConfig's). as_dict() -> the given ones, for EditConfig.merged.")


@dataclass(frozen=True)
class CascadeSettings:
    """A cascaded model's settings (show1): keyframe_size "HxW" (None = the entry's size, 80x128 for
    show1); stop_after: write the frames of this stage, running none after it (None = every stage)."""

    keyframe_size: str | None = setting(None, Flag(
        help="Cascades (show1): keyframe size HEIGHTxWIDTH (the paper's 80x128, the model card's 40x64).",
        panel=MODEL, shown=MODELS))
    stop_after: StopAfter | None = setting(None, Flag(
        help="Cascades (show1): write the frames of this stage and run none after it.", panel=MODEL,
        shown="the last stage"))

    def __post_init__(self) -> None:
        _require_choice(name="--stop-after", value=self.stop_after, choices=literal_choices(StopAfter | None))
        if self.keyframe_size is not None:
            parts = self.keyframe_size.strip().lower().split("x")
            if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 and int(part) % 8 == 0 for part in parts):
                raise UsageError(f"--keyframe-size must be HEIGHTxWIDTH in multiples of 8, e.g. 40x64, "
                                 f"got {self.keyframe_size!r}")

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the keyframes, or None for the entry's."""
        if self.keyframe_size is None:
            return None
        height, width = self.keyframe_size.strip().lower().split("x")
        return int(height), int(width)

    @property
    def given(self) -> bool:
        return self.keyframe_size is not None or self.stop_after is not None


@dataclass(frozen=True)
class RunRequest:
    """Everything `dmedit run` was asked: the input, the two prompts and the grouped settings."""

    video: Path = setting(dataclasses.MISSING, VIDEO_ARGUMENT)
    src: str = setting(dataclasses.MISSING, Flag(help="Text describing the object now, e.g. 'a bird'.", panel=INPUT))
    tgt: str = setting(dataclasses.MISSING, Flag(help="Text describing the object wanted, e.g. 'a parrot'.",
                                                 panel=INPUT))
    span: SpanSettings = field(default_factory=SpanSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    edit: EditOverrides = field(default_factory=EditOverrides)
    output: OutputSettings = field(default_factory=OutputSettings)
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    resume: bool = setting(False, Flag(
        help="Continue from the checkpoint of a stopped run (starts fresh when there is none).", panel=CONTROL))

    def __post_init__(self) -> None:
        if not self.src.strip():
            raise UsageError("--src is empty: describe the object in the video, e.g. --src 'a bird'")
        if not self.tgt.strip():
            raise UsageError("--tgt is empty: describe what it should become, e.g. --tgt 'a parrot'")

    def edit_config(self, *, entry: ModelEntry) -> EditConfig:
        """The method's settings of this run: defaults < the model entry's < the given ones
        (UsageError for a value or combination EditConfig refuses, e.g. --t-min above --t-max)."""
        return EditConfig().merged(entry.defaults).merged(self.edit.as_dict())

    @property
    def detection_prompt(self) -> str:
        return self.mask.prompt or self.src

    def to_dict(self) -> dict[str, Any]:
        """Every setting as given, grouped, for the run report."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MaskRequest:
    """Everything `dmedit mask` was asked: detection only (mask.prompt is required)."""

    video: Path = setting(dataclasses.MISSING, VIDEO_ARGUMENT)
    span: SpanSettings = field(default_factory=SpanSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        if self.mask.prompt is None:
            raise UsageError("--mask-prompt is empty: name the object to detect, e.g. --mask-prompt 'a bird'")
