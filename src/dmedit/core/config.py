"""Frozen configuration records. Merge order: defaults < models.toml entry < command-line flags.

Registry parsing (registry.py) builds `ModelEntry`/`DetectorEntry`/`ScorerEntry`; the run applies an entry's
`defaults` table over `EditConfig()`, then the command line's `settings.EditOverrides`, with
`EditConfig.merged`. The user's other settings (span, mask, model, output) are in settings.py.
Each EditConfig field carries its command-line form (core.flags): the flag of `dmedit run`, `batch`,
`ablate` and a jobs file's column are derived from it, so a new setting is added here alone.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from dmedit.core.errors import UsageError
from dmedit.core.flags import CONTROL, FRAMES, METHOD, MODELS, Flag, Switch, setting

SsmKeys = Literal["conditional", "unconditional"]
SsmReduction = Literal["mean", "sum"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
"""torch.compile's inductor modes (--compile-mode)."""
WeightFormat = Literal["safetensors", "pickle"]
"""What an entry's pinned revision holds (registry key `weights`): safetensors files, loaded as they are, or
pickle checkpoints only, which `dmedit models pull` converts to safetensors in the cache after downloading."""
TRAIN_TIMESTEPS = 1000
"""Every supported family's scheduler is trained on 1000 timesteps: t is drawn from 0..999."""
MAX_SEED = 2**63 - 1
DEFAULT_CRF = 18
"""H.264 quality of written video (lower is better): --crf's default."""


def require_finite(*, name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """UsageError unless `value` is a finite number within [low, high] (each bound optional)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {_number(low)} and {_number(high)}" if low is not None and high is not None else (
            f"at least {_number(low)}" if low is not None else f"at most {_number(high)}")
        raise UsageError(f"{name} must be {bounds}, got {_number(value)}")


def _number(value: float) -> str:
    """Integers as integers (2**63 - 1 in full), other numbers in %g form."""
    if isinstance(value, int):
        return str(value)
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e20 else f"{value:g}"


@dataclass(frozen=True)
class EditConfig:
    """Hyperparameters of the DreamMotion optimisation (the paper's Sec. 3).

    dds_scale: the weight of the V-DDS term, i.e. the factor applied to its gradient g. The DDS
        reference divides its summed loss by the latent h*w; we state that number instead.
    lambda_spatial / lambda_temporal: weights of the S-SSM / T-SSM losses. A weight of 0 removes
        the term entirely (it is neither computed nor logged).
    ssm_reduction: "mean" averages each layer's squared map differences over its entries, then
        over layers (the default; lambdas about 1e3); "sum" is the paper's Eq. 12 and Eq. 15 per
        layer (S-SSM: the squared map differences summed over entries, averaged over the N frames;
        T-SSM: summed over the N x N entries), summed over the key layers (lambdas smaller by about
        the entry count, see README).
    guidance_scale: w in diffusers' convention eps_u + w * (eps_c - eps_u); the paper's Eq. 6
        writes (1 + w) eps_c - w eps_u, so its w is one less than ours for the same guidance.
    window / window_overlap / windows_per_step: temporal windows (windows.py): 0 = the whole span
        in one window; otherwise each step visits windows of `window` latent frames sharing
        `window_overlap` frames on a grid shifted every step, every window (0) or that many at random.
    """

    steps: int = setting(200, Flag(help="Optimisation steps.", panel=METHOD, shown=MODELS, low=1))
    guidance_scale: float = setting(9.0, Flag(help="Classifier-free guidance w (diffusers' convention).", panel=METHOD,
                                              shown=MODELS))
    learning_rate: float = setting(0.4, Flag(help="SGD learning rate.", panel=METHOD, names=("--lr",), shown=MODELS))
    t_min: int = setting(50, Flag(help="Smallest timestep drawn.", panel=METHOD, shown=MODELS))
    t_max: int = setting(950, Flag(help="Largest timestep drawn.", panel=METHOD, shown=MODELS))
    dds_scale: float = setting(1.0, Flag(help="Weight of the V-DDS gradient.", panel=METHOD, shown=MODELS))
    lambda_spatial: float = setting(
        1.0, Flag(help="Weight of the spatial self-similarity loss.", panel=METHOD, shown=MODELS),
        Switch("--no-spatial-ssm", help="Ablation: drop S-SSM.", panel=METHOD, value=0.0))
    lambda_temporal: float = setting(
        1.0, Flag(help="Weight of the temporal self-similarity loss.", panel=METHOD, shown=MODELS),
        Switch("--no-temporal-ssm", help="Ablation: drop T-SSM.", panel=METHOD, value=0.0))
    use_mask: bool = setting(True, Switch("--no-mask", help="Ablation: V-DDS gradient over the whole frame.",
                                          panel=METHOD, value=False))
    ssm_keys: SsmKeys = setting("conditional", Flag(help="Which passes' keys the SSM losses compare.", panel=METHOD,
                                                    shown=MODELS))
    ssm_reduction: SsmReduction = setting("mean", Flag(
        help="SSM losses as means over map entries, or the paper's Eq. 12 and 15 per layer summed over layers.", panel=METHOD, shown=MODELS))
    window: int = setting(0, Flag(help="Frames per temporal window when the span is longer than the model takes.",
                                  panel=FRAMES, shown=MODELS, low=1))
    window_overlap: int = setting(0, Flag(help="Frames neighbouring windows share.", panel=FRAMES,
                                          shown="half the window", low=0))
    windows_per_step: int = setting(0, Flag(help="Windows each step visits, at random (0: all).", panel=FRAMES, low=0))
    seed: int = setting(0, Flag(help="Random seed (same seed and inputs, same output file on one machine).",
                                panel=METHOD, low=0))
    checkpoint_every: int = setting(50, Flag(help="Write a checkpoint every K steps.", panel=CONTROL, low=1))

    def __post_init__(self) -> None:
        require_finite(name="--steps", value=self.steps, low=1, high=1_000_000)
        require_finite(name="--guidance-scale", value=self.guidance_scale, low=0, high=1000)
        require_finite(name="--lr", value=self.learning_rate, low=0, high=1e6)
        require_finite(name="--dds-scale", value=self.dds_scale, low=0, high=1e9)
        require_finite(name="--lambda-spatial", value=self.lambda_spatial, low=0, high=1e12)
        require_finite(name="--lambda-temporal", value=self.lambda_temporal, low=0, high=1e12)
        require_finite(name="--t-min", value=self.t_min, low=0, high=TRAIN_TIMESTEPS - 1)
        require_finite(name="--t-max", value=self.t_max, low=0, high=TRAIN_TIMESTEPS - 1)
        if self.t_min > self.t_max:
            raise UsageError(f"--t-min {self.t_min} is above --t-max {self.t_max}")
        require_finite(name="--window", value=self.window, low=0, high=100_000)
        require_finite(name="--window-overlap", value=self.window_overlap, low=0, high=max(0, self.window - 1))
        require_finite(name="--windows-per-step", value=self.windows_per_step, low=0, high=100_000)
        require_finite(name="--seed", value=self.seed, low=0, high=MAX_SEED)
        require_finite(name="--checkpoint-every", value=self.checkpoint_every, low=1, high=1_000_000)
        if self.ssm_keys not in typing.get_args(SsmKeys):
            raise UsageError(f"ssm-keys must be conditional or unconditional, got {self.ssm_keys!r}")
        if self.ssm_reduction not in typing.get_args(SsmReduction):
            raise UsageError(f"ssm-reduction must be mean or sum, got {self.ssm_reduction!r}")

    def weights(self) -> dict[str, float]:
        """The weight of each named loss term of the step (editor.step_losses)."""
        return {"dds": self.dds_scale, "spatial": self.lambda_spatial, "temporal": self.lambda_temporal}

    def merged(self, overrides: Mapping[str, Any]) -> "EditConfig":
        """Return a copy with `overrides` applied; keys whose value is None are ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown edit setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


EDIT_DEFAULT_KEYS = (
    "steps", "guidance_scale", "learning_rate", "t_min", "t_max", "dds_scale",
    "lambda_spatial", "lambda_temporal", "ssm_keys", "ssm_reduction",
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
    window / window_overlap: the temporal windows of a span longer than max_frames (None: `frames`
    frames, sharing half of them).
    key_layers: fnmatch patterns over U-Net module names selecting the spatial self-attention
    `Attention` modules (…attentions.*…attn1) whose `to_k` outputs feed the SSM losses.
    defaults: EditConfig overrides (keys from EDIT_DEFAULT_KEYS); for a cascade's stage entry, `steps` and
    `guidance_scale` are the stage's denoising steps and guidance.
    stages: a cascade (family in backends.CASCADES): the entries of the stages run after the keyframe
    optimisation, in order (cascade.py).
    weights: "pickle" when repo@revision has pickle checkpoints only (`WeightFormat`).
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
    weights: WeightFormat = "safetensors"
    path: str | None = None
    variant: str | None = None
    builder: str | None = None
    vae_fp32: bool = True
    window: int | None = None
    window_overlap: int | None = None
    detector: str = "grounding-dino-tiny"
    dtype: DtypeByDevice = field(default_factory=DtypeByDevice)
    defaults: dict[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = ()
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
    weights: WeightFormat = "safetensors"
    path: str | None = None
    builder: str | None = None
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    description: str = ""
    license: str = ""
    source_file: str = ""


@dataclass(frozen=True)
class ScorerEntry:
    """One model behind a metric of `dmedit eval` (models.toml `[scorers.NAME]`): CLIP, LPIPS or a tracker.

    family: clip | lpips | efficientloftr (dmedit.models.scorers.FAMILIES); its folder holds config.json.
    """

    name: str
    family: str
    repo: str | None = None
    revision: str | None = None
    weights: WeightFormat = "safetensors"
    path: str | None = None
    builder: str | None = None
    description: str = ""
    license: str = ""
    source_file: str = ""
