"""Grid point tracks from EfficientLoFTR matches between neighbouring frames, plus an offline tiny builder.

The paper's Motion-Fidelity uses CoTracker; dmedit uses a simpler learned tracker whose real
weights load through transformers: EfficientLoFTR (Wang et al. 2024, zju-community/efficientloftr,
Apache-2.0), a semi-dense matcher. Frames t and t+1 are matched (mutual nearest coarse cells
on an 8-pixel grid, refined to sub-pixel); each track moves by the Gaussian-weighted mean
displacement of the matches around it (sigma: one coarse cell). Unlike CoTracker it chains
frame pairs, so tracks drift over long clips and occlusions are not modelled.

A tracker folder has the hub layout of zju-community/efficientloftr: config.json,
model.safetensors and preprocessor_config.json (its size sets the working resolution: the
frame's long side is scaled to its longer edge, 640, both sides rounded to multiples of 32).

Only the model's feature extraction and coarse matching are used from transformers; pairing
and fine refinement are done here, after the original zju3dv/EfficientLoFTR, because
`EfficientLoFTRForKeypointMatching.forward` in transformers 5.24 (a) pairs its k-th image-0
point (the cell matched by image-1 cell k) with its k-th image-1 point (the cell matched by
image-0 cell k), two different matches unless k maps to itself, and (b) gathers the first fine
stage's window offset along the wrong axis, so every point gets the window's corner offset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching

from dmedit.core.errors import ModelError
from dmedit.models.scorers import load_failure

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
SIZE_MULTIPLE = 32
DEFAULT_LONG_SIDE = 640
COARSE_CELL = 8
"""EfficientLoFTR's coarse grid step in working pixels."""
TINY_SEED = 0
TINY_LONG_SIDE = 64


class MatchTracker:
    """A loaded EfficientLoFTR on `device`; `long_side` is the working resolution's longer side."""

    def __init__(self, *, model: EfficientLoFTRForKeypointMatching, long_side: int, device: torch.device) -> None:
        self.model = model
        self.long_side = long_side
        self.device = device

    @classmethod
    def load(cls, *, path: Path, device: torch.device) -> "MatchTracker":
        """Load from a local folder (safetensors only, never the network); failures raise ModelError."""
        path = Path(path)
        transformers.utils.logging.disable_progress_bar()
        try:
            model = EfficientLoFTRForKeypointMatching.from_pretrained(
                path, use_safetensors=True, local_files_only=True, dtype=torch.float32)
            long_side = _long_side(path=path)
        except Exception as error:  # transformers, json and safetensors each raise their own types
            raise load_failure(path=path, what="EfficientLoFTR tracker", error=error) from error
        for name in ("efficientloftr", "refinement_layer", "_coarse_matching"):
            if not hasattr(model, name):
                raise ModelError(f"{path}: this transformers ({transformers.__version__}) lacks EfficientLoFTR's "
                                 f"{name!r}, which dmedit's tracker uses (written against 5.24)")
        return cls(model=model.to(device).eval(), long_side=long_side, device=device)

    def grid_tracks(self, *, frames: np.ndarray, grid_size: int, batch_size: int = 4) -> np.ndarray:
        """(F, H, W, 3) uint8 RGB -> (N, F, 2) float64 x, y tracks (source pixels) of an N = grid_size² grid
        placed on the first frame (cell centres). A frame pair without any match leaves the tracks still."""
        height, width = frames.shape[1:3]
        centres_x = (np.arange(grid_size) + 0.5) * width / grid_size
        centres_y = (np.arange(grid_size) + 0.5) * height / grid_size
        points = np.stack(np.meshgrid(centres_x, centres_y), axis=-1).reshape(-1, 2)
        tracks = [points]
        for first, second in self.frame_pair_matches(frames=frames, batch_size=batch_size):
            points = _moved(points=points, first=first, second=second, sigma=COARSE_CELL * self._source_scale(frames))
            points = np.clip(points, 0.0, [width - 1.0, height - 1.0])
            tracks.append(points)
        return np.stack(tracks, axis=1)

    @torch.no_grad()
    def frame_pair_matches(self, *, frames: np.ndarray, batch_size: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
        """(F, H, W, 3) uint8 -> for each pair (t, t+1): matched points (K, 2) in frame t and (K, 2) in t+1,
        x, y in source pixels."""
        height, width = frames.shape[1:3]
        work_h, work_w = working_size(height=height, width=width, long_side=self.long_side)
        gray = _gray(frames=frames, size=(work_h, work_w), device=self.device)
        scale = np.array([width / work_w, height / work_h])
        pairs = []
        for start in range(0, len(frames) - 1, batch_size):
            stop = min(start + batch_size, len(frames) - 1)
            pixel_values = torch.stack([gray[start:stop], gray[start + 1:stop + 1]], dim=1)
            for first, second in _matches(model=self.model, pixel_values=pixel_values):
                pairs.append((first * scale, second * scale))
        return pairs

    def _source_scale(self, frames: np.ndarray) -> float:
        height, width = frames.shape[1:3]
        return max(height, width) / max(working_size(height=height, width=width, long_side=self.long_side))


def working_size(*, height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side scaled to `long_side`, both rounded to multiples of 32 (at least 32)."""
    factor = long_side / max(height, width)
    return tuple(max(SIZE_MULTIPLE, round(side * factor / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in (height, width))


def _long_side(*, path: Path) -> int:
    config_file = path / "preprocessor_config.json"
    if not config_file.is_file():
        return DEFAULT_LONG_SIDE
    size = json.loads(config_file.read_text(encoding="utf-8")).get("size") or {}
    return int(max(size.get("height", DEFAULT_LONG_SIDE), size.get("width", DEFAULT_LONG_SIDE)))


def _gray(*, frames: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 1, h, w) float32 grey levels in [0, 1] at the working size."""
    rgb = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
    gray = (rgb * torch.tensor(GRAY_WEIGHTS, device=device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return torch.nn.functional.interpolate(gray, size=size, mode="bilinear", antialias=True, align_corners=False)


def _matches(*, model: EfficientLoFTRForKeypointMatching,
             pixel_values: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B, 2, 1, h, w) image pairs -> per pair, matched points (K, 2) in image 0 and (K, 2) in image 1
    (working pixels): every image-0 coarse cell with a mutual match, refined by the two fine stages."""
    batch_size, _, _, height, width = pixel_values.shape
    features = model.efficientloftr(pixel_values).feature_maps
    coarse = features[0]
    coarse_height, coarse_width = coarse.shape[-2:]
    coarse_scale = height / coarse_height
    _, scores, matched = model._coarse_matching(coarse, coarse_scale)
    cells = coarse_height * coarse_width
    own = torch.arange(cells, device=matched.device).expand(batch_size, cells)
    indices = torch.stack([own, matched[:, 1].clamp(min=0)], dim=1)
    valid = (matched[:, 1] > -1) & (scores[:, 1] > 0)
    coarse_points = torch.stack([indices % coarse_width, indices // coarse_width], dim=-1).float() * coarse_scale
    fine_0, fine_1 = model.refinement_layer(coarse / model.config.hidden_size**0.5, features[1:])
    batch = torch.arange(batch_size, device=indices.device)[:, None]
    fine_0, fine_1 = fine_0[batch, indices[:, 0]], fine_1[batch, indices[:, 1]]
    fine_scale = height / int(coarse_height * coarse_scale)
    first, second = _refine(config=model.config, fine_0=fine_0, fine_1=fine_1, coarse_points=coarse_points,
                            fine_scale=fine_scale)
    return [(first[b][valid[b]].double().cpu().numpy(), second[b][valid[b]].double().cpu().numpy())
            for b in range(batch_size)]


def _refine(*, config: EfficientLoFTRConfig, fine_0: torch.Tensor, fine_1: torch.Tensor,
            coarse_points: torch.Tensor, fine_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EfficientLoFTR's two fine stages (as in zju3dv/EfficientLoFTR's FineMatching).

    fine_0: (B, N, W*W, C) window features around each image-0 cell; fine_1: (B, N, (W+2)², C)
    around its matched image-1 cell; coarse_points: (B, 2, N, 2) x, y of both cells.
    Returns the refined (B, N, 2) points in image 0 and image 1.
    """
    batch_size, count, window, channels = fine_0.shape
    side = round(window**0.5)
    slice_dim = config.fine_matching_slice_dim
    first_0, second_0 = fine_0[..., :channels - slice_dim], fine_0[..., channels - slice_dim:]
    first_1, second_1 = fine_1[..., :channels - slice_dim], fine_1[..., channels - slice_dim:]
    similarity = (first_0 / channels**0.5) @ (first_1 / channels**0.5).transpose(-1, -2)
    confidence = similarity.softmax(dim=2) * similarity.softmax(dim=3)
    confidence = confidence.reshape(batch_size, count, window, side + 2, side + 2)[..., 1:-1, 1:-1]
    best = confidence.reshape(batch_size, count, window * window).argmax(dim=-1)
    index_0, index_1 = best // window, best % window
    steps = torch.arange(side, device=fine_0.device, dtype=fine_0.dtype) - side // 2 + 0.5
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), dim=-1).reshape(window, 2)
    point_0 = coarse_points[:, 0] + offsets[index_0] * fine_scale
    point_1 = coarse_points[:, 1] + offsets[index_1] * fine_scale
    second = second_0 @ (second_1 / slice_dim**0.5).transpose(-1, -2)
    second = second.reshape(batch_size, count, window, side + 2, side + 2)
    shifts = torch.tensor([-1, 0, 1], device=fine_0.device)
    rows = (index_1 // side)[..., None, None] + shifts.view(1, 1, 3, 1)
    cols = (index_1 % side)[..., None, None] + shifts.view(1, 1, 1, 3)
    batch = torch.arange(batch_size, device=fine_0.device).view(batch_size, 1, 1, 1)
    match = torch.arange(count, device=fine_0.device).view(1, count, 1, 1)
    heat = second[batch, match, index_0[..., None, None], rows, cols].reshape(batch_size, count, 9)
    heat = (heat / config.fine_matching_regress_temperature).softmax(dim=-1).reshape(batch_size, count, 3, 3)
    expected = torch.stack([(heat.sum(dim=2) * shifts).sum(dim=-1), (heat.sum(dim=3) * shifts).sum(dim=-1)], dim=-1)
    return point_0, point_1 + expected * fine_scale


def _moved(*, points: np.ndarray, first: np.ndarray, second: np.ndarray, sigma: float) -> np.ndarray:
    """Track positions (N, 2) moved by the Gaussian-weighted (sigma px) mean displacement of the matches
    first -> second (K, 2); unchanged when K is 0."""
    if len(first) == 0:
        return points
    squared = ((points[:, None, :] - first[None, :, :]) ** 2).sum(axis=-1)
    logits = -squared / (2.0 * sigma**2)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return points + weights @ (second - first)


def tiny_config() -> EfficientLoFTRConfig:
    """An EfficientLoFTR of about 75k parameters that always matches (no threshold, no border removal)."""
    return EfficientLoFTRConfig(
        stage_num_blocks=[1, 1, 1, 1], out_features=[16, 16, 32, 32], hidden_size=32, num_attention_layers=1,
        num_attention_heads=8, coarse_matching_threshold=0.0, coarse_matching_border_removal=0,
    )


def build_tiny_tracker(*, path: Path) -> None:
    """Write a random-weight EfficientLoFTR (seeded) in the hub layout at `path`, working at 64 px."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(TINY_SEED)
    model = EfficientLoFTRForKeypointMatching(tiny_config())
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.reset_parameters()  # PyTorch's fan-in init: transformers' std 0.02 gives flat features
    model.save_pretrained(path, safe_serialization=True)
    preprocessor = {"image_processor_type": "EfficientLoFTRImageProcessor", "do_grayscale": True,
                    "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "resample": 2,
                    "size": {"height": TINY_LONG_SIDE, "width": TINY_LONG_SIDE}}
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
