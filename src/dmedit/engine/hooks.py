"""What every U-Net call of a run shares, installed once and removed together: the key hooks, the
activation checkpointing of the grad call and the compiled forward.

The U-Net is then the same module with the same hooks on every call, which a compiler traces once
(two graphs: the step's no-grad call and its grad call) and never recompiles.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from diffusers.models.attention_processor import Attention

from dmedit.engine.compilation import CompileChoice, compiled_unet
from dmedit.engine.keys import KeyRecorder, recording_keys
from dmedit.engine.speed import checkpointed_blocks


@contextlib.contextmanager
def unet_hooks(
    *, unet: torch.nn.Module, key_modules: Mapping[str, Attention], checkpointing: str | None,
    compile: CompileChoice | None,
) -> Iterator[KeyRecorder]:
    """While active: forward hooks on the `to_k` of every module in key_modules (none when it is
    empty), checkpointing at `checkpointing` ("block" / "layer"; None: off) and the U-Net compiled
    as `compile` says (None or disabled: eager). Yields the recorder the hooks fill; everything is
    removed on exit, also after an exception."""
    with contextlib.ExitStack() as stack:
        recorder = stack.enter_context(recording_keys(layers=key_modules))
        if checkpointing is not None:
            stack.enter_context(checkpointed_blocks(unet=unet, granularity=checkpointing))
        if compile is not None:
            stack.enter_context(compiled_unet(unet=unet, choice=compile))
        yield recorder
