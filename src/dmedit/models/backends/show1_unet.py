"""Show-1's pixel-space video U-Net (keyframes, temporal interpolation, super-resolution 1).

One class serves the three stages, as in the reference (showlab/Show-1,
showone/models/unet_3d_condition.py); their hub configs differ only in values:

- keyframes (show-1-base): in 3 (noisy frames), out 6 (learned variance: ε is channels 0-2).
- interpolation (show-1-interpolation): in 7 = 3 noisy + 3 conditioning frames + 1 mask
  (from the reference pipeline; the hub config itself was not readable here).
- SR1 (show-1-sr1): in 6 = 3 noisy + 3 upsampled low-res frames, out 6, and `class_labels` =
  the noise level of the low-res frames (class_embed_type "timestep").

The hub configs name the class "UNet3DConditionModel"; `from_pretrained` of this class accepts
them (ConfigMixin ignores `_class_name`). Conditioning: T5-XXL states (B, L, 4096) are projected
to `cross_attention_dim` (encoder_hid_proj) and also pooled into the time embedding
(add_embedding, addition_embed_type "text").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TextTimeEmbedding, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from torch import nn

from dmedit.models.backends.show1_blocks import (
    MID_BLOCK_TYPES,
    LayerSpec,
    Show1MidBlock,
    down_block,
    up_block,
)
from dmedit.core.errors import ModelError

KEY_LAYER_PATTERN = "up_blocks.*.attentions.*"
"""fnmatch pattern of the decoder's spatial (added-KV) attention: to_k gives (B*F, H*W, C) keys."""


def _per_block(value: Any, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


class Show1UNet3DConditionModel(ModelMixin, ConfigMixin):
    """Video U-Net of Show-1's pixel stages; config keys are those of the hub's unet/config.json.

    forward: sample (B, C_in, F, H, W), timestep (B,) or scalar, encoder_hidden_states
    (B, L, encoder_hid_dim) -> `.sample` (B, C_out, F, H, W).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self, *, sample_size: int | None = None, in_channels: int = 3, out_channels: int = 6,
        center_input_sample: bool = False, flip_sin_to_cos: bool = True, freq_shift: int = 0,
        down_block_types: Sequence[str] = ("ResnetDownsampleBlock3D",) + ("SimpleCrossAttnDownBlock3D",) * 3,
        mid_block_type: str | None = "UNetMidBlock3DSimpleCrossAttn",
        up_block_types: Sequence[str] = ("SimpleCrossAttnUpBlock3D",) * 3 + ("ResnetUpsampleBlock3D",),
        only_cross_attention: bool = False, block_out_channels: Sequence[int] = (320, 640, 960, 1280),
        layers_per_block: int | Sequence[int] = 3, downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0, act_fn: str = "gelu", norm_num_groups: int = 32,
        norm_eps: float = 1e-5, cross_attention_dim: int = 1280, transformer_layers_per_block: int = 1,
        encoder_hid_dim: int | None = 4096, encoder_hid_dim_type: str | None = "text_proj",
        attention_head_dim: int | Sequence[int] = 64, num_attention_heads: int | None = None,
        dual_cross_attention: bool = False, use_linear_projection: bool = False,
        class_embed_type: str | None = None, addition_embed_type: str | None = "text",
        addition_time_embed_dim: int | None = None, num_class_embeds: int | None = None,
        upcast_attention: bool = False, resnet_time_scale_shift: str = "scale_shift",
        resnet_skip_time_act: bool = False, resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional", time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None, timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None, conv_in_kernel: int = 3, conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        class_embeddings_concat: bool = False, mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = "group_norm", addition_embed_type_num_heads: int = 64,
        transfromer_in_opt: bool = False,
    ) -> None:
        super().__init__()
        _check_supported(self.config)
        channels = list(block_out_channels)
        time_embed_dim = time_embedding_dim or channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8, attention_head_dim=64, in_channels=channels[0], num_layers=1,
        ) if transfromer_in_opt else None
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act,
                                                cond_proj_dim=time_cond_proj_dim)
        self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim) if encoder_hid_dim else None
        self.class_embedding = TimestepEmbedding(
            channels[0], time_embed_dim, act_fn=act_fn) if class_embed_type == "timestep" else None
        if addition_embed_type == "text":
            self.add_embedding = TextTimeEmbedding(encoder_hid_dim or cross_attention_dim, time_embed_dim,
                                                   num_heads=addition_embed_type_num_heads)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn else None
        self._build_blocks(channels=channels, time_embed_dim=time_embed_dim)
        self.conv_norm_out = nn.GroupNorm(num_channels=channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(channels[0], out_channels, conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    def _spec(self, *, index: int, time_embed_dim: int, only_cross: bool,
              head_index: int | None = None) -> LayerSpec:
        """Layer settings of block `index`; head_index: where attention_head_dim is read (the
        reference reads it unreversed for up block i, every other list reversed)."""
        config = self.config
        count = len(config.down_block_types)
        head_index = index if head_index is None else head_index
        return LayerSpec(
            temb_channels=time_embed_dim, eps=config.norm_eps, act_fn=config.act_fn,
            groups=config.norm_num_groups, time_scale_shift=config.resnet_time_scale_shift,
            skip_time_act=config.resnet_skip_time_act,
            output_scale_factor=config.resnet_out_scale_factor,
            cross_attention_dim=_per_block(config.cross_attention_dim, count)[index],
            attention_head_dim=_per_block(config.attention_head_dim, count)[head_index],
            only_cross_attention=only_cross, cross_attention_norm=config.cross_attention_norm,
        )

    def _build_blocks(self, *, channels: list[int], time_embed_dim: int) -> None:
        config = self.config
        count = len(channels)
        layers = _per_block(config.layers_per_block, count)
        only_cross = _per_block(config.only_cross_attention, count)
        self.down_blocks = nn.ModuleList(
            down_block(block_type=kind, spec=self._spec(index=i, time_embed_dim=time_embed_dim,
                                                        only_cross=only_cross[i]),
                       in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                       num_layers=layers[i], add_downsample=i < count - 1)
            for i, kind in enumerate(config.down_block_types))
        mid_only_cross = config.mid_block_only_cross_attention
        if mid_only_cross is None:
            mid_only_cross = config.only_cross_attention if isinstance(config.only_cross_attention, bool) else False
        self.mid_block = Show1MidBlock(
            spec=self._spec(index=count - 1, time_embed_dim=time_embed_dim, only_cross=mid_only_cross),
            channels=channels[-1], output_scale_factor=config.mid_block_scale_factor,
        ) if config.mid_block_type is not None else None
        reversed_channels = channels[::-1]
        up_blocks = []
        for i, kind in enumerate(config.up_block_types):
            index = count - 1 - i
            up_blocks.append(up_block(
                block_type=kind, spec=self._spec(index=index, time_embed_dim=time_embed_dim,
                                                 only_cross=only_cross[index], head_index=i),
                in_channels=reversed_channels[min(i + 1, count - 1)],
                prev_output_channel=reversed_channels[max(i - 1, 0)],
                out_channels=reversed_channels[i], num_layers=layers[index] + 1,
                add_upsample=i < count - 1))
        self.up_blocks = nn.ModuleList(up_blocks)

    def _embeddings(self, *, sample: torch.Tensor, timestep: torch.Tensor | float,
                    encoder_hidden_states: torch.Tensor, class_labels: torch.Tensor | None,
                    timestep_cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Time(+class+text) embedding (B, T) and projected text states (B, L, D)."""
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype), timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ModelError("this Show-1 U-Net (class_embed_type 'timestep', e.g. SR1) needs "
                                 "class_labels: the noise level of the low-resolution frames")
            labels = torch.as_tensor(class_labels, device=sample.device).reshape(-1).expand(sample.shape[0])
            emb = emb + self.class_embedding(self.time_proj(labels).to(sample.dtype)).to(sample.dtype)
        if self.config.addition_embed_type == "text":
            emb = emb + self.add_embedding(encoder_hidden_states)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        if self.encoder_hid_proj is not None:
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)
        return emb, encoder_hidden_states

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor, class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None, return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """(B,C_in,F,H,W), t (B,) or scalar, text (B,L,encoder_hid_dim) -> (B,C_out,F,H,W).

        class_labels (B,) or scalar: the low-res noise level, required when class_embed_type is
        "timestep" (SR1). H and W must be divisible by 2**(number of blocks - 1).
        """
        batch, _, num_frames, height, width = sample.shape
        factor = 2 ** (len(self.up_blocks) - 1)
        if height % factor or width % factor:
            raise ModelError(f"Show-1 U-Net input {height}x{width} is not divisible by {factor}")
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb, text = self._embeddings(sample=sample, timestep=timestep,
                                     encoder_hidden_states=encoder_hidden_states,
                                     class_labels=class_labels, timestep_cond=timestep_cond)
        emb = emb.repeat_interleave(num_frames, dim=0)
        text = text.repeat_interleave(num_frames, dim=0)
        hidden = sample.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, -1, height, width)
        hidden = self.conv_in(hidden)
        if self.transformer_in is not None:
            hidden = self.transformer_in(hidden, num_frames=num_frames).sample
        skips = (hidden,)
        for block in self.down_blocks:
            hidden, states = block(hidden, emb, encoder_hidden_states=text, num_frames=num_frames)
            skips = skips + states
        if self.mid_block is not None:
            hidden = self.mid_block(hidden, emb, encoder_hidden_states=text, num_frames=num_frames)
        for block in self.up_blocks:
            count = len(block.resnets)
            hidden = block(hidden, skips[-count:], emb, encoder_hidden_states=text, num_frames=num_frames)
            skips = skips[:-count]
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        out = hidden.reshape(batch, num_frames, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)


def load_strict(*, path: str | os.PathLike, **kwargs: Any) -> Show1UNet3DConditionModel:
    """`from_pretrained(path, **kwargs)` that refuses a checkpoint whose tensor names differ from
    the model's. diffusers itself only warns: missing weights would stay random, extra ones unused.
    ModelError lists the first differing names (or the loader's first line for other failures)."""
    try:
        model, info = Show1UNet3DConditionModel.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelError(f"{path}: cannot load the Show-1 U-Net: {reason}") from error
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = list(info.get(kind) or ())
        if names:
            shown = ", ".join(map(str, names[:3])) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ModelError(f"{path}: Show-1 U-Net checkpoint does not match its config "
                             f"({kind.replace('_', ' ')}: {shown})")
    return model


def split_learned_variance(*, prediction: torch.Tensor, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2*channels, F, H, W) -> ε (B, channels, F, H, W) and the variance values (same shape)."""
    if prediction.shape[1] != 2 * channels:
        raise ModelError(f"expected a learned-variance prediction with {2 * channels} channels, "
                         f"got {prediction.shape[1]}")
    epsilon, variance = prediction.split(channels, dim=1)
    return epsilon, variance


_SUPPORTED = {
    "time_embedding_type": ("positional",), "encoder_hid_dim_type": ("text_proj", None),
    "class_embed_type": ("timestep", None), "addition_embed_type": ("text", None),
    "mid_block_type": MID_BLOCK_TYPES + (None,), "num_attention_heads": (None,),
    "dual_cross_attention": (False,), "use_linear_projection": (False,), "upcast_attention": (False,),
    "class_embeddings_concat": (False,), "num_class_embeds": (None,), "transformer_layers_per_block": (1,),
}


def _check_supported(config: Any) -> None:
    """ModelError naming the first config value this class does not build (Show-1 uses none)."""
    for key, allowed in _SUPPORTED.items():
        if config[key] not in allowed:
            raise ModelError(f"Show-1 U-Net config {key}={config[key]!r} is not supported "
                             f"(supported: {', '.join(map(repr, allowed))})")
    counts = {len(config[key]) for key in ("down_block_types", "block_out_channels", "up_block_types")}
    if len(counts) != 1:
        raise ModelError("Show-1 U-Net config needs as many down/up block types as block_out_channels")


# Full-size configurations: the values of the hub's unet/config.json files (read from the hub
# pages of showlab/show-1-base and show-1-sr1). Keys the pages did not show are marked: they
# follow DeepFloyd IF's conversion rules (scripts/convert_if.py in diffusers), which Show-1's
# stages inherit; none of them changes a state-dict key name.
BASE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=6, block_out_channels=(320, 640, 960, 1280),
    down_block_types=("ResnetDownsampleBlock3D",) + ("SimpleCrossAttnDownBlock3D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock3D",) * 3 + ("ResnetUpsampleBlock3D",),  # inferred
    mid_block_type="UNetMidBlock3DSimpleCrossAttn", layers_per_block=3, attention_head_dim=64,
    cross_attention_dim=1280, cross_attention_norm="group_norm", encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=64,
    act_fn="gelu", norm_num_groups=32, norm_eps=1e-5, resnet_time_scale_shift="scale_shift",
    resnet_skip_time_act=False, resnet_out_scale_factor=1.0, mid_block_scale_factor=1.0,
    class_embed_type=None, time_embedding_act_fn=None,  # inferred: IF stage I sets none
)
INTERPOLATION_CONFIG = {**BASE_CONFIG, "in_channels": 7}
"""Inferred from the reference pipeline (3 noisy + 3 conditioning frames + 1 mask channel)."""
SR1_CONFIG = dict(
    sample_size=None, in_channels=6, out_channels=6, block_out_channels=(128, 256, 512, 768, 768),
    down_block_types=("ResnetDownsampleBlock3D",) * 3 + ("SimpleCrossAttnDownBlock3D",) * 2,
    up_block_types=("SimpleCrossAttnUpBlock3D",) * 2 + ("ResnetUpsampleBlock3D",) * 3,  # inferred
    mid_block_type="UNetMidBlock3DSimpleCrossAttn", layers_per_block=(2, 2, 3, 4, 2),
    attention_head_dim=64, cross_attention_dim=768, cross_attention_norm="group_norm",
    encoder_hid_dim=4096, encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=64, act_fn="gelu", norm_num_groups=32, norm_eps=1e-5,
    resnet_time_scale_shift="scale_shift", resnet_skip_time_act=True,
    resnet_out_scale_factor=1.4142271248762552, mid_block_scale_factor=1.4142271248762552,
    class_embed_type="timestep",
    time_embedding_act_fn="gelu", time_embedding_dim=768,  # inferred: IF super-resolution rules
)

# Tiny random-weight configurations of the three stages (build in well under a second; channels
# are multiples of 32 for the temporal convolutions' 32 groups). attention_head_dim 16 makes the
# temporal split (16 heads of C/16) differ from the transposed one (C/16 heads of 16) at C=32, 64.
TINY_TEXT_DIM = 32
TINY_BASE_CONFIG = dict(
    sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64),
    down_block_types=("ResnetDownsampleBlock3D", "SimpleCrossAttnDownBlock3D"),
    up_block_types=("SimpleCrossAttnUpBlock3D", "ResnetUpsampleBlock3D"),
    mid_block_type="UNetMidBlock3DSimpleCrossAttn", layers_per_block=1, attention_head_dim=16,
    cross_attention_dim=64, cross_attention_norm="group_norm", encoder_hid_dim=TINY_TEXT_DIM,
    encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=4,
    act_fn="gelu", norm_num_groups=32, resnet_time_scale_shift="scale_shift",
    time_embedding_act_fn=None,
)
TINY_INTERPOLATION_CONFIG = {**TINY_BASE_CONFIG, "in_channels": 7}
TINY_SR1_CONFIG = {
    **TINY_BASE_CONFIG, "in_channels": 6, "block_out_channels": (32, 64, 64),
    "down_block_types": ("ResnetDownsampleBlock3D",) * 2 + ("SimpleCrossAttnDownBlock3D",),
    "up_block_types": ("SimpleCrossAttnUpBlock3D",) + ("ResnetUpsampleBlock3D",) * 2,
    "layers_per_block": (1, 2, 1), "class_embed_type": "timestep",
    "resnet_skip_time_act": True, "resnet_out_scale_factor": 1 / 0.7071,
    "mid_block_scale_factor": 1 / 0.7071, "time_embedding_act_fn": "gelu", "time_embedding_dim": 64,
}
