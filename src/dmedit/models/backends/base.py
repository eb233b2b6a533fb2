"""The small protocols every video-model family (VideoBackend) and detector family (BoxDetector) implement.

Shapes (B = batch of branches, F = frames, C = latent channels, h, w = latent grid = H/8, W/8):
- frames: (F, 3, H, W) float32 in [-1, 1]
- latents: (B, C, F, h, w), already multiplied by the VAE's `scaling_factor`
- text embeddings: (B, L, D)
- timesteps: (B,) long
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

Box = tuple[float, float, float, float]


class VideoBackend(Protocol):
    unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    def encode_video(self, *, frames: torch.Tensor) -> torch.Tensor:
        """(F,3,H,W) in [-1,1] -> (1,C,F,h,w) latents in `dtype` on `device` (distribution mode)."""
        ...

    def decode_latents(self, *, latents: torch.Tensor) -> torch.Tensor:
        """(1,C,F,h,w) -> (F,3,H,W) float32 in [-1,1] on the CPU, decoded in frame chunks."""
        ...

    def encode_prompts(self, *, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts ("" is the null prompt) -> (P,L,D) embeddings in `dtype` on `device`."""
        ...

    def predict_noise(
        self, *, latents: torch.Tensor, timesteps: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """epsilon prediction of the U-Net, (B,C,F,h,w)."""
        ...

    def add_noise(
        self, *, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0) through the scheduler."""
        ...


@dataclass(frozen=True)
class Detection:
    """One box found in one frame; `box` is (x0, y0, x1, y1) in source pixels, clipped to the frame."""

    frame: int
    box: Box
    score: float
    label: str


@dataclass(frozen=True)
class DetectionRun:
    """All detections of one run, per frame, and the best box score seen (passing or not)."""

    detections: list[list[Detection]]
    best_score: float


class BoxDetector(Protocol):
    """Boxes of the objects `prompt` names in each of (T,H,W,3) uint8 RGB frames."""

    def run(
        self, *, frames: np.ndarray, prompt: str, box_threshold: float, text_threshold: float
    ) -> DetectionRun: ...
