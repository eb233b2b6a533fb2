"""Memory lever for the step's grad-enabled U-Net call (see BENCHMARKS.md).

`checkpointed_blocks`: activation checkpointing for UNet3D (diffusers' UNet3D has none): each
down/mid/up block ("block"), or each resnet / temporal conv / transformer / resampler inside them
("layer"), keeps only its inputs during the forward and recomputes its inside during backward, so
long clips fit in memory at the price of about one more forward of the grad call.
"""

from __future__ import annotations

import contextlib
import functools
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
