"""`zeroscope-random`: ZeroScope v2 576w's architecture with seeded random weights, built offline.

The U-Net (1.41 B parameters), the VAE and a 1024-wide CLIP text encoder with the real
architecture (OpenCLIP ViT-H/14's text tower: 23 layers, 16 heads, 77 positions) are saved in fp16
in the hub layout and loaded back through the same `from_pretrained` code as the real ZeroScope, so a
GPU machine without network access runs the real `dmedit run` path at the real size (`make
bench-gpu`). The edits mean nothing; the time, memory and code path are the real ones. About 3.5 GB
on disk; building needs about 8 GB of host memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dmedit.models.backends.tiny import save_text_to_video

ZEROSCOPE_UNET_CONFIG = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=1024, attention_head_dim=64, norm_num_groups=32,
)
"""cerspense/zeroscope_v2_576w unet/config.json (diffusers' UNet3DConditionModel defaults but the
text width 1024 and heads of 64)."""
ZEROSCOPE_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, layers_per_block=2,
    sample_size=512, scaling_factor=0.18215,
)
ZEROSCOPE_TEXT_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                             projection_dim=1024, hidden_act="gelu")
ZEROSCOPE_TEXT_POSITIONS = 77


def build_zeroscope_random(*, path: Path) -> None:
    """Write the zeroscope-random folder at `path` (which must not exist yet). Deterministic: seed 0."""
    save_text_to_video(path=path, unet_config=ZEROSCOPE_UNET_CONFIG, vae_config=ZEROSCOPE_VAE_CONFIG,
                       text_config=ZEROSCOPE_TEXT_CONFIG, positions=ZEROSCOPE_TEXT_POSITIONS, dtype=torch.float16)
