"""Pure tensor functions of DreamMotion (paper Sec. 3): V-DDS gradient and S-/T-SSM losses.

Shapes: latents and noise predictions are (B, C, F, h, w); keys of one attention layer for one
branch are (F, HW, C) with HW = h_l * w_l, the layer's spatial grid. Nothing here weights terms
against each other: the editor does that. The self-similarity maths always runs in float32, also
inside a half-precision autocast region.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

COSINE_EPS = 1e-8
REDUCTIONS = ("mean", "sum")


def cfg_noise(*, uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_w = eps(null) + w * (eps(y) - eps(null)). Any equal shapes."""
    return uncond + guidance_scale * (cond - uncond)


def dds_grad(
    *,
    eps_target_uncond: torch.Tensor,
    eps_target_cond: torch.Tensor,
    eps_source_uncond: torch.Tensor,
    eps_source_cond: torch.Tensor,
    guidance_scale: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Masked Delta Denoising Score g = (eps_w(x_t, y_tgt) - eps_w(x̂_t, y_src)) ⊙ m, in float32.

    eps_*: (1, C, F, h, w) noise predictions; "target" at the noised edited latents x_t, "source"
    at the noised source latents x̂_t. mask: (1, 1, F, h, w) with 1 = editable, or None for the
    whole frame. Returns (1, C, F, h, w); this is the gradient DDS applies to the latents
    directly (no chain rule through the noising or the U-Net).
    """
    target = cfg_noise(uncond=eps_target_uncond.float(), cond=eps_target_cond.float(),
                       guidance_scale=guidance_scale)
    source = cfg_noise(uncond=eps_source_uncond.float(), cond=eps_source_cond.float(),
                       guidance_scale=guidance_scale)
    grad = target - source
    return grad if mask is None else grad * mask.float()


def dds_surrogate(*, grad: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The V-DDS term as a loss, as in the DDS reference: (g.detach() * x).sum(), whose gradient with
    respect to the latents x (any shape equal to g's) is exactly g. Its value means nothing."""
    return (grad.detach() * latents).sum()


def _float32_maths(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `tensor`'s device, so matmuls stay in float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    """Float32 copy of `vectors` scaled to unit L2 norm along the last dimension."""
    return F.normalize(vectors.float(), dim=-1, eps=COSINE_EPS)


def spatial_self_similarity(*, keys: torch.Tensor) -> torch.Tensor:
    """Per-frame cosine similarity of all spatial positions: (F, HW, C) -> (F, HW, HW), float32.

    SS[n, i, j] = cos(K[n, i], K[n, j]).
    """
    with _float32_maths(keys):
        unit = _unit(keys)
        return unit @ unit.transpose(1, 2)


def temporal_self_similarity(*, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the frames' spatially averaged keys: (F, HW, C) -> (F, F), float32.

    M[n] = mean_i K[n, i]; TS[a, b] = cos(M[a], M[b]).
    """
    with _float32_maths(keys):
        unit = _unit(keys.float().mean(dim=1))
        return unit @ unit.T


def _spatial_squared_error_sum(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Sum over frames and entries of (SS(target) - SS(source))^2 for one chunk of frames."""
    difference = spatial_self_similarity(keys=target) - spatial_self_similarity(keys=source)
    return difference.square().sum()


def _spatial_squared_error_sum_by_gram(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The same sum as `_spatial_squared_error_sum` through C x C matrices, never HW x HW.

    With unit keys B (source) and D = unit(target) - B, per frame SS(target) - SS(source) =
    B·Dᵀ + D·Bᵀ + D·Dᵀ, whose squared Frobenius norm is 2·tr(R²) + 2·tr(P·Q) + 4·tr(Q·R) + tr(Q²)
    with P = BᵀB, Q = DᵀD, R = BᵀD. Every term is at least quadratic in D, so nothing large
    cancels. Costs O(HW·C²) per frame instead of O(HW²·C).
    """
    with _float32_maths(target):
        unit_source = _unit(source)
        difference = _unit(target) - unit_source
        source_t = unit_source.transpose(1, 2)
        p = source_t @ unit_source
        q = difference.transpose(1, 2) @ difference
        r = source_t @ difference
        r_t = r.transpose(1, 2)
        return 2 * (r * r_t).sum() + 2 * (p * q).sum() + 4 * (q * r_t).sum() + q.square().sum()


def _check_layers(target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor], reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not target_keys or len(target_keys) != len(source_keys):
        raise ValueError(f"need equally many target and source layers, got "
                         f"{len(target_keys)} and {len(source_keys)}")
    for target, source in zip(target_keys, source_keys):
        if target.shape != source.shape or target.dim() != 3:
            raise ValueError(f"keys must both be (F, HW, C), got {tuple(target.shape)} "
                             f"and {tuple(source.shape)}")


def spatial_ssm_loss(
    *, target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor], frame_chunk: int = 4,
    reduction: str = "mean",
) -> torch.Tensor:
    """S-SSM loss between SS(target) and SS(source) over every layer, a float32 scalar.

    target_keys / source_keys: one (F, HW, C) tensor per layer, aligned by position.
    reduction "mean": per layer the squared differences are averaged over its F * HW * HW entries
    (the usual MSE), then layers are averaged; "sum": per layer exactly the paper's Eq. 12,
    (1/N) Σ_n ‖SS^n(target) − SS^n(source)‖²_F over its N frames, summed over the layers, so layers
    with more positions weigh more. A layer with
    fewer channels than positions (C < HW) is computed through C x C matrices (no HW x HW map is
    ever formed; same value up to float rounding). Otherwise frames are processed `frame_chunk` at
    a time, and when gradients are needed each chunk is recomputed in backward (activation
    checkpointing), so at most one chunk's HW x HW maps exist at any moment.
    """
    _check_layers(target_keys, source_keys, reduction)
    per_layer = []
    for target, source in zip(target_keys, source_keys):
        frames, positions, _ = target.shape
        total = _layer_squared_error_sum(target, source.detach(), frame_chunk)
        per_layer.append(total / (frames * positions * positions) if reduction == "mean" else total / frames)
    return _reduce(per_layer, reduction)


def _reduce(per_layer: list[torch.Tensor], reduction: str) -> torch.Tensor:
    stacked = torch.stack(per_layer)
    return stacked.mean() if reduction == "mean" else stacked.sum()


def _layer_squared_error_sum(target: torch.Tensor, source: torch.Tensor, frame_chunk: int) -> torch.Tensor:
    """Sum over frames and HW x HW entries of (SS(target) - SS(source))^2 for one layer."""
    frames, positions, channels = target.shape
    if channels < positions:
        return _spatial_squared_error_sum_by_gram(target, source)
    total = target.new_zeros((), dtype=torch.float32)
    for start in range(0, frames, frame_chunk):
        chunk_target = target[start:start + frame_chunk]
        chunk_source = source[start:start + frame_chunk]
        if torch.is_grad_enabled() and chunk_target.requires_grad:
            total = total + checkpoint(_spatial_squared_error_sum, chunk_target, chunk_source,
                                       use_reentrant=False)
        else:
            total = total + _spatial_squared_error_sum(chunk_target, chunk_source)
    return total


def temporal_ssm_loss(
    *, target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor], reduction: str = "mean"
) -> torch.Tensor:
    """T-SSM loss between TS(target) and TS(source) over every layer, a float32 scalar.

    target_keys / source_keys: one (F, HW, C) tensor per layer, aligned by position. reduction
    "mean": per layer the MSE over the F x F entries, then the mean over layers; "sum": per layer
    exactly the paper's Eq. 15, ‖TS(target) − TS(source)‖²_F, summed over the layers.
    """
    _check_layers(target_keys, source_keys, reduction)
    per_layer = [
        F.mse_loss(temporal_self_similarity(keys=target), temporal_self_similarity(keys=source.detach()),
                   reduction=reduction)
        for target, source in zip(target_keys, source_keys)
    ]
    return _reduce(per_layer, reduction)
