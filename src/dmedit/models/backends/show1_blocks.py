"""The down, mid and up blocks of Show-1's pixel-space video U-Nets (keyframes, interpolation, SR1).

Show-1 (showlab/Show-1) inflates DeepFloyd IF's image U-Net to video: every 2D layer of a block is
followed by a temporal one. A block layer is

    resnet (ResnetBlock2D, scale-shift time conditioning)  -> temp_conv (TemporalConvLayer, dropout 0.1)
    -> attention (added-KV attention: spatial self-attention and text cross-attention in one softmax)
    -> temp_attention (TransformerTemporalModel over the frames of each pixel)

and blocks without attention ("Resnet...Block3D") keep only the first two. Down- and up-sampling
are ResnetBlock2D(down=True / up=True). Module and state-dict names follow the reference code
(resnets.N, temp_convs.N, attentions.N, temp_attentions.N, downsamplers.0, upsamplers.0), so the
hub weights load with strict key matching.

Shapes inside the U-Net: hidden states (B*F, C, H, W), frames folded into the batch branch-major
(row b*F + f); time embedding (B*F, T); text states (B*F, L, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor2_0
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from dmedit.core.errors import ModelError

DOWN_BLOCK_TYPES = ("ResnetDownsampleBlock3D", "SimpleCrossAttnDownBlock3D")
UP_BLOCK_TYPES = ("ResnetUpsampleBlock3D", "SimpleCrossAttnUpBlock3D")
MID_BLOCK_TYPES = ("UNetMidBlock3DSimpleCrossAttn",)
TEMPORAL_CONV_DROPOUT = 0.1
TEMPORAL_CONV_GROUPS = 32


@dataclass(frozen=True)
class LayerSpec:
    """What every layer of one block shares (from the U-Net config)."""

    temb_channels: int
    eps: float
    act_fn: str
    groups: int
    time_scale_shift: str
    skip_time_act: bool
    output_scale_factor: float
    cross_attention_dim: int
    attention_head_dim: int
    only_cross_attention: bool
    cross_attention_norm: str | None


def resnet(*, spec: LayerSpec, in_channels: int, out_channels: int, up: bool = False,
           down: bool = False, output_scale_factor: float | None = None) -> ResnetBlock2D:
    """A ResnetBlock2D as Show-1 builds it (dropout 0, pre-norm)."""
    scale = spec.output_scale_factor if output_scale_factor is None else output_scale_factor
    return ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=spec.temb_channels,
        eps=spec.eps, groups=spec.groups, dropout=0.0, time_embedding_norm=spec.time_scale_shift,
        non_linearity=spec.act_fn, output_scale_factor=scale, pre_norm=True,
        skip_time_act=spec.skip_time_act, up=up, down=down,
    )


def temporal_conv(*, channels: int) -> TemporalConvLayer:
    """Four (3,1,1) convolutions over frames with dropout 0.1 (active in train() only)."""
    return TemporalConvLayer(channels, channels, dropout=TEMPORAL_CONV_DROPOUT,
                             norm_num_groups=TEMPORAL_CONV_GROUPS)


def spatial_attention(*, spec: LayerSpec, channels: int) -> Attention:
    """Added-KV attention: C/head_dim heads of head_dim; keys = [text keys; to_k(pixels)].

    Built with cross_attention_dim=None: the reference passes cross_attention_dim=channels, which
    gives the same to_k/to_v shapes; None marks the module as self-attention for key capture
    (to_k of the pixel states, (B*F, H*W, C)).
    """
    return Attention(
        query_dim=channels, cross_attention_dim=None, heads=channels // spec.attention_head_dim,
        dim_head=spec.attention_head_dim, added_kv_proj_dim=spec.cross_attention_dim,
        norm_num_groups=spec.groups, bias=True, upcast_softmax=True,
        only_cross_attention=spec.only_cross_attention,
        cross_attention_norm=spec.cross_attention_norm, processor=AttnAddedKVProcessor2_0(),
    )


def temporal_transformer(*, spec: LayerSpec, channels: int) -> TransformerTemporalModel:
    """Attention over frames. The reference calls TransformerTemporalModel(attention_head_dim,
    channels // attention_head_dim, ...), i.e. `attention_head_dim` heads (64 in the hub configs)
    of channels/64 dimensions each, not channels/64 heads of 64: both load the same weights."""
    return TransformerTemporalModel(
        num_attention_heads=spec.attention_head_dim,
        attention_head_dim=channels // spec.attention_head_dim, in_channels=channels,
        num_layers=1, cross_attention_dim=spec.cross_attention_dim, norm_num_groups=spec.groups,
    )


class Show1DownBlock(nn.Module):
    """ResnetDownsampleBlock3D (attention=False) or SimpleCrossAttnDownBlock3D (attention=True)."""

    def __init__(self, *, spec: LayerSpec, in_channels: int, out_channels: int, num_layers: int,
                 attention: bool, add_downsample: bool) -> None:
        super().__init__()
        self.has_cross_attention = attention
        self.resnets = nn.ModuleList(
            resnet(spec=spec, in_channels=in_channels if i == 0 else out_channels,
                   out_channels=out_channels) for i in range(num_layers))
        self.temp_convs = nn.ModuleList(temporal_conv(channels=out_channels) for _ in range(num_layers))
        count = num_layers if attention else 0
        self.attentions = nn.ModuleList(
            spatial_attention(spec=spec, channels=out_channels) for _ in range(count))
        self.temp_attentions = nn.ModuleList(
            temporal_transformer(spec=spec, channels=out_channels) for _ in range(count))
        self.downsamplers = nn.ModuleList(
            [resnet(spec=spec, in_channels=out_channels, out_channels=out_channels, down=True)]
        ) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None, num_frames: int = 1,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B*F,C,H,W) -> (B*F,C',H/2,W/2) and the skip states, one per layer (+ the downsampled)."""
        outputs = ()
        for index, (res, conv) in enumerate(zip(self.resnets, self.temp_convs)):
            hidden_states = conv(res(hidden_states, temb), num_frames=num_frames)
            if self.has_cross_attention:
                hidden_states = _attend(self, index, hidden_states, encoder_hidden_states, num_frames)
            outputs = outputs + (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states, temb)
            outputs = outputs + (hidden_states,)
        return hidden_states, outputs


class Show1UpBlock(nn.Module):
    """ResnetUpsampleBlock3D (attention=False) or SimpleCrossAttnUpBlock3D (attention=True)."""

    def __init__(self, *, spec: LayerSpec, in_channels: int, prev_output_channel: int,
                 out_channels: int, num_layers: int, attention: bool, add_upsample: bool) -> None:
        super().__init__()
        self.has_cross_attention = attention
        self.resnets = nn.ModuleList(
            resnet(spec=spec,
                   in_channels=(prev_output_channel if i == 0 else out_channels)
                   + (in_channels if i == num_layers - 1 else out_channels),
                   out_channels=out_channels) for i in range(num_layers))
        self.temp_convs = nn.ModuleList(temporal_conv(channels=out_channels) for _ in range(num_layers))
        count = num_layers if attention else 0
        self.attentions = nn.ModuleList(
            spatial_attention(spec=spec, channels=out_channels) for _ in range(count))
        self.temp_attentions = nn.ModuleList(
            temporal_transformer(spec=spec, channels=out_channels) for _ in range(count))
        self.upsamplers = nn.ModuleList(
            [resnet(spec=spec, in_channels=out_channels, out_channels=out_channels, up=True)]
        ) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        """(B*F,C,H,W) + skips (last first) -> (B*F,C',2H,2W) (or H,W in the last block)."""
        for index, (res, conv) in enumerate(zip(self.resnets, self.temp_convs)):
            skip = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = conv(res(hidden_states, temb), num_frames=num_frames)
            if self.has_cross_attention:
                hidden_states = _attend(self, index, hidden_states, encoder_hidden_states, num_frames)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, temb)
        return hidden_states


class Show1MidBlock(nn.Module):
    """UNetMidBlock3DSimpleCrossAttn: resnet, temp_conv, then (attention, temp_attention, resnet,
    temp_conv) per layer; resnets use the mid block's own output scale factor."""

    def __init__(self, *, spec: LayerSpec, channels: int, output_scale_factor: float,
                 num_layers: int = 1) -> None:
        super().__init__()
        self.has_cross_attention = True
        self.resnets = nn.ModuleList(
            resnet(spec=spec, in_channels=channels, out_channels=channels,
                   output_scale_factor=output_scale_factor) for _ in range(num_layers + 1))
        self.temp_convs = nn.ModuleList(temporal_conv(channels=channels) for _ in range(num_layers + 1))
        self.attentions = nn.ModuleList(
            spatial_attention(spec=spec, channels=channels) for _ in range(num_layers))
        self.temp_attentions = nn.ModuleList(
            temporal_transformer(spec=spec, channels=channels) for _ in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        """(B*F,C,H,W) -> (B*F,C,H,W)."""
        hidden_states = self.temp_convs[0](self.resnets[0](hidden_states, temb), num_frames=num_frames)
        for index in range(len(self.attentions)):
            hidden_states = _attend(self, index, hidden_states, encoder_hidden_states, num_frames)
            hidden_states = self.resnets[index + 1](hidden_states, temb)
            hidden_states = self.temp_convs[index + 1](hidden_states, num_frames=num_frames)
        return hidden_states


def _attend(block: nn.Module, index: int, hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None, num_frames: int) -> torch.Tensor:
    """Spatial added-KV attention then temporal attention of layer `index` of `block`."""
    hidden_states = block.attentions[index](hidden_states, encoder_hidden_states=encoder_hidden_states)
    return block.temp_attentions[index](hidden_states, num_frames=num_frames).sample


def down_block(*, block_type: str, spec: LayerSpec, in_channels: int, out_channels: int,
               num_layers: int, add_downsample: bool) -> Show1DownBlock:
    """The down block named by a config's `down_block_types` entry."""
    if block_type not in DOWN_BLOCK_TYPES:
        raise ModelError(f"unsupported Show-1 down block type {block_type!r}; "
                         f"expected one of {', '.join(DOWN_BLOCK_TYPES)}")
    return Show1DownBlock(spec=spec, in_channels=in_channels, out_channels=out_channels,
                          num_layers=num_layers, attention=block_type == DOWN_BLOCK_TYPES[1],
                          add_downsample=add_downsample)


def up_block(*, block_type: str, spec: LayerSpec, in_channels: int, prev_output_channel: int,
             out_channels: int, num_layers: int, add_upsample: bool) -> Show1UpBlock:
    """The up block named by a config's `up_block_types` entry."""
    if block_type not in UP_BLOCK_TYPES:
        raise ModelError(f"unsupported Show-1 up block type {block_type!r}; "
                         f"expected one of {', '.join(UP_BLOCK_TYPES)}")
    return Show1UpBlock(spec=spec, in_channels=in_channels, prev_output_channel=prev_output_channel,
                        out_channels=out_channels, num_layers=num_layers,
                        attention=block_type == UP_BLOCK_TYPES[1], add_upsample=add_upsample)
