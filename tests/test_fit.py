"""fit.py: the fit modes and their mapping back, masks following the frames, model tensors and
their inverse, compositing and side-by-side panels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmedit.core.errors import UsageError
from dmedit.media.fit import (
    composite, frames_to_tensor, from_model_frames, masks_to_model, side_by_side, tensor_to_frames, to_model_frames,
)


def square_frames(*, width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Two grey frames with a white box (x, y, w, h) over a horizontal ramp."""
    frames = np.empty((2, height, width, 3), dtype=np.uint8)
    frames[:] = np.linspace(40, 120, width, dtype=np.uint8)[None, None, :, None]
    x, y, w, h = box
    frames[:, y : y + h, x : x + w] = 255
    return frames


def centroid(frames: np.ndarray) -> np.ndarray:
    """(x, y) of the bright pixels of the first frame."""
    ys, xs = np.nonzero(frames[0].min(axis=-1) > 200)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
    ("fit", "source_box", "model_box"),
    [
        ("crop", (16, 0, 64, 64), (0, 0, 32, 32)),
        ("pad", (0, 0, 96, 64), (0, 5, 32, 21)),
        ("stretch", (0, 0, 96, 64), (0, 0, 32, 32)),
    ],
)
def test_fit_round_trip_keeps_the_source_geometry(fit: str, source_box: tuple, model_box: tuple):
    source = square_frames(width=96, height=64, box=(40, 20, 16, 12))
    model, mapping = to_model_frames(frames=source, width=32, height=32, fit=fit)
    assert model.shape == (2, 32, 32, 3)
    assert (mapping.source_box, mapping.model_box) == (source_box, model_box)
    restored = from_model_frames(frames=model, mapping=mapping, source=source)
    assert restored.shape == source.shape
    assert np.allclose(centroid(restored), centroid(source), atol=0.75)
    assert json.loads(json.dumps(mapping.to_dict()))["mode"] == fit


def test_crop_keeps_source_pixels_outside_the_crop():
    source = square_frames(width=96, height=64, box=(40, 20, 16, 12))
    model, mapping = to_model_frames(frames=source, width=32, height=32, fit="crop")
    left, _, width, _ = mapping.source_box
    right = left + width
    restored = from_model_frames(frames=255 - model, mapping=mapping, source=source)
    assert np.array_equal(restored[:, :, :left], source[:, :, :left])
    assert np.array_equal(restored[:, :, right:], source[:, :, right:])
    assert np.abs(restored[:, :, left:right].astype(int) - source[:, :, left:right]).mean() > 50


def test_pad_letterboxes_with_black_and_drops_it_on_the_way_back():
    source = square_frames(width=64, height=96, box=(20, 40, 12, 16))
    model, mapping = to_model_frames(frames=source, width=32, height=32, fit="pad")
    x, y, w, h = mapping.model_box
    assert (y, h) == (0, 32) and w == 21
    assert model[:, :, :x].max() == 0 and model[:, :, x + w :].max() == 0
    restored = from_model_frames(frames=model, mapping=mapping, source=source)
    assert restored.shape == source.shape and restored[:, :, :3].min() > 20


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_masks_follow_the_frames_geometry(fit: str):
    source = square_frames(width=96, height=64, box=(40, 20, 16, 12))
    masks = (source.min(axis=-1) > 200).astype(np.float32)
    model_frames, mapping = to_model_frames(frames=source, width=32, height=32, fit=fit)
    model_masks = masks_to_model(masks=masks, mapping=mapping)
    assert model_masks.shape == (2, 32, 32) and model_masks.dtype == np.float32
    assert 0.0 <= model_masks.min() and model_masks.max() <= 1.0
    bright = model_frames.min(axis=-1) > 200
    assert np.all(model_masks[bright] > 0.5)
    assert np.all(model_masks[model_frames.max(axis=-1) < 130] < 0.5)


def test_unknown_fit_mode_is_a_usage_error():
    with pytest.raises(UsageError):
        to_model_frames(frames=np.zeros((1, 8, 8, 3), np.uint8), width=8, height=8, fit="zoom")


def test_composite_takes_edited_pixels_only_where_the_mask_is_set():
    source = np.full((2, 4, 6, 3), 100, dtype=np.uint8)
    edited = np.full((2, 4, 6, 3), 200, dtype=np.uint8)
    masks = np.zeros((2, 4, 6), dtype=np.float32)
    masks[:, :, 3:] = 1.0
    masks[:, 0, 0] = 0.5
    out = composite(source=source, edited=edited, masks=masks)
    assert out.dtype == np.uint8
    assert np.all(out[:, :, 3:] == 200) and np.all(out[:, 1:, :3] == 100) and np.all(out[:, 0, 0] == 150)


def test_side_by_side_puts_panels_left_to_right():
    left = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    right = np.full((3, 4, 7, 3), 9, dtype=np.uint8)
    joined = side_by_side(panels=[left, right])
    assert joined.shape == (3, 4, 12, 3)
    assert joined[:, :, :5].max() == 0 and joined[:, :, 5:].min() == 9
    with pytest.raises(ValueError):
        side_by_side(panels=[left, np.zeros((3, 5, 5, 3), dtype=np.uint8)])


def test_model_tensors_round_trip_to_the_same_pixels():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    tensor = frames_to_tensor(frames=frames)
    assert tensor.shape == (3, 3, 5, 7) and float(tensor.min()) >= -1.0 and float(tensor.max()) <= 1.0
    assert np.array_equal(tensor_to_frames(tensor=tensor), frames)
