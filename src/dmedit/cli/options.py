"""The option types the `dmedit` commands share (Typer Annotated aliases, choice enums, help panels).

Imported by cli.py and the command modules registered on its app (batch_command, eval_command);
nothing heavy is imported here.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


INPUT, FRAMES, OUTPUT, MODEL, METHOD, MASKS, CONTROL = (
    "Input", "Frames", "Output", "Model", "Method", "Masks", "Run control"
)
MODELS = "the model's"


class Fit(str, Enum):
    crop = "crop"
    pad = "pad"
    stretch = "stretch"


class OutSize(str, Enum):
    source = "source"
    model = "model"


class Checkpointing(str, Enum):
    auto = "auto"
    none = "none"
    block = "block"
    layer = "layer"


class CompileMode(str, Enum):
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune-no-cudagraphs"


class SsmKeys(str, Enum):
    conditional = "conditional"
    unconditional = "unconditional"


class SsmReduction(str, Enum):
    mean = "mean"
    sum = "sum"


class StopAfter(str, Enum):
    keyframes = "keyframes"
    interpolation = "interpolation"
    sr1 = "sr1"
    sr2 = "sr2"


def _option(*names: str, help: str, panel: str, default: str | bool = True, **checks) -> typer.Option:
    """A Typer option in `panel`; `default` True shows the parameter's default, a string shows that
    text instead (for defaults that come from the model entry or the input)."""
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=default, **checks)


VideoArg = Annotated[Path, typer.Argument(help="Input video (a file, or a pipe such as <(cat clip.mp4)).",
                                          show_default=False, rich_help_panel=INPUT)]
Start = Annotated[Optional[str], _option(help="First frame: an index (12) or seconds (1.5s).", panel=FRAMES, default="0")]
Frames = Annotated[Optional[str], _option(help="Frames to edit: a number, or 'all' (to the end; long spans go in windows).",
                                          panel=FRAMES, default=MODELS)]
Stride = Annotated[Optional[int], _option(help="Take every K-th frame.", panel=FRAMES, default="1", min=1)]
Fps = Annotated[Optional[float], _option(help="Sample at this frame rate.", panel=FRAMES, default="the source's")]
ModelName = Annotated[str, _option(help="Registry entry.", panel=MODEL)]
Registry = Annotated[Optional[Path], _option(help="A models.toml merged over the built-in one.", panel=MODEL,
                                             default="none")]
Device = Annotated[str, _option(help="auto, cpu, cuda, cuda:N or mps.", panel=MODEL)]
Offline = Annotated[bool, _option("--offline", help="Never contact the model hub.", panel=MODEL)]
Detector = Annotated[Optional[str], _option(help="Detector entry.", panel=MASKS, default=MODELS)]
BoxThreshold = Annotated[Optional[float], _option(help="Detector box score threshold.", panel=MASKS,
                                                  default="the detector's", min=0, max=1)]
TextThreshold = Annotated[Optional[float], _option(help="Detector text score threshold.", panel=MASKS,
                                                   default="the detector's", min=0, max=1)]
Smooth = Annotated[int, _option(help="Average boxes over K neighbouring frames.", panel=MASKS, min=1)]
Dilate = Annotated[Optional[float], _option(help="Grow boxes by PX pixels.", panel=MASKS, default="5% of the box")]
Overwrite = Annotated[bool, _option("--overwrite", help="Replace existing outputs.", panel=OUTPUT)]
Quiet = Annotated[bool, _option("-q", "--quiet", help="Nothing on stderr but errors and skips.", panel=CONTROL)]
