"""Checkpoints of a DreamMotion run (OUT.run/checkpoint.pt): what `--resume` continues from.

A checkpoint holds x(θ), the optimizer, the noise generator, the step count, the history and the
run's fingerprint (the digest of its frames, masks, prompts, settings and model), so a resumed run
reaches the same result as an unbroken one and refuses a checkpoint of another run.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from dmedit.core.config import EditConfig
from dmedit.core.errors import UsageError
from dmedit.core.files import replaced_atomically

CHECKPOINT_NAME = "checkpoint.pt"
UNFINGERPRINTED_SETTINGS = ("steps", "checkpoint_every")
"""EditConfig fields a resumed run may change."""
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run continues from: x(θ) (1,C,F,h,w float32 CPU), the SGD state dict, the
    noise generator's state, the steps done, the logged history and the run's fingerprint."""

    fingerprint: str
    step: int
    latents: torch.Tensor
    optimizer: dict[str, Any]
    generator: torch.Tensor
    history: dict[str, list[float]]


def checkpoint_path(*, folder: Path) -> Path:
    """The checkpoint file inside a run's checkpoint folder."""
    return Path(folder) / CHECKPOINT_NAME


def save_checkpoint(*, checkpoint: Checkpoint, path: Path) -> None:
    """Write `checkpoint` to a temporary name beside `path`, then rename it over `path`, so the
    previous complete checkpoint stays until the new one is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT,
               **{field.name: getattr(checkpoint, field.name) for field in dataclasses.fields(Checkpoint)}}
    try:
        with replaced_atomically(path=path) as temporary, open(temporary, "wb") as handle:
            torch.save(payload, handle)  # through Python's file: a failed write keeps its OSError (errno)
    except (RuntimeError, OSError) as error:  # torch.save reports a failed write as RuntimeError
        written = error if isinstance(error, OSError) else error.__context__
        number = getattr(written, "errno", None) or errno.EIO
        reason = getattr(written, "strerror", None) or f"torch.save: {str(error).strip().splitlines()[0]}"
        raise OSError(number, f"cannot write the checkpoint ({reason})", str(path)) from error


def load_checkpoint(*, path: Path | None, fingerprint: str, steps: int) -> Checkpoint:
    """The checkpoint at `path`; UsageError if it is missing, unreadable, from another run (its
    fingerprint differs) or past `steps`."""
    if path is None or not path.is_file():
        raise UsageError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the checkpoint ({type(error).__name__}); "
                         "delete it to start over") from error
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != fingerprint:
        raise UsageError(f"{path}: checkpoint is from a different run (other video, masks, prompts, "
                         "model or settings); delete it or drop --resume")
    if int(payload["step"]) > steps:
        raise UsageError(f"{path}: the checkpoint is at step {payload['step']}, past --steps "
                         f"{steps}; raise --steps or drop --resume")
    return Checkpoint(fingerprint=fingerprint, step=int(payload["step"]), latents=payload["latents"],
                      optimizer=payload["optimizer"], generator=payload["generator"],
                      history={name: list(values) for name, values in payload["history"].items()})


def _tensor_digest(tensor: torch.Tensor | None) -> str:
    if tensor is None:
        return "none"
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest() + str(tuple(array.shape))


def fingerprint(*, frames: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
                config: EditConfig, key_layers: Sequence[str], unet_class: str, dtype: str) -> str:
    """Identity of a run's inputs for --resume: everything but the step count and checkpoint
    cadence. unet_class: the U-Net's class name; dtype: the backend's dtype as str(torch.dtype)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in UNFINGERPRINTED_SETTINGS}
    record = dict(frames=_tensor_digest(frames), masks=_tensor_digest(masks), prompts=list(prompts),
                  config=settings, key_layers=list(key_layers), unet=unet_class, dtype=dtype)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
