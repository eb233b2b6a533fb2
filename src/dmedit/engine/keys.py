"""Capture the keys of a video U-Net's spatial self-attention layers during forward passes.

Keys are the outputs of `attn1.to_k` inside the spatial transformers (`...attentions.N...attn1`):
for a batch of B branches of F frames on an h x w grid they are (B*F, h*w, C), branch-major.
Temporal attention (`temp_attentions`, `transformer_in`) and cross-attention are refused.

Two ways to record them: `recording_keys` registers one forward hook per layer for a whole run (the
U-Net then has the same hooks on every call, so a compiled U-Net is traced once and never
recompiled); `capture_keys` registers and removes hooks around a single block of calls.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dmedit.core.errors import UsageError


@dataclass
class KeyStore:
    """Keys captured per layer name, in U-Net module order; each layer's calls kept in call order."""

    layer_names: tuple[str, ...]
    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, torch.Tensor]:
        """name -> keys of all calls so far concatenated along dim 0, (calls*B*F, HW, C)."""
        return {name: torch.cat(self.calls[name]) if len(self.calls[name]) > 1 else self.calls[name][0]
                for name in self.layer_names if self.calls.get(name)}

    def layers(self) -> list[torch.Tensor]:
        """The captured keys as a list in `layer_names` order (every layer must have been called)."""
        keys = self.keys
        missing = [name for name in self.layer_names if name not in keys]
        if missing:
            raise RuntimeError(f"no keys captured for {', '.join(missing)}")
        return [keys[name] for name in self.layer_names]

    def clear(self) -> None:
        self.calls.clear()


def _temporal_prefixes(unet: torch.nn.Module) -> list[str]:
    return [name + "." for name, module in unet.named_modules()
            if isinstance(module, TransformerTemporalModel)]


def select_key_layers(*, unet: torch.nn.Module, patterns: Sequence[str]) -> dict[str, Attention]:
    """Spatial self-attention modules whose names match any fnmatch pattern, in module order.

    Raises UsageError when nothing matches or when a match is temporal or cross-attention.
    """
    temporal = _temporal_prefixes(unet)
    selected: dict[str, Attention] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        if "temp_attentions" in name or any(name.startswith(prefix) for prefix in temporal):
            raise UsageError(f"key layer {name} is temporal attention; key_layers must select "
                             f"spatial self-attention (…attentions.*…attn1), got {list(patterns)}")
        if module.is_cross_attention:
            raise UsageError(f"key layer {name} is cross-attention; key_layers must select "
                             f"spatial self-attention (…attentions.*…attn1), got {list(patterns)}")
        selected[name] = module
    if not selected:
        raise UsageError(f"key_layers {list(patterns)} match no attention module of the U-Net")
    return selected


@contextlib.contextmanager
def capture_keys(
    *, unet: torch.nn.Module, patterns: Sequence[str], rows: slice | None = None,
    layers: Mapping[str, Attention] | None = None,
) -> Iterator[KeyStore]:
    """Record `to_k` outputs of the matching spatial self-attention layers while the block runs
    (recording_keys around one block of calls); the store keeps them after the block.

    rows: keep only these rows (dim 0, i.e. branch*frame) of each output, copied so the rest of
    the batch is freed; None keeps everything. Outputs keep their autograd graph. layers: the
    result of `select_key_layers(unet=unet, patterns=patterns)` when the caller already has it
    (saves the walk over the U-Net's modules on every call); None or empty selects them here.
    """
    modules = dict(layers) if layers else select_key_layers(unet=unet, patterns=patterns)
    with recording_keys(layers=modules, rows=rows) as recorder:
        yield recorder.store


@dataclass
class KeyRecorder:
    """The keys that forward hooks on the `to_k` of every selected layer record, call after call.

    Every U-Net call appends each layer's keys (B*F, HW, C), attached to the call's autograd graph;
    `take` hands over the keys of the calls since the last `clear`.
    """

    store: KeyStore

    def clear(self) -> None:
        self.store.clear()

    def take(self, *, rows: slice | None = None) -> list[torch.Tensor]:
        """The recorded keys per layer in layer order, each (rows of) (B*F, HW, C); clears the store.
        rows: keep only these rows (a copy, so the rest of the batch is freed); None keeps all."""
        layers = self.store.layers()
        self.store.clear()
        return layers if rows is None else [keys[rows].clone() for keys in layers]


@contextlib.contextmanager
def recording_keys(*, layers: Mapping[str, Attention], rows: slice | None = None) -> Iterator[KeyRecorder]:
    """Hook the layers `select_key_layers` chose for the duration of the block (a whole run, or
    one block of calls); every hook is removed on exit, also after an exception. rows: keep only
    these rows of each output, copied in the hook so the rest of the batch is freed at once."""
    store = KeyStore(layer_names=tuple(layers))
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(name: str):
        def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store.calls.setdefault(name, []).append(output if rows is None else output[rows].clone())
        return hook

    try:
        for name, module in layers.items():
            handles.append(module.to_k.register_forward_hook(make_hook(name)))
        yield KeyRecorder(store=store)
    finally:
        for handle in handles:
            handle.remove()
