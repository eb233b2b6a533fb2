"""An estimate of GPU memory for ZeroScope's U-Net at 576x320, made on the CPU without compute.

The U-Net runs on PyTorch's meta device (shapes only) under the tensor-storage tracker of
bench.measure, once as the step's no-grad call (3N frames) and once as its grad call (N frames,
forward and backward), plain and with per-block checkpointing. Attention goes through the
memory-efficient SDPA kernel's meta function, as on a GPU (on the meta device PyTorch would
otherwise pick the math kernel, which materialises every attention matrix). Not a measurement
of a GPU: the caching allocator's rounding, cuBLAS/cuDNN workspaces and the CUDA context come on
top. Each figure is bytes above the weights.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

import torch

from bench.measure import TensorMemoryTracker
from bench.setups import DTYPES, LATENT_CHANNELS, ZEROSCOPE_TEXT_SHAPE, zeroscope_unet
from dmedit.engine.speed import checkpointed_blocks

GIB = 1024 ** 3


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """F.scaled_dot_product_attention through the memory-efficient kernel (B, heads, L, D)."""
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, wants_grad, dropout_p, is_causal, scale=scale)[0]


@contextlib.contextmanager
def efficient_attention() -> Iterator[None]:
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _efficient_sdpa):
        yield


def _peak_bytes(*, unet: torch.nn.Module, frames: int, batch: int, grad: bool, checkpoint: str | None,
                width: int, height: int, dtype: torch.dtype) -> int:
    latents = torch.empty(batch, LATENT_CHANNELS, frames, height // 8, width // 8, device="meta", dtype=dtype)
    text = torch.empty(batch, *ZEROSCOPE_TEXT_SHAPE, device="meta", dtype=dtype)
    timesteps = torch.full((batch,), 500, device="meta")
    with contextlib.ExitStack() as stack:
        tracker = stack.enter_context(TensorMemoryTracker())
        stack.enter_context(efficient_attention())
        stack.enter_context(torch.set_grad_enabled(grad))
        if checkpoint:
            stack.enter_context(checkpointed_blocks(unet=unet, granularity=checkpoint))
        if grad:
            latents.requires_grad_(True)
        eps = unet(latents, timesteps, encoder_hidden_states=text).sample
        if grad:
            torch.autograd.backward(eps, grad_tensors=torch.ones_like(eps), inputs=[latents])
        del eps
    return tracker.peak


def estimate(*, frames: tuple[int, ...], dtype: str = "fp16", width: int = 576, height: int = 320) -> dict:
    """Estimated peak bytes above the weights for each frame count: the 3N-frame no-grad call and
    the N-frame grad call (forward + backward), plain and checkpointed per block and per layer."""
    unet = zeroscope_unet(device=torch.device("meta"), dtype=DTYPES[dtype])
    weights = sum(t.numel() * t.element_size() for t in [*unet.parameters(), *unet.buffers()])
    rows = []
    for count in frames:
        shape = dict(unet=unet, frames=count, width=width, height=height, dtype=DTYPES[dtype])
        rows.append(dict(
            frames=count,
            no_grad_3n_bytes=_peak_bytes(batch=3, grad=False, checkpoint=None, **shape),
            grad_n_bytes=_peak_bytes(batch=1, grad=True, checkpoint=None, **shape),
            grad_n_block_checkpointed_bytes=_peak_bytes(batch=1, grad=True, checkpoint="block", **shape),
            grad_n_layer_checkpointed_bytes=_peak_bytes(batch=1, grad=True, checkpoint="layer", **shape)))
    return dict(kind="meta-device estimate (no GPU)", model="zeroscope-arch", width=width, height=height,
                dtype=dtype, weights_bytes=weights, rows=rows)
