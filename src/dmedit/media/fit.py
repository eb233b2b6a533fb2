"""Frames meeting the model: the fit of source frames to the model's size (crop, pad, stretch)
with a mapping back to source pixels, the model tensors and their inverse, and compositing.

Frames are (T,H,W,3) uint8 RGB; masks (T,H,W) float in [0,1]; model tensors (T,3,h,w) float32 in
[-1,1]. Every conversion here has its inverse beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from dmedit.core.errors import UsageError

if TYPE_CHECKING:
    import torch

FIT_MODES = ("crop", "pad", "stretch")


@dataclass(frozen=True)
class FitMapping:
    """Source pixels `source_box` (x, y, width, height) fill model pixels `model_box`.

    crop: source_box is the crop with the model's aspect (centred, or on a focus box), model_box
    the whole model frame.
    pad: source_box is the whole source, model_box the letterboxed area (the rest is black).
    stretch: both boxes are whole frames.
    """

    mode: str
    source_width: int
    source_height: int
    model_width: int
    model_height: int
    source_box: tuple[int, int, int, int]
    model_box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {**asdict(self), "source_box": list(self.source_box), "model_box": list(self.model_box)}


def _window(*, size: int, length: int, focus: tuple[int, int] | None) -> int:
    """Start of a window of `length` pixels in `size`: centred, or centred on the focus span
    (start, length) and then moved inside the frame."""
    if focus is None:
        return (size - length) // 2
    centre = focus[0] + focus[1] / 2
    return int(min(max(round(centre - length / 2), 0), size - length))


def fit_mapping(
    *, mode: str, source_width: int, source_height: int, width: int, height: int,
    focus: tuple[int, int, int, int] | None = None,
) -> FitMapping:
    """How a source_width x source_height frame meets a width x height model frame.

    focus: a source box (x, y, width, height) the crop window is centred on (held inside the
    frame) instead of the frame's centre; pad and stretch ignore it.
    """
    if mode not in FIT_MODES:
        raise UsageError(f"--fit must be one of {', '.join(FIT_MODES)}, got {mode!r}")
    if width < 1 or height < 1:
        raise ValueError(f"model size must be positive, got {width}x{height}")
    source_box = (0, 0, source_width, source_height)
    model_box = (0, 0, width, height)
    source_wider = source_width * height > width * source_height
    if mode == "crop" and source_wider:
        crop_width = max(1, round(source_height * width / height))
        x = _window(size=source_width, length=crop_width, focus=None if focus is None else focus[0::2])
        source_box = (x, 0, crop_width, source_height)
    elif mode == "crop":
        crop_height = max(1, round(source_width * height / width))
        y = _window(size=source_height, length=crop_height, focus=None if focus is None else focus[1::2])
        source_box = (0, y, source_width, crop_height)
    elif mode == "pad" and source_wider:
        fill_height = max(1, round(source_height * width / source_width))
        model_box = (0, (height - fill_height) // 2, width, fill_height)
    elif mode == "pad":
        fill_width = max(1, round(source_width * height / source_height))
        model_box = ((width - fill_width) // 2, 0, fill_width, height)
    return FitMapping(mode, source_width, source_height, width, height, source_box, model_box)


def _resize(image: np.ndarray, *, width: int, height: int, upscale: int = cv2.INTER_CUBIC) -> np.ndarray:
    """cv2.resize with INTER_AREA when shrinking, `upscale` otherwise; (h,w[,c]) -> (height,width[,c])."""
    if image.shape[:2] == (height, width):
        return image.copy()
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else upscale)


def check_frames(frames: np.ndarray, *, name: str = "frames") -> None:
    """ValueError unless `frames` is a non-empty (T,H,W,3) uint8 array."""
    shape, dtype = getattr(frames, "shape", ()), getattr(frames, "dtype", None)
    if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or 0 in shape:
        raise ValueError(f"{name} must be a non-empty (T,H,W,3) uint8 array, got {shape} {dtype}")


def _transfer(*, images: np.ndarray, into: np.ndarray, from_box: tuple, to_box: tuple, upscale: int):
    """Resize each image's `from_box` (x, y, width, height) into `to_box` of `into`, in place."""
    x, y, box_width, box_height = from_box
    to_x, to_y, to_width, to_height = to_box
    for index, image in enumerate(images):
        region = np.ascontiguousarray(image[y : y + box_height, x : x + box_width])
        resized = _resize(region, width=to_width, height=to_height, upscale=upscale)
        into[index, to_y : to_y + to_height, to_x : to_x + to_width] = resized
    return into


def apply_fit(*, frames: np.ndarray, mapping: FitMapping) -> np.ndarray:
    """(T,H,W,3) uint8 source frames -> (T,h,w,3) uint8 model frames; inverse: from_model_frames."""
    check_frames(frames)
    if frames.shape[1:3] != (mapping.source_height, mapping.source_width):
        raise ValueError(f"frames {frames.shape} do not fit the mapping {mapping}")
    model = np.zeros((frames.shape[0], mapping.model_height, mapping.model_width, 3), dtype=np.uint8)
    boxes = {"from_box": mapping.source_box, "to_box": mapping.model_box}
    return _transfer(images=frames, into=model, upscale=cv2.INTER_CUBIC, **boxes)


def to_model_frames(
    *, frames: np.ndarray, width: int, height: int, fit: str = "crop",
    focus: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, FitMapping]:
    """(T,H,W,3) uint8 -> (T,height,width,3) uint8 and the mapping back to source pixels
    (fit_mapping, then apply_fit)."""
    check_frames(frames)
    mapping = fit_mapping(mode=fit, source_width=frames.shape[2], source_height=frames.shape[1],
                          width=width, height=height, focus=focus)
    return apply_fit(frames=frames, mapping=mapping), mapping


def from_model_frames(*, frames: np.ndarray, mapping: FitMapping, source: np.ndarray) -> np.ndarray:
    """Model-size (T,h,w,3) uint8 -> source size (T,H,W,3); pixels outside a crop come from `source`."""
    check_frames(frames)
    check_frames(source, name="source")
    model_shape = (mapping.model_height, mapping.model_width)
    source_shape = (frames.shape[0], mapping.source_height, mapping.source_width)
    if frames.shape[1:3] != model_shape or source.shape[:3] != source_shape:
        raise ValueError(f"frames {frames.shape} / source {source.shape} do not fit the mapping {mapping}")
    boxes = {"from_box": mapping.model_box, "to_box": mapping.source_box}
    return _transfer(images=frames, into=source.copy(), upscale=cv2.INTER_CUBIC, **boxes)


def masks_to_model(*, masks: np.ndarray, mapping: FitMapping) -> np.ndarray:
    """(T,H,W) float masks at source size -> (T,h,w) float32 in [0,1] at model size; padding is 0."""
    if masks.ndim != 3 or masks.shape[1:] != (mapping.source_height, mapping.source_width):
        raise ValueError(f"masks must be (T,{mapping.source_height},{mapping.source_width}): {masks.shape}")
    model = np.zeros((masks.shape[0], mapping.model_height, mapping.model_width), dtype=np.float32)
    boxes = {"from_box": mapping.source_box, "to_box": mapping.model_box}
    _transfer(images=masks.astype(np.float32), into=model, upscale=cv2.INTER_LINEAR, **boxes)
    return np.clip(model, 0.0, 1.0)


def composite(*, source: np.ndarray, edited: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """source*(1-m) + edited*m for (T,H,W,3) uint8 frames and (T,H,W) masks in [0,1] -> uint8."""
    check_frames(source, name="source")
    check_frames(edited, name="edited")
    if edited.shape != source.shape or masks.shape != source.shape[:3]:
        raise ValueError(f"shapes differ: source {source.shape}, edited {edited.shape}, masks {masks.shape}")
    weight = np.clip(masks.astype(np.float32), 0.0, 1.0)[..., None]
    blended = source.astype(np.float32) * (1.0 - weight) + edited.astype(np.float32) * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def side_by_side(*, panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels (T,H,W_i,3) with equal T and H -> (T,H,sum W_i,3), left to right."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    for panel in panels:
        check_frames(panel, name="panel")
    if len({panel.shape[:2] for panel in panels}) != 1:
        raise ValueError(f"panels need equal frame count and height, got {[p.shape for p in panels]}")
    return np.concatenate(list(panels), axis=2)




def frames_to_tensor(*, frames: np.ndarray) -> "torch.Tensor":
    """(T,H,W,3) uint8 -> (T,3,H,W) float32 in [-1,1] (x / 127.5 - 1); inverse: tensor_to_frames."""
    import torch

    check_frames(frames)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_frames(*, tensor: "torch.Tensor") -> np.ndarray:
    """(T,3,H,W) float in [-1,1] -> (T,H,W,3) uint8, rounded and clipped; inverse: frames_to_tensor."""
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"tensor must be (T,3,H,W), got {tuple(tensor.shape)}")
    values = (tensor.detach().float().cpu().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5
    return values.round().clip(0, 255).astype(np.uint8)
