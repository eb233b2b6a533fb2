"""Model families behind one protocol (base.VideoBackend), detector families behind another
(base.BoxDetector); device/dtype resolution; `load_backend` and `load_detector`.

A video family module exposes `load_<family>(*, folder, device, dtype, vae_dtype, variant,
vae_chunk, offload)`; FAMILIES maps a registry entry's `family` to it. A detector family exposes
a class with `load(*, path, device)`; DETECTOR_FAMILIES maps a detector entry's `family` to it.
A cascade stage family (STAGE_FAMILIES, run by cascade.py after a cascade's keyframes) is a class
with `load(*, entry, folder, device, dtype)` and `run(*, frames, prompt, seed)` -> frames.
All are imported lazily: `--version` and `probe` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dmedit.core.errors import ModelError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from dmedit.models.backends.base import BoxDetector, VideoBackend
    from dmedit.core.config import DetectorEntry, ModelEntry

FAMILIES = {"text_to_video": "dmedit.models.backends.text_to_video:load_text_to_video",
            "show1": "dmedit.models.backends.show1:load_show1"}
STAGE_FAMILIES = {"show1_interpolation": "dmedit.models.backends.show1_stages:Show1Interpolation",
                  "show1_sr1": "dmedit.models.backends.show1_stages:Show1PixelSuperResolution",
                  "show1_sr2": "dmedit.models.backends.show1_sr2:Show1LatentSuperResolution"}
"""Stages of a cascade, run after its keyframes are edited (cascade.py); never edited themselves."""
CASCADES = {"show1": ("show1_interpolation", "show1_sr1", "show1_sr2")}
"""Keyframe family -> the families of the stages its `stages` entries must have, in order."""
DETECTOR_FAMILIES = {"grounding_dino": "dmedit.models.backends.grounding_dino:GroundingDinoDetector"}
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def resolve_device(*, name: str) -> "torch.device":
    """auto -> cuda, then mps, then cpu. An explicit device that is not available is a usage error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def resolve_dtype(*, name: str, device: "torch.device", entry: "ModelEntry") -> "torch.dtype":
    """auto -> the entry's dtype for this device type (fp32 on the CPU by default)."""
    import torch

    chosen = getattr(entry.dtype, device.type, "fp32") if name == "auto" else name
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if chosen not in table:
        raise UsageError(f"--dtype {name!r}: use auto, fp32, fp16 or bf16")
    if device.type == "cpu" and chosen == "fp16":
        raise UsageError("--dtype fp16 is not supported on the CPU; use fp32 or bf16")
    return table[chosen]


def _family_member(*, table: dict[str, str], family: str, name: str, kind: str):
    if family not in table:
        raise ModelError(f"{kind} {name!r}: unknown family {family!r} (known: {', '.join(table)})")
    module_name, member = table[family].split(":")
    return getattr(importlib.import_module(module_name), member)


def load_backend(
    *, entry: "ModelEntry", folder: "Path", device: "torch.device", dtype: "torch.dtype", vae_chunk: int,
    offload: bool = False,
) -> "VideoBackend":
    """Load the entry's weights from `folder` (hub.resolve_weights found it) with its family's loader."""
    import torch

    loader = _family_member(table=FAMILIES, family=entry.family, name=entry.name, kind="model")
    vae_dtype = torch.float32 if entry.vae_fp32 else dtype
    return loader(folder=folder, device=device, dtype=dtype, vae_dtype=vae_dtype, variant=entry.variant,
                  vae_chunk=vae_chunk, offload=offload)


def load_stage(*, entry: "ModelEntry", folder: "Path", device: "torch.device", dtype: "torch.dtype"):
    """Load a cascade stage entry's weights from `folder` with its family's class (STAGE_FAMILIES)."""
    stage_class = _family_member(table=STAGE_FAMILIES, family=entry.family, name=entry.name, kind="stage")
    return stage_class.load(entry=entry, folder=folder, device=device, dtype=dtype)


def load_detector(*, entry: "DetectorEntry", folder: "Path", device: "torch.device") -> "BoxDetector":
    """Load a detector entry's weights from `folder` with its family's class."""
    detector_class = _family_member(table=DETECTOR_FAMILIES, family=entry.family, name=entry.name,
                                    kind="detector")
    return detector_class.load(path=folder, device=device)
