"""What a user asks of `dmedit run`, `dmedit mask` (and, next, `dmedit batch`), grouped and typed.

Each default lives here once: the command line shows these values in its help and passes None for
a setting the user left out only where the default comes from the model entry (frames, method
settings, detector thresholds). Every number is checked when a group is built, so a bad value is
a one-line usage error (exit 2) before any video is decoded or any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dmedit.core.config import DEFAULT_CRF, SsmKeys, SsmReduction, require_finite
from dmedit.core.errors import UsageError
from dmedit.models.scorers.choice import Scorers, parse_scorers

FitMode = Literal["crop", "pad", "stretch"]
OutSize = Literal["source", "model"]
Granularity = Literal["block", "layer"]
StopAfter = Literal["keyframes", "interpolation", "sr1", "sr2"]
STOP_AFTER = ("keyframes", "interpolation", "sr1", "sr2")
DEFAULT_MODEL = "zeroscope"
MAX_FEATHER_PX = 1000.0
MAX_DILATE_PX = 100_000.0
MAX_VAE_CHUNK = 4096


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

    start: str | None = None
    frames: int | Literal["all"] | None = None
    stride: int | None = None
    fps: float | None = None
    fit: FitMode = "crop"

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
        _require_choice(name="--fit", value=self.fit, choices=("crop", "pad", "stretch"))


@dataclass(frozen=True)
class MaskSettings:
    """Where the edit may happen.

    source: None = detect `prompt` (default: the run's --src); "full"; or a PNG, a folder of PNGs or
    a mask video. detector/box_threshold/text_threshold: None = the model entry's detector and its
    thresholds. smooth: average boxes over K frames; dilate: grow boxes by PX (None = 5% of the
    box); feather: soften the composite's edge by PX.
    """

    source: str | None = None
    prompt: str | None = None
    detector: str | None = None
    box_threshold: float | None = None
    text_threshold: float | None = None
    smooth: int = 1
    dilate: float | None = None
    feather: float = 2.0

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
    checkpointing of the U-Net's grad call; compile: torch.compile the U-Net (None: on for CUDA
    only) in compile_mode (compilation.MODES).
    """

    name: str = DEFAULT_MODEL
    registry: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    vae_chunk: int = 8
    checkpointing: Granularity | Literal["auto"] | None = "auto"
    compile: bool | None = None
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        require_finite(name="--vae-chunk", value=self.vae_chunk, low=1, high=MAX_VAE_CHUNK)
        _require_choice(name="--dtype", value=self.dtype, choices=("auto", "fp32", "fp16", "bf16"))
        _require_choice(name="--checkpointing", value=self.checkpointing, choices=("auto", None, "block", "layer"))
        _require_choice(name="--compile-mode", value=self.compile_mode,
                        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"))


@dataclass(frozen=True)
class OutputSettings:
    """What is written: path (None = IN.dmedit.mp4 beside the input), H.264 crf, the source's audio,
    size (source or model resolution), companions (compare video, loss plot), compositing, and
    what to do when the output exists; eval: score the edit into the report (`eval` key, OUT.eval.png),
    with the model-based metrics' models `eval_scorers` (models.scorers.choice.parse_scorers; None = the registry's)."""

    path: Path | None = None
    crf: int = DEFAULT_CRF
    audio: bool = True
    size: OutSize = "source"
    compare: bool = False
    plot: bool = False
    composite: bool = True
    overwrite: bool = False
    skip_existing: bool = False
    eval: bool = False
    eval_scorers: str | None = None

    def __post_init__(self) -> None:
        require_finite(name="--crf", value=self.crf, low=0, high=51)
        _require_choice(name="--out-size", value=self.size, choices=("source", "model"))
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing contradict each other; pass one of them")
        self.scorers  # noqa: B018 (parsed now: a bad value is a usage error before any work)

    @property
    def scorers(self) -> Scorers:
        """The models `--eval` scores with (models.scorers.choice.parse_scorers)."""
        return parse_scorers(text=self.eval_scorers, flag="--eval-scorers")


@dataclass(frozen=True)
class EditOverrides:
    """Method settings given on the command line; None = the model entry's value (then EditConfig's)."""

    steps: int | None = None
    guidance_scale: float | None = None
    learning_rate: float | None = None
    t_min: int | None = None
    t_max: int | None = None
    dds_scale: float | None = None
    lambda_spatial: float | None = None
    lambda_temporal: float | None = None
    use_mask: bool | None = None
    ssm_keys: SsmKeys | None = None
    ssm_reduction: SsmReduction | None = None
    window: int | None = None
    window_overlap: int | None = None
    windows_per_step: int | None = None
    seed: int | None = None
    checkpoint_every: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The overrides that were given (None values dropped)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class CascadeSettings:
    """A cascaded model's settings (show1): keyframe_size "HxW" (None = the entry's size, 80x128 for
    show1); stop_after: write the frames of this stage, running none after it (None = every stage)."""

    keyframe_size: str | None = None
    stop_after: StopAfter | None = None

    def __post_init__(self) -> None:
        _require_choice(name="--stop-after", value=self.stop_after, choices=(None, *STOP_AFTER))
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

    video: Path
    src: str
    tgt: str
    span: SpanSettings = field(default_factory=SpanSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    edit: EditOverrides = field(default_factory=EditOverrides)
    output: OutputSettings = field(default_factory=OutputSettings)
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.src.strip():
            raise UsageError("--src is empty: describe the object in the video, e.g. --src 'a bird'")
        if not self.tgt.strip():
            raise UsageError("--tgt is empty: describe what it should become, e.g. --tgt 'a parrot'")

    @property
    def detection_prompt(self) -> str:
        return self.mask.prompt or self.src

    def to_dict(self) -> dict[str, Any]:
        """Every setting as given, grouped, for the run report."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MaskRequest:
    """Everything `dmedit mask` was asked: detection only (mask.prompt is required)."""

    video: Path
    span: SpanSettings = field(default_factory=SpanSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        if self.mask.prompt is None:
            raise UsageError("--mask-prompt is empty: name the object to detect, e.g. --mask-prompt 'a bird'")
