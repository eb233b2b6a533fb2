"""LPIPS (Zhang et al. 2018, v0.1) with the AlexNet backbone, plus an offline tiny builder.

An LPIPS folder holds config.json (`{"model_type": "lpips", "backbone": "alexnet", "channels":
[64, 192, 384, 256, 256]}`) and model.safetensors with torchvision's AlexNet feature names
(`features.{0,3,6,8,10}.weight/bias`, the ImageNet weights) and the five LPIPS linear heads
(`lins.{0..4}.weight`, shape (1, C, 1, 1)). `dmedit.models.scorers.lpips_weights` writes it from the
two published files. The distance of two images in [-1, 1]: each of the five ReLU outputs is
unit-normalised over channels, the squared difference is weighted per channel by its head,
averaged over positions, and the five layers are summed (0 for identical images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dmedit.core.errors import InputError, ModelError
from dmedit.models.scorers import load_failure

ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
CONV_INDICES = (0, 3, 6, 8, 10)
"""Positions of AlexNet's convolutions in torchvision's `features` Sequential."""
TAP_INDICES = (1, 4, 7, 9, 11)
"""The ReLU outputs LPIPS compares (relu1 .. relu5)."""
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
"""LPIPS's input scaling layer: (x - SHIFT) / SCALE for x in [-1, 1]."""
MIN_SIZE = 32
"""The smallest frame side AlexNet's two max-pools accept."""
TINY_SEED = 0
TINY_CHANNELS = (8, 16, 16, 16, 16)


class LpipsNet(nn.Module):
    """AlexNet features with `channels` per convolution and one non-negative 1x1 head per tap."""

    def __init__(self, *, channels: Sequence[int]) -> None:
        super().__init__()
        c = list(channels)
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[0], c[1], kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[1], c[2], kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], kernel_size=3, padding=1), nn.ReLU(),
        )
        self.lins = nn.ModuleList(nn.Conv2d(width, 1, kernel_size=1, bias=False) for width in c)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> the five channel-normalised ReLU outputs."""
        hidden = (images - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            hidden = layer(hidden)
            if index in TAP_INDICES:
                outputs.append(hidden / (hidden.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return outputs

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Two (B, 3, H, W) batches in [-1, 1] -> (B,) LPIPS distances."""
        total = torch.zeros(first.shape[0], device=first.device)
        for head, tap_a, tap_b in zip(self.lins, self.taps(first), self.taps(second)):
            total = total + head((tap_a - tap_b).pow(2)).mean(dim=(1, 2, 3))
        return total


class LpipsScorer:
    """A loaded LPIPS network on `device`."""

    def __init__(self, *, net: LpipsNet, device: torch.device) -> None:
        self.net = net
        self.device = device

    @classmethod
    def load(cls, *, path: Path, device: torch.device) -> "LpipsScorer":
        """Load from a folder written by `save_lpips_folder`; failures raise ModelError."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if config.get("model_type") != "lpips" or config.get("backbone") != "alexnet":
                raise ModelError("config.json does not describe an LPIPS AlexNet (model_type lpips, backbone alexnet)")
            net = LpipsNet(channels=config["channels"])
            net.load_state_dict(load_file(path / "model.safetensors"), strict=True)
        except Exception as error:  # json, safetensors and torch each raise their own types
            raise load_failure(path=path, what="LPIPS network", error=error) from error
        return cls(net=net.to(device).eval(), device=device)

    @torch.no_grad()
    def distances(self, *, source: np.ndarray, edited: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Two (F, H, W, 3) uint8 RGB clips of one shape -> (F,) LPIPS distance of each frame pair."""
        if min(source.shape[1:3]) < MIN_SIZE:
            raise InputError(f"frames of {source.shape[2]}x{source.shape[1]} are too small for LPIPS "
                             f"(at least {MIN_SIZE}x{MIN_SIZE})")
        values = []
        for start in range(0, len(source), batch_size):
            first = _to_unit_range(frames=source[start:start + batch_size], device=self.device)
            second = _to_unit_range(frames=edited[start:start + batch_size], device=self.device)
            values.append(self.net(first, second).float().cpu())
        return torch.cat(values).numpy()


def _to_unit_range(*, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def save_lpips_folder(*, state: Mapping[str, torch.Tensor], channels: Sequence[int], path: Path) -> None:
    """Write config.json and model.safetensors; `state` must hold exactly LpipsNet's parameter names."""
    from safetensors.torch import save_file

    expected = set(LpipsNet(channels=channels).state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ModelError(f"LPIPS weights do not fit: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "lpips", "backbone": "alexnet", "channels": list(channels), "lpips_version": "0.1"}
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({name: tensor.detach().float().contiguous() for name, tensor in state.items()},
              str(path / "model.safetensors"))


def build_tiny_lpips(*, path: Path) -> None:
    """Write a random-weight LPIPS (seeded; AlexNet layout with TINY_CHANNELS, non-negative heads) at `path`."""
    torch.manual_seed(TINY_SEED)
    net = LpipsNet(channels=TINY_CHANNELS)
    with torch.no_grad():
        for head in net.lins:
            head.weight.abs_()
    save_lpips_folder(state=net.state_dict(), channels=TINY_CHANNELS, path=path)
