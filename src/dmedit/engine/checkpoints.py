"""Checkpoints of a DreamMotion run (OUT.run/checkpoint.pt): what `--resume` continues from.

A checkpoint holds x(θ), the optimizer, the noise generator, the step count, the history and the
run's fingerprint (the digest of its frames, masks, prompts, settings and model), so a resumed run
reaches the same result as an unbroken one and refuses a checkpoint of another run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from dmedit.core.errors import UsageError

if TYPE_CHECKING:
    from dmedit.models.backends.base import VideoBackend
    from dmedit.core.config import EditConfig
    from dmedit.engine.editor import EditSession, EditState

CHECKPOINT_NAME = "checkpoint.pt"
UNFINGERPRINTED_SETTINGS = ("steps", "checkpoint_every")
"""EditConfig fields a resumed run may change."""
CHECKPOINT_FORMAT = 1


def checkpoint_path(*, folder: Path) -> Path:
    """The checkpoint file inside a run's checkpoint folder."""
    return Path(folder) / CHECKPOINT_NAME


def save_checkpoint(*, session: "EditSession", state: "EditState", path: Path) -> None:
    """Write latents, optimizer, generator, step, history and fingerprint atomically to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": session.fingerprint,
        "step": state.step,
        "latents": state.latents.detach().cpu().clone(),
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "history": state.history,
    }
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(*, session: "EditSession", state: "EditState", path: Path | None) -> None:
    """Restore `state` from `path`; UsageError if it is missing, unreadable, from another run, or
    past the session's step count."""
    if path is None or not path.is_file():
        raise UsageError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the checkpoint ({type(error).__name__}); "
                         "delete it to start over") from error
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != session.fingerprint:
        raise UsageError(f"{path}: checkpoint is from a different run (other video, masks, prompts, "
                         "model or settings); delete it or drop --resume")
    if int(payload["step"]) > session.config.steps:
        raise UsageError(f"{path}: the checkpoint is at step {payload['step']}, past --steps "
                         f"{session.config.steps}; raise --steps or drop --resume")
    with torch.no_grad():
        state.latents.copy_(payload["latents"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["generator"])
    state.step = int(payload["step"])
    state.history = {name: list(values) for name, values in payload["history"].items()}


def _tensor_digest(tensor: torch.Tensor | None) -> str:
    if tensor is None:
        return "none"
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest() + str(tuple(array.shape))


def fingerprint(*, frames: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
                config: EditConfig, key_layers: Sequence[str], backend: VideoBackend) -> str:
    """Identity of a run's inputs for --resume: everything but the step count and checkpoint cadence."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in UNFINGERPRINTED_SETTINGS}
    record = dict(frames=_tensor_digest(frames), masks=_tensor_digest(masks), prompts=list(prompts),
                  config=settings, key_layers=list(key_layers), unet=type(backend.unet).__name__,
                  dtype=str(backend.dtype))
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
