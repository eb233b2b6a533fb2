"""mask_files.py: user masks (PNG, folder, video) read, checked and saved with the span they were made for."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from clips import shapes_frame

from dmedit.core.errors import InputError
from dmedit.masks.files import load_user_masks, save_mask_pngs
from dmedit.masks.regions import boxes_to_masks, draw_preview


def write_video(path: Path, frames: np.ndarray, *, crf: int = 18) -> Path:
    """(T,H,W,3) uint8 RGB -> H.264 yuv420p, as `dmedit mask` writes its preview."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def grey(masks: np.ndarray) -> np.ndarray:
    """(T,H,W) {0,1} -> (T,H,W,3) uint8 black and white."""
    return np.repeat((np.asarray(masks) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def span_dict(indices: list[int]) -> dict:
    return {"start_frame": indices[0], "frames": len(indices), "indices": indices, "fps": "30000/1001",
            "fps_float": 30000 / 1001, "start_time": indices[0] * 1001 / 30000, "duration": len(indices) * 1001 / 30000}


# Reading: PNG, folder, video


def test_single_png_is_used_for_every_frame_and_resized_nearest(tmp_path: Path) -> None:
    image = np.zeros((20, 30), dtype=np.uint8)
    image[0:10, 0:15] = 7
    cv2.imwrite(str(tmp_path / "mask.png"), image)
    masks = load_user_masks(path=tmp_path / "mask.png", frames=3, width=60, height=40)
    expected = np.zeros((40, 60), dtype=np.float32)
    expected[0:20, 0:30] = 1
    assert masks.shape == (3, 40, 60) and masks.dtype == np.float32
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
    expected = np.zeros((4, 48, 64), dtype=np.float32)
    for index in range(4):
        expected[index, 8:24, 8 + 8 * index : 24 + 8 * index] = 1
    path = write_video(tmp_path / "mask.mp4", grey(expected), crf=0)
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


# 1. The preview overlay is not a mask


def preview_of_shapes(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A `dmedit mask`-style preview (source tinted green under a box) and the true masks."""
    frames = np.stack([shapes_frame(index=index, width=96, height=64) for index in range(6)])
    masks = boxes_to_masks(boxes=[[(20, 10, 50, 40)]] * 6, width=96, height=64)
    preview = draw_preview(frames=frames, masks=masks, detections=None)
    return write_video(tmp_path / "bird.mask.mp4", preview), masks


def test_the_preview_overlay_is_refused_and_the_mask_folder_named(tmp_path: Path) -> None:
    path, _ = preview_of_shapes(tmp_path)
    with pytest.raises(InputError) as caught:
        load_user_masks(path=path, frames=6, width=96, height=64)
    message = str(caught.value)
    assert "\n" not in message
    assert "black-and-white" in message and "preview overlay" in message
    assert f"{tmp_path / 'bird.masks'}/" in message


def test_the_real_clip_preview_is_refused(tmp_path: Path, real_clip: Path) -> None:
    """The issue's case: carphone's preview read as 24.7% coverage for a true 12.9%."""
    with av.open(str(real_clip)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)][:8])
    masks = boxes_to_masks(boxes=[[(60, 30, 120, 90)]] * 8, width=176, height=144)
    path = write_video(tmp_path / "carphone.mask.mp4", draw_preview(frames=frames, masks=masks, detections=None))
    with pytest.raises(InputError, match="preview overlay"):
        load_user_masks(path=path, frames=8, width=176, height=144)


def test_colour_or_mostly_grey_videos_are_refused_with_a_generic_hint(tmp_path: Path) -> None:
    red = np.zeros((3, 32, 32, 3), np.uint8)
    red[:, 8:24, 8:24] = (255, 0, 0)
    with pytest.raises(InputError, match=r"not a black-and-white mask.*OUT\.masks/"):
        load_user_masks(path=write_video(tmp_path / "red.mp4", red), frames=3, width=32, height=32)
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 32).astype(np.uint8)[None, None, :, None], 32, 1), 3, -1)
    with pytest.raises(InputError, match="mid-grey"):
        load_user_masks(path=write_video(tmp_path / "ramp.mp4", np.repeat(ramp, 3, 0)), frames=3, width=32, height=32)


def test_a_lossy_black_and_white_mask_video_is_accepted(tmp_path: Path) -> None:
    """Codec blur near edges leaves some mid values: blobs on a small frame at a poor quality."""
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 48, 64), np.uint8)
    for frame in masks:
        for _ in range(6):
            centre = (int(rng.integers(0, 64)), int(rng.integers(0, 48)))
            cv2.circle(frame, centre, int(rng.integers(2, 8)), 1, -1)
    path = write_video(tmp_path / "lossy.mp4", grey(masks), crf=40)
    loaded = load_user_masks(path=path, frames=6, width=64, height=48)
    assert abs(loaded.mean() - masks.mean()) < 0.01
    assert (loaded != masks).mean() < 0.02


# 2. A saved folder remembers the frames it was made for


def test_saved_folder_writes_span_json_and_refuses_other_frames(tmp_path: Path) -> None:
    masks = np.ones((8, 4, 6), np.float32)
    made = list(range(100, 108))
    save_mask_pngs(masks=masks, folder=tmp_path / "bird.masks", span=span_dict(made))
    saved = json.loads((tmp_path / "bird.masks" / "span.json").read_text())
    assert saved["indices"] == made and saved["fps"] == "30000/1001" and saved["start_frame"] == 100
    np.testing.assert_array_equal(
        load_user_masks(path=tmp_path / "bird.masks", frames=8, width=6, height=4, span_indices=made), masks)
    with pytest.raises(InputError) as caught:
        load_user_masks(path=tmp_path / "bird.masks", frames=8, width=6, height=4, span_indices=list(range(8)))
    assert str(caught.value) == (f"masks in {tmp_path / 'bird.masks'} were made for frames 100..107 "
                                 "(--start 100 --frames 8); this run edits frames 0..7")


def test_span_mismatch_is_reported_before_the_frame_count_and_names_the_stride(tmp_path: Path) -> None:
    save_mask_pngs(masks=np.ones((4, 4, 4)), folder=tmp_path / "m", span=span_dict([10, 12, 14, 16]))
    with pytest.raises(InputError, match=r"frames 10\.\.16 in steps of 2 \(--start 10 --frames 4 --stride 2\)"):
        load_user_masks(path=tmp_path / "m", frames=6, width=4, height=4, span_indices=list(range(6)))


def test_folders_without_span_json_or_callers_without_a_span_are_not_checked(tmp_path: Path) -> None:
    save_mask_pngs(masks=np.ones((2, 4, 4)), folder=tmp_path / "made", span=span_dict([50, 51]))
    assert load_user_masks(path=tmp_path / "made", frames=2, width=4, height=4).shape == (2, 4, 4)
    save_mask_pngs(masks=np.ones((2, 4, 4)), folder=tmp_path / "made")
    assert not (tmp_path / "made" / "span.json").exists(), "saving without a span drops the old one"
    assert load_user_masks(path=tmp_path / "made", frames=2, width=4, height=4, span_indices=[0, 1]).shape == (2, 4, 4)


def test_an_unreadable_span_json_is_an_input_error(tmp_path: Path) -> None:
    save_mask_pngs(masks=np.ones((2, 4, 4)), folder=tmp_path / "m")
    (tmp_path / "m" / "span.json").write_text("{not json")
    with pytest.raises(InputError, match="span.json"):
        load_user_masks(path=tmp_path / "m", frames=2, width=4, height=4, span_indices=[0, 1])


def test_a_span_of_the_wrong_length_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 frames for 2 masks"):
        save_mask_pngs(masks=np.ones((2, 4, 4)), folder=tmp_path / "m", span=span_dict([0, 1, 2]))


# 3. Another size: resized only when the aspect ratio matches


def test_a_mask_of_another_aspect_ratio_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "square.png"), np.full((40, 40), 255, np.uint8))
    with pytest.raises(InputError, match=r"40x40.*96x64"):
        load_user_masks(path=tmp_path / "square.png", frames=2, width=96, height=64)
    path = write_video(tmp_path / "square.mp4", grey(np.ones((2, 32, 32))))
    with pytest.raises(InputError, match=r"32x32.*96x64"):
        load_user_masks(path=path, frames=2, width=96, height=64)


def test_a_mask_within_two_percent_of_the_aspect_is_resized_even_in_a_mixed_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.full((64, 96), 255, np.uint8))
    cv2.imwrite(str(folder / "1.png"), np.full((33, 50), 255, np.uint8))  # 1.515 vs 1.5: within 2%
    masks = load_user_masks(path=folder, frames=2, width=96, height=64)
    assert masks.shape == (2, 64, 96) and masks.min() == 1.0
    cv2.imwrite(str(folder / "1.png"), np.full((32, 52), 255, np.uint8))  # 1.625: 8% off
    with pytest.raises(InputError, match=r"1\.png.*52x32.*96x64"):
        load_user_masks(path=folder, frames=2, width=96, height=64)


# 4. An empty mask would edit nothing


@pytest.mark.parametrize("kind", ["png", "folder", "video"])
def test_an_all_black_mask_is_refused(tmp_path: Path, kind: str) -> None:
    black = np.zeros((3, 16, 16), np.float32)
    if kind == "png":
        cv2.imwrite(str(tmp_path / "black.png"), np.zeros((16, 16), np.uint8))
        path = tmp_path / "black.png"
    elif kind == "folder":
        path = tmp_path / "black"
        save_mask_pngs(masks=black, folder=path)
    else:
        path = write_video(tmp_path / "black.mp4", grey(black))
    with pytest.raises(InputError) as caught:
        load_user_masks(path=path, frames=3, width=16, height=16)
    assert str(caught.value) == f"{path}: the mask is empty (no pixel is set in any frame); nothing would be edited"
