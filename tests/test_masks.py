"""masks.py: box rasterisation, gap filling, smoothing, dilation, feathering, user masks, latent grid."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dmedit.backends.grounding_dino import Detection, DetectionRun
from dmedit.errors import InputError
from dmedit.masks import (
    boxes_to_masks,
    detect_masks,
    dilate_boxes,
    draw_preview,
    feather_masks,
    fill_missing_boxes,
    full_masks,
    load_user_masks,
    masks_to_latent_grid,
    save_mask_pngs,
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


def test_single_png_is_used_for_every_frame_and_resized_nearest(tmp_path: Path) -> None:
    image = np.zeros((20, 30), dtype=np.uint8)
    image[0:10, 0:15] = 7
    cv2.imwrite(str(tmp_path / "mask.png"), image)
    masks = load_user_masks(path=tmp_path / "mask.png", frames=3, width=60, height=40)
    expected = np.zeros((40, 60), dtype=np.float32)
    expected[0:20, 0:30] = 1
    assert masks.shape == (3, 40, 60)
    for mask in masks:
        np.testing.assert_array_equal(mask, expected)


def test_folder_of_pngs_reads_one_mask_per_frame_in_name_order(tmp_path: Path) -> None:
    for number in (1, 2, 10):
        image = np.zeros((8, 8, 3), dtype=np.uint8)
        image[0, number % 8] = (0, 0, 255)
        cv2.imwrite(str(tmp_path / f"frame{number}.png"), image)
    masks = load_user_masks(path=tmp_path, frames=3, width=8, height=8)
    assert [int(np.argmax(mask[0])) for mask in masks] == [1, 2, 2]
    assert masks.sum() == 3


def test_mask_video_is_read_at_native_size_then_resized(tmp_path: Path) -> None:
    path = tmp_path / "mask.mp4"
    expected = np.zeros((4, 48, 64), dtype=np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "0"}
        for index in range(4):
            frame = np.zeros((48, 64, 3), dtype=np.uint8)
            frame[8:24, 8 + 8 * index : 24 + 8 * index] = 255
            expected[index, 8:24, 8 + 8 * index : 24 + 8 * index] = 1
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    masks = load_user_masks(path=path, frames=4, width=32, height=24)
    assert masks.shape == (4, 24, 32)
    np.testing.assert_array_equal(masks, expected[:, ::2, ::2])
    with pytest.raises(InputError, match=r"4 mask video frames.*6 frames"):
        load_user_masks(path=path, frames=6, width=32, height=24)


def test_frame_count_mismatch_names_both_counts_and_the_path(tmp_path: Path) -> None:
    save_mask_pngs(masks=np.ones((2, 4, 4)), folder=tmp_path / "masks")
    with pytest.raises(InputError) as caught:
        load_user_masks(path=tmp_path / "masks", frames=5, width=4, height=4)
    message = str(caught.value)
    assert "2 mask images" in message and "5 frames" in message and str(tmp_path / "masks") in message


def test_unreadable_or_missing_mask_raises_input_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png"):
        load_user_masks(path=broken, frames=2, width=4, height=4)
    with pytest.raises(InputError, match="not found"):
        load_user_masks(path=tmp_path / "absent.png", frames=2, width=4, height=4)
    garbage_video = tmp_path / "broken.mp4"
    garbage_video.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="broken.mp4"):
        load_user_masks(path=garbage_video, frames=2, width=4, height=4)


def test_saved_pngs_load_back_identically_and_stale_ones_are_removed(tmp_path: Path) -> None:
    masks = boxes_to_masks(boxes=[[(1, 1, 5, 4)], [(2, 0, 7, 3)], [], [(0, 0, 9, 6)]], width=9, height=6)
    paths = save_mask_pngs(masks=masks, folder=tmp_path / "out")
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert set(np.unique(cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED))) == {0, 255}
    np.testing.assert_array_equal(load_user_masks(path=tmp_path / "out", frames=4, width=9, height=6), masks)
    save_mask_pngs(masks=masks[:2], folder=tmp_path / "out")
    np.testing.assert_array_equal(load_user_masks(path=tmp_path / "out", frames=2, width=9, height=6), masks[:2])


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
