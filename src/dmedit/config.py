"""Frozen configuration records. Merge order: defaults < models.toml entry < command-line flags.

Registry parsing (registry.py) builds `ModelEntry`/`DetectorEntry`; the CLI builds the rest and
applies an entry's `defaults` table over `EditConfig()` with `EditConfig.merged`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dmedit.errors import UsageError

SsmKeys = Literal["conditional", "unconditional"]


@dataclass(frozen=True)
class EditConfig:
    """Hyperparameters of the DreamMotion optimisation (the paper's Sec. 3).

    dds_scale: the explicit factor applied to the V-DDS gradient g before SGD. The DDS reference
        divides its summed loss by the latent h*w; we state that number instead of hiding it.
    lambda_spatial / lambda_temporal: weights of the S-SSM / T-SSM losses (our choice: the paper
        gives none). A weight of 0 removes the term entirely (it is neither computed nor logged).
    """

    steps: int = 200
    guidance_scale: float = 9.0
    learning_rate: float = 0.4
    t_min: int = 50
    t_max: int = 950
    dds_scale: float = 1.0
    lambda_spatial: float = 1.0
    lambda_temporal: float = 1.0
    use_mask: bool = True
    ssm_keys: SsmKeys = "conditional"
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"steps must be at least 1, got {self.steps}")
        if not 0 <= self.t_min <= self.t_max:
            raise UsageError(f"t range must satisfy 0 <= t_min <= t_max, got {self.t_min}..{self.t_max}")
        if self.ssm_keys not in ("conditional", "unconditional"):
            raise UsageError(f"ssm-keys must be conditional or unconditional, got {self.ssm_keys!r}")
        if self.lambda_spatial < 0 or self.lambda_temporal < 0:
            raise UsageError("loss weights must not be negative")

    def merged(self, overrides: dict[str, Any]) -> "EditConfig":
        """Return a copy with `overrides` applied; keys whose value is None are ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown edit setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


EDIT_DEFAULT_KEYS = (
    "steps", "guidance_scale", "learning_rate", "t_min", "t_max", "dds_scale",
    "lambda_spatial", "lambda_temporal", "ssm_keys",
)


@dataclass(frozen=True)
class DtypeByDevice:
    cuda: str = "fp16"
    mps: str = "fp16"
    cpu: str = "fp32"


@dataclass(frozen=True)
class ModelEntry:
    """One video model of the registry (models.toml `[models.NAME]`).

    repo/revision: hub id and pinned commit; path: a local folder in the same layout
    (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), which wins when set.
    builder: name of an offline builder (only "tiny-t2v") that creates the folder when it is missing.
    detector: the detectors entry that makes masks from text for this model by default.
    key_layers: fnmatch patterns over U-Net module names selecting the spatial self-attention
    `Attention` modules (…attentions.*…attn1) whose `to_k` outputs feed the SSM losses.
    defaults: EditConfig overrides (keys from EDIT_DEFAULT_KEYS).
    """

    name: str
    family: str
    width: int
    height: int
    frames: int
    max_frames: int
    key_layers: tuple[str, ...]
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    variant: str | None = None
    builder: str | None = None
    vae_fp32: bool = True
    detector: str = "grounding-dino-tiny"
    dtype: DtypeByDevice = field(default_factory=DtypeByDevice)
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    license: str = ""
    source_file: str = ""


@dataclass(frozen=True)
class DetectorEntry:
    """One Grounding-DINO detector of the registry (models.toml `[detectors.NAME]`)."""

    name: str
    family: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    builder: str | None = None
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    description: str = ""
    license: str = ""
    source_file: str = ""
