"""masks.py: box rasterisation, gap filling, smoothing, dilation, feathering, latent grid, the EditMask
and its forms, mask bounds (user mask files: test_mask_files.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmedit.models.backends.base import Detection, DetectionRun
from dmedit.core.errors import InputError
from dmedit.media.fit import FitMapping, to_model_frames
from dmedit.masks.regions import (
    EditMask,
    MaskResult,
    boxes_to_masks,
    detect_masks,
    dilate_boxes,
    draw_preview,
    feather_masks,
    fill_missing_boxes,
    full_masks,
    mask_bounds,
    masks_to_latent_grid,
    smooth_boxes,
)


def test_box_covers_exactly_the_pixels_whose_centres_lie_inside() -> None:
    masks = boxes_to_masks(boxes=[[(2, 3, 5, 7)], [(1.5, 0.6, 3.4, 2.5)]], width=10, height=8)
    expected = np.zeros((2, 8, 10), dtype=np.float32)
    expected[0, 3:7, 2:5] = 1
    expected[1, 1, 1:3] = 1
    assert masks.dtype == np.float32
    np.testing.assert_array_equal(masks, expected)


def test_boxes_are_clipped_at_the_frame_border() -> None:
    masks = boxes_to_masks(boxes=[[(-5, -5, 3, 2), (4, 2, 100, 100), (10, 10, 20, 20)]], width=6, height=4)
    expected = np.zeros((1, 4, 6), dtype=np.float32)
    expected[0, 0:2, 0:3] = 1
    expected[0, 2:4, 4:6] = 1
    np.testing.assert_array_equal(masks, expected)


def test_several_boxes_give_their_union_and_empty_frames_stay_empty() -> None:
    masks = boxes_to_masks(boxes=[[(0, 0, 4, 4), (2, 2, 6, 6)], []], width=8, height=8)
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert masks[0].sum() == 16 + 16 - 4
    assert masks[1].sum() == 0


def test_missing_frames_take_linearly_interpolated_boxes() -> None:
    first, last = (0.0, 10.0, 20.0, 30.0), (40.0, 50.0, 60.0, 90.0)
    filled = fill_missing_boxes(boxes=[[first], [], [], [], [last]])
    assert filled[2] == [(20.0, 30.0, 40.0, 60.0)]
    assert filled[1] == [(10.0, 20.0, 30.0, 45.0)]
    assert filled[0] == [first] and filled[4] == [last]


def test_boxes_are_held_before_the_first_and_after_the_last_detection() -> None:
    first, last = (1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)
    filled = fill_missing_boxes(boxes=[[], [], [first], [last], []])
    assert filled == [[first], [first], [first], [last], [last]]


def test_gap_between_frames_with_equal_counts_pairs_boxes_by_position() -> None:
    left, right = (0.0, 0.0, 10.0, 10.0), (50.0, 0.0, 60.0, 10.0)
    moved_left, moved_right = (10.0, 0.0, 20.0, 10.0), (60.0, 0.0, 70.0, 10.0)
    filled = fill_missing_boxes(boxes=[[left, right], [], [moved_right, moved_left]])
    assert filled[1] == [(5.0, 0.0, 15.0, 10.0), (55.0, 0.0, 65.0, 10.0)]


def test_gap_between_frames_with_different_counts_uses_union_boxes() -> None:
    filled = fill_missing_boxes(boxes=[[(0, 0, 10, 10), (20, 20, 30, 30)], [], [(10, 10, 20, 20)]])
    assert filled[1] == [(5.0, 5.0, 25.0, 25.0)]


def test_filling_without_any_box_raises() -> None:
    with pytest.raises(ValueError):
        fill_missing_boxes(boxes=[[], []])


def test_smoothing_reduces_jitter_and_keeps_constant_boxes() -> None:
    jittery = [[(10.0 + 3 * (-1) ** t, 20.0, 30.0 + 3 * (-1) ** t, 40.0)] for t in range(12)]
    smoothed = np.array(smooth_boxes(boxes=jittery, window=5))[:, 0]
    assert smoothed[:, 0].var() < 0.2 * np.array(jittery)[:, 0, 0].var()
    constant = [[(4.0, 5.0, 6.0, 7.0)]] * 6
    assert smooth_boxes(boxes=constant, window=3) == constant
    assert smooth_boxes(boxes=jittery, window=1) == jittery


def test_smoothing_averages_the_centred_window_and_shrinks_it_at_the_ends() -> None:
    boxes = [[(float(t), 0.0, float(t) + 1, 1.0)] for t in (0, 3, 6, 30)]
    smoothed = smooth_boxes(boxes=boxes, window=3)
    assert [frame[0][0] for frame in smoothed] == [1.5, 3.0, 13.0, 18.0]


def test_default_dilation_grows_each_box_by_five_percent_of_its_size() -> None:
    dilated = dilate_boxes(boxes=[[(10, 20, 30, 60)]], pixels=None, width=100, height=100)
    assert dilated == [[(9.0, 18.0, 31.0, 62.0)]]


def test_explicit_dilation_grows_by_pixels_and_clips_at_the_border() -> None:
    dilated = dilate_boxes(boxes=[[(10, 20, 30, 60)], [(1, 2, 98, 99)]], pixels=3, width=100, height=100)
    assert dilated == [[(7.0, 17.0, 33.0, 63.0)], [(0.0, 0.0, 100.0, 100.0)]]


def test_feathering_softens_only_the_pixels_near_the_edge() -> None:
    masks = boxes_to_masks(boxes=[[(10, 10, 30, 30)]], width=40, height=40)
    feathered = feather_masks(masks=masks, pixels=4)
    soft = (feathered > 0) & (feathered < 1)
    rows, columns = np.nonzero(soft[0])
    distance_to_edge = np.minimum(
        np.minimum(np.abs(rows + 0.5 - 10), np.abs(rows + 0.5 - 30)),
        np.minimum(np.abs(columns + 0.5 - 10), np.abs(columns + 0.5 - 30)),
    )
    assert soft.any() and distance_to_edge.max() <= 4.5
    assert feathered[0, 16:24, 16:24].min() == 1.0
    assert feathered[0, :4].max() == 0.0
    np.testing.assert_array_equal(feather_masks(masks=masks, pixels=0), masks)


def test_feathering_a_full_mask_keeps_it_full() -> None:
    full = full_masks(frames=2, width=12, height=9)
    assert full.shape == (2, 9, 12)
    np.testing.assert_array_equal(feather_masks(masks=full, pixels=3), full)


def test_a_single_edited_pixel_marks_exactly_its_latent_cell() -> None:
    masks = np.zeros((3, 32, 48), dtype=np.float32)
    masks[1, 13, 22] = 0.2
    grid = masks_to_latent_grid(masks=masks, latent_height=4, latent_width=6)
    assert tuple(grid.shape) == (1, 1, 3, 4, 6)
    assert grid.sum() == 1 and grid[0, 0, 1, 1, 2] == 1


def test_latent_grid_with_a_non_integer_ratio_keeps_corner_pixels() -> None:
    masks = np.zeros((2, 30, 50), dtype=np.float32)
    masks[0, 29, 49] = 1
    masks[1, 0, 0] = 1
    grid = masks_to_latent_grid(masks=masks, latent_height=4, latent_width=6)
    assert tuple(grid.shape) == (1, 1, 2, 4, 6)
    assert grid[0, 0, 0, 3, 5] == 1 and grid[0, 0, 1, 0, 0] == 1 and grid.sum() == 2


class ScriptedDetector:
    """Returns fixed detections, like GroundingDinoDetector.run."""

    def __init__(self, detections: list[list[Detection]], best_score: float) -> None:
        self.result = DetectionRun(detections=detections, best_score=best_score)

    def run(self, *, frames, prompt, box_threshold, text_threshold) -> DetectionRun:
        return self.result


def test_detect_masks_fills_gaps_between_detections() -> None:
    frames = np.zeros((3, 20, 40, 3), dtype=np.uint8)
    found = [
        [Detection(frame=0, box=(0.0, 0.0, 10.0, 10.0), score=0.9, label="a dog")],
        [],
        [Detection(frame=2, box=(20.0, 10.0, 30.0, 20.0), score=0.8, label="a dog")],
    ]
    result = detect_masks(
        detector=ScriptedDetector(found, 0.9),
        frames=frames,
        prompt="a dog",
        box_threshold=0.3,
        text_threshold=0.25,
        smooth=1,
        dilate=0,
    )
    assert result.boxes[1] == [(10.0, 5.0, 20.0, 15.0)]
    assert result.masks.shape == (3, 20, 40)
    assert result.masks[1, 5:15, 10:20].min() == 1 and result.masks[1].sum() == 100
    assert result.detections == found


def test_detect_masks_without_any_detection_explains_what_to_do() -> None:
    with pytest.raises(InputError) as caught:
        detect_masks(
            detector=ScriptedDetector([[], []], 0.123),
            frames=np.zeros((2, 8, 8, 3), dtype=np.uint8),
            prompt="a parrot",
            box_threshold=0.35,
            text_threshold=0.25,
            smooth=1,
            dilate=None,
        )
    message = str(caught.value)
    assert "'a parrot'" in message and "0.123" in message and "0.35" in message
    assert "--box-threshold" in message and "--mask full" in message


def test_preview_tints_the_mask_and_draws_the_labelled_box() -> None:
    frames = np.full((2, 60, 80, 3), 100, dtype=np.uint8)
    masks = np.zeros((2, 60, 80), dtype=np.float32)
    masks[:, 30:50, 40:70] = 1
    detection = Detection(frame=1, box=(40.0, 30.0, 70.0, 50.0), score=0.42, label="a cat")
    preview = draw_preview(frames=frames, masks=masks, detections=[[], [detection]])
    assert preview.shape == frames.shape and preview.dtype == np.uint8
    inside = preview[0, 40, 55]
    assert inside[1] > 100 and inside[0] < 100
    np.testing.assert_array_equal(preview[0, :25], frames[0, :25])
    np.testing.assert_array_equal(preview[0, 30:50, 40:70], preview[0, 40:41, 55:56].repeat(20, 0).repeat(30, 1))
    assert not np.array_equal(preview[1, :30], frames[1, :30])
    assert not np.array_equal(preview[1, 30, 40:70], preview[0, 30, 40:70])


def crop_mapping(*, frames: int = 3, width: int = 40, height: int = 20, fit: str = "crop") -> FitMapping:
    """40x20 source to a 16x16 model: crop keeps the centred source columns 10..29."""
    return to_model_frames(frames=np.zeros((frames, height, width, 3), np.uint8), width=16, height=16, fit=fit)[1]


def test_a_mask_entirely_left_of_the_centred_crop_is_all_outside_and_empty_at_model_size() -> None:
    mapping = crop_mapping()
    assert mapping.source_box == (10, 0, 20, 20)
    source = np.zeros((3, 20, 40), np.float32)
    source[:, 5:15, 0:10] = 1
    mask = EditMask(source=source, mapping=mapping, origin="file")
    assert mask.outside_fraction() == 1.0
    model = mask.model()
    assert model.shape == (3, 16, 16) and model.dtype == np.float32 and model.max() == 0.0
    assert mask.latent(latent_height=2, latent_width=2).sum() == 0
    assert mask.coverage() == pytest.approx(3 * 10 * 10 / (3 * 20 * 40))


def test_a_mask_inside_the_crop_maps_to_a_binary_model_mask_and_its_latent_cells() -> None:
    mapping = crop_mapping()
    source = np.zeros((3, 20, 40), np.float32)
    source[1, 4:12, 14:26] = 1  # crop columns 4..15 -> model columns 3.2..12.8; rows 3.2..9.6
    mask = EditMask(source=source, mapping=mapping, origin="detected")
    assert mask.outside_fraction() == 0.0
    model = mask.model()
    expected = np.zeros((3, 16, 16), np.float32)
    expected[1, 3:10, 3:13] = 1  # every model pixel the object touches, fully or partly
    np.testing.assert_array_equal(model, expected)
    latent = mask.latent(latent_height=4, latent_width=4)  # 4x4 model pixels per cell
    assert tuple(latent.shape) == (1, 1, 3, 4, 4) and latent.dtype == torch.float32
    np.testing.assert_array_equal(latent[0, 0, 1].numpy(), [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert latent[0, 0, 0].sum() == 0 and latent[0, 0, 2].sum() == 0


def test_outside_fraction_counts_the_share_a_crop_drops() -> None:
    source = np.zeros((2, 20, 40), np.float32)
    source[0, 0:4, 5:15] = 1  # 5 of 10 columns outside (0..9)
    source[1, 0:4, 27:37] = 1  # 7 of 10 columns outside (30..39)
    mask = EditMask(source=source, mapping=crop_mapping(frames=2), origin="file")
    assert mask.outside_fraction() == pytest.approx((5 + 7) / 20)
    padded = EditMask(source=source, mapping=crop_mapping(frames=2, fit="pad"), origin="file")
    assert padded.outside_fraction() == 0.0, "pad keeps the whole source"


def test_pad_mapping_keeps_the_letterbox_bars_out_of_a_full_mask() -> None:
    mapping = crop_mapping(fit="pad")
    assert mapping.model_box == (0, 4, 16, 8)
    model = EditMask(source=full_masks(frames=3, width=40, height=20), mapping=mapping, origin="full").model()
    assert model[:, 4:12].min() == 1.0 and model[:, :4].max() == 0.0 and model[:, 12:].max() == 0.0


def test_feathered_blurs_the_source_size_mask() -> None:
    source = np.zeros((2, 20, 40), np.float32)
    source[:, 5:15, 10:30] = 1
    mask = EditMask(source=source, mapping=crop_mapping(frames=2), origin="file")
    feathered = mask.feathered(pixels=3)
    assert feathered.shape == (2, 20, 40) and feathered.dtype == np.float32
    np.testing.assert_array_equal(feathered, feather_masks(masks=source, pixels=3))
    assert ((feathered > 0) & (feathered < 1)).any()
    np.testing.assert_array_equal(mask.feathered(pixels=0), source)


def test_an_empty_mask_has_no_coverage_nothing_outside_and_no_bounds() -> None:
    mask = EditMask(source=np.zeros((2, 20, 40), np.float32), mapping=crop_mapping(frames=2), origin="file")
    assert mask.coverage() == 0.0 and mask.outside_fraction() == 0.0
    assert mask.to_dict() == {"origin": "file", "coverage": 0.0, "outside_fraction": 0.0, "frames": 2}
    assert mask_bounds(masks=mask.source) is None


def test_to_dict_reports_origin_coverage_outside_share_and_frames() -> None:
    source = np.zeros((4, 20, 40), np.float32)
    source[:, 0:10, 0:20] = 1  # a quarter of each frame, half of it left of the crop
    detection = MaskResult(boxes=[[(0.0, 0.0, 20.0, 10.0)]] * 4, detections=[[]] * 4, masks=source, best_score=0.5)
    mask = EditMask(source=source, mapping=crop_mapping(frames=4), origin="detected", detection=detection)
    assert mask.to_dict() == {"origin": "detected", "coverage": 0.25, "outside_fraction": 0.5, "frames": 4}
    assert mask.detection is detection


def test_edit_mask_refuses_a_source_of_the_wrong_size_or_an_unknown_origin() -> None:
    mapping = crop_mapping()
    with pytest.raises(ValueError, match="20,40"):
        EditMask(source=np.zeros((3, 40, 20), np.float32), mapping=mapping, origin="file")
    with pytest.raises(ValueError, match="origin"):
        EditMask(source=np.zeros((3, 20, 40), np.float32), mapping=mapping, origin="drawn")
    converted = EditMask(source=np.ones((3, 20, 40), np.uint8), mapping=mapping, origin="full")
    assert converted.source.dtype == np.float32 and converted.coverage() == 1.0


def test_mask_bounds_is_the_union_box_over_all_frames() -> None:
    masks = np.zeros((3, 10, 16), np.float32)
    masks[0, 3:7, 2:5] = 1
    masks[2, 1:2, 10:12] = 0.3
    assert mask_bounds(masks=masks) == (2, 1, 10, 6)
    assert mask_bounds(masks=full_masks(frames=1, width=16, height=10)) == (0, 0, 16, 10)
    single = np.zeros((1, 10, 16), np.float32)
    single[0, 9, 15] = 1
    assert mask_bounds(masks=single) == (15, 9, 1, 1)
