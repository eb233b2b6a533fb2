"""Memory and time levers of the step's U-Net calls (see BENCHMARKS.md).

`checkpointed_blocks`: activation checkpointing for UNet3D (diffusers' UNet3D has none): each
down/mid/up block ("block"), or each resnet / temporal conv / transformer / resampler inside them
("layer"), keeps only its inputs during the forward and recomputes its inside during backward, so
long clips fit in memory at the price of about one more forward of the grad call.
`choose_checkpointing`: --checkpointing auto, from the free memory and a per-frame cost measured on
ZeroScope. `Stopwatch`: lap times that wait for the device.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "downsamplers", "upsamplers")
GRANULARITIES = ("block", "layer")


def unet_blocks(*, unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The down blocks, mid block and up blocks of a diffusers UNet3D/2D, in call order."""
    mid = getattr(unet, "mid_block", None)
    return [*unet.down_blocks, *([mid] if mid is not None else []), *unet.up_blocks]


def checkpoint_units(*, unet: torch.nn.Module, granularity: str = "block") -> list[torch.nn.Module]:
    """The modules checkpointed one by one: the blocks, or the layers inside every block."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    blocks = unet_blocks(unet=unet)
    if granularity == "block":
        return blocks
    return [layer for block in blocks for name in LAYER_LISTS for layer in (getattr(block, name, None) or ())]


def _checkpointed(forward: Callable[..., object]) -> Callable[..., object]:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


@contextlib.contextmanager
def checkpointed_blocks(
    *, unet: torch.nn.Module, granularity: str = "block"
) -> Iterator[list[torch.nn.Module]]:
    """While active, every unit of `unet` (see checkpoint_units) runs under non-reentrant
    activation checkpointing when grad is enabled (no-grad calls are unchanged). The backward may
    run after exit: recomputation uses the original forwards. Forward hooks inside the units fire
    again during recomputation if they are still registered then. Yields the patched units;
    restored on exit."""
    blocks = checkpoint_units(unet=unet, granularity=granularity)
    patched = []
    try:
        for block in blocks:
            if "forward" in vars(block):
                raise RuntimeError(f"{type(block).__name__} already has a patched forward")
            block.forward = _checkpointed(block.forward)
            patched.append(block)
        yield blocks
    finally:
        for block in patched:
            del block.forward


class Stopwatch:
    """Lap times on a device: waits for the device's queued work before reading the clock."""

    def __init__(self, *, device: torch.device) -> None:
        self.synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.last = time.perf_counter()

    def lap(self) -> float:
        self.synchronise()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


ZEROSCOPE_CHANNELS = 320 + 640 + 1280 + 1280
"""sum(block_out_channels) of ZeroScope's U-Net, the architecture the per-frame costs were measured on."""
ACTIVATION_BYTES_PER_FRAME_PIXEL = {None: 439_000, "block": 170_000, "layer": 88_500}
"""Peak step memory above the weights, per frame and latent pixel, in bytes of a 2-byte dtype, for
ZeroScope's U-Net: measured on an H200 at 576x320 (72x40 latents), fp16 (BENCHMARKS.md, FACTS.md):
(13.0 GB at 8 frames, 23.3 at 16, 63.6 at 48 -> 1.265 GB per frame) / 2880 pixels; 48 frames with
block checkpointing 26.4 GB, with layer checkpointing 15.1 GB."""
MEMORY_MARGIN = 0.8
"""The share of the free memory a step may plan to use (the rest: allocator rounding, workspaces)."""


@dataclass(frozen=True)
class CheckpointingChoice:
    """The granularity the grad call runs with (None: no checkpointing) and why."""

    granularity: str | None
    reason: str
    estimate_gib: dict[str, float] = field(default_factory=dict)
    free_gib: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"granularity": self.granularity or "none", "reason": self.reason,
                "estimate_gib": self.estimate_gib, "free_gib": self.free_gib}


def step_memory_estimate(*, unet: torch.nn.Module, frames: int, latent_height: int, latent_width: int,
                         dtype: torch.dtype) -> dict[str | None, int]:
    """Bytes a step needs above the weights, per granularity (None, "block", "layer"): the measured
    ZeroScope cost per frame and latent pixel, scaled by the U-Net's channel sum and the dtype's size."""
    channels = sum(getattr(getattr(unet, "config", None), "block_out_channels", None) or (ZEROSCOPE_CHANNELS,))
    scale = frames * latent_height * latent_width * (channels / ZEROSCOPE_CHANNELS) * (dtype.itemsize / 2)
    return {granularity: int(cost * scale) for granularity, cost in ACTIVATION_BYTES_PER_FRAME_PIXEL.items()}


def free_memory_bytes(*, device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the host's available memory for the CPU; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in open("/proc/meminfo", encoding="ascii"):
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def choose_checkpointing(*, requested: str | None, estimate: dict[str | None, int],
                         free_bytes: int | None) -> CheckpointingChoice:
    """requested "auto": the least recomputation whose estimate fits MEMORY_MARGIN of the free memory
    (none, then block, then layer; layer when nothing fits); otherwise the requested granularity."""
    gib = {("none" if name is None else name): round(value / 2**30, 2) for name, value in estimate.items()}
    free_gib = None if free_bytes is None else round(free_bytes / 2**30, 2)
    if requested != "auto":
        return CheckpointingChoice(granularity=requested, reason="--checkpointing", estimate_gib=gib, free_gib=free_gib)
    if free_bytes is None:
        return CheckpointingChoice(granularity=None, reason="auto: free memory unknown on this device",
                                   estimate_gib=gib)
    budget = free_bytes * MEMORY_MARGIN
    for granularity in (None, "block", "layer"):
        if estimate[granularity] <= budget:
            label = granularity or "none"
            return CheckpointingChoice(
                granularity=granularity, estimate_gib=gib, free_gib=free_gib,
                reason=f"auto: {label} needs about {gib[label]} GiB of {free_gib} GiB free")
    return CheckpointingChoice(granularity="layer", estimate_gib=gib, free_gib=free_gib,
                               reason=f"auto: even layer ({gib['layer']} GiB) may not fit {free_gib} GiB free")
