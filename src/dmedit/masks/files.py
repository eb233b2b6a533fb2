"""User mask files: a PNG, a folder of PNGs or a mask video read into (T,H,W) masks, and the
folder `dmedit mask` writes (numbered PNGs plus span.json, the source frames they were made for).

A wrong mask file edits the wrong place without any sign, so each is checked before use:
- a folder's span.json must list the frames this run edits (the PNGs are numbered from 0, so a
  folder made with `--start 100` would otherwise be applied to frames 0..);
- a mask video must be black-and-white grey (the green preview overlay `OUT.mask.mp4` is refused);
- a mask of another size must have the video's aspect ratio (within 2%); it is then resized, nearest;
- some pixel must be set in some frame.
Masks come back as (T,H,W) float32 {0,1} at the video's size, 1 = edit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from dmedit.core.errors import InputError, UsageError
from dmedit.core.files import write_bytes, write_text
from dmedit.media.decode import display_matrix, orientation, upright
from dmedit.media.ffmpeg_log import quiet_ffmpeg

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SPAN_FILE = "span.json"
PREVIEW_SUFFIX = ".mask.mp4"
VIDEO_MASK_LEVEL = 128
ASPECT_TOLERANCE = 0.02
GREY_SPREAD = 32  # a pixel whose channels differ by more than this is coloured (grey codes with spread 0)
MID_GREY = (48, 207)  # a channel mean strictly between these is neither black nor white
MAX_COLOURED = 0.02  # fractions of a mask video's pixels tolerated as codec noise: lossy codecs
MAX_MID_GREY = 0.25  # blur values near edges (measured: <= 0.25 for blobs at crf 51, 0 at crf <= 23)


def load_user_masks(
    *, path: Path, frames: int, width: int, height: int, span_indices: Sequence[int] | None = None
) -> np.ndarray:
    """A PNG (used for every frame), a folder of PNGs (one per frame) or a mask video -> (T,H,W) {0,1}.

    Images: any non-zero colour value marks an edited pixel (an alpha channel is ignored).
    Folder: the .png files sorted by name, numbers compared by value ("2" before "10"); when it
    holds span.json (written by `dmedit mask`) and `span_indices` (the source frames this run
    edits) is given, the two must list the same frames.
    Video: decoded with PyAV to RGB at its native size; a channel value >= 128 marks an edited
    pixel, because lossy codecs turn pure black into small non-zero values. It must be
    black-and-white grey: a coloured or mostly mid-grey video (the preview overlay) is refused.
    Masks of another size with the same aspect ratio (within 2%) are resized (nearest).
    InputError for: a frame count other than `frames`, another span, another aspect ratio, an
    empty mask, an unreadable file.
    """
    path = Path(path)
    if path.is_dir():
        stack = _read_folder(path=path, frames=frames, width=width, height=height, span_indices=span_indices)
    elif not path.exists():
        raise InputError(f"{path}: mask file not found")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        image = _fitted(masks=_read_image_mask(path=path)[None], path=path, width=width, height=height)
        stack = np.repeat(image, frames, axis=0)
    else:
        stack = _read_video_mask(path=path)
        _check_count(found=len(stack), frames=frames, path=path, unit="mask video frames")
        stack = _fitted(masks=stack, path=path, width=width, height=height)
    if not stack.any():
        raise InputError(f"{path}: the mask is empty (no pixel is set in any frame); nothing would be edited")
    return stack.astype(np.float32)


def _read_folder(
    *, path: Path, frames: int, width: int, height: int, span_indices: Sequence[int] | None
) -> np.ndarray:
    """A folder of PNGs -> (T,H,W) uint8 {0,1}, each image fitted to the video's size."""
    files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
    if not files:
        raise InputError(f"{path}: the mask folder holds no .png files")
    if span_indices is not None:
        _check_span(folder=path, span_indices=span_indices)
    _check_count(found=len(files), frames=frames, path=path, unit="mask images")
    return np.concatenate(
        [_fitted(masks=_read_image_mask(path=file)[None], path=file, width=width, height=height) for file in files]
    )


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _check_count(*, found: int, frames: int, path: Path, unit: str) -> None:
    if found != frames:
        raise InputError(f"{path}: {found} {unit} but the edited span has {frames} frames")


def _check_span(*, folder: Path, span_indices: Sequence[int]) -> None:
    """InputError when folder/span.json lists other source frames than `span_indices`; no file: no check."""
    span_file = folder / SPAN_FILE
    if not span_file.exists():
        return
    try:
        saved = json.loads(span_file.read_text(encoding="utf-8"))
        made, rate = [int(index) for index in saved["indices"]], saved.get("fps")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(f"{span_file}: cannot read the frames the masks were made for ({type(error).__name__}); "
                         "remove the file if these masks fit this run") from error
    edited = [int(index) for index in span_indices]
    if not made or made == edited:
        return
    raise InputError(
        f"masks in {folder} were made for frames {_frame_range(made)} ({_span_flags(made, rate)}); "
        f"this run edits frames {_frame_range(edited)}"
    )


def _frame_range(indices: Sequence[int]) -> str:
    """[100, ..., 107] -> "100..107"; evenly strided -> "100..114 in steps of 2"; else with the count."""
    if len(indices) == 1:
        return str(indices[0])
    steps = {b - a for a, b in pairwise(indices)}
    text = f"{indices[0]}..{indices[-1]}"
    if steps == {1}:
        return text
    if len(steps) == 1:
        return f"{text} in steps of {steps.pop()}"
    return f"{text} ({len(indices)} frames)"


def _span_flags(indices: Sequence[int], rate: Any) -> str:
    """The `dmedit run` flags that select `indices` again, e.g. "--start 100 --frames 8 --stride 2"."""
    flags = f"--start {indices[0]} --frames {len(indices)}"
    steps = {b - a for a, b in pairwise(indices)}
    if len(steps) == 1 and (step := steps.pop()) > 1:
        return f"{flags} --stride {step}"
    if len(steps) > 1 and isinstance(rate, str) and re.fullmatch(r"\d+(/\d+)?", rate):
        numerator, _, denominator = rate.partition("/")
        return f"{flags} --fps {int(numerator) / int(denominator or 1):g}"
    return flags


def _read_image_mask(*, path: Path) -> np.ndarray:
    """An image -> (h,w) uint8 {0,1}: 1 where any colour channel is non-zero."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{path}: cannot read this mask image")
    if image.ndim == 3:
        image = image[..., :3].max(axis=-1) if image.shape[-1] >= 3 else image[..., 0]
    return (image > 0).astype(np.uint8)


def _read_video_mask(*, path: Path) -> np.ndarray:
    """A mask video -> (T,h,w) uint8 {0,1} at its native size, upright as players show it (its
    display matrix applied, like the video frames), every frame decoded to RGB (PyAV)."""
    masks: list[np.ndarray] = []
    unclear = np.zeros(2, dtype=np.int64)
    try:
        with quiet_ffmpeg(), av.open(str(path)) as container:
            for frame in container.decode(video=0):
                _, steps = orientation(matrix=display_matrix(frame=frame), shown=path)
                rgb = np.ascontiguousarray(upright(image=frame.to_ndarray(format="rgb24"), steps=steps))
                masks.append((rgb.max(axis=-1) >= VIDEO_MASK_LEVEL).astype(np.uint8))
                unclear += _unclear_pixels(rgb=rgb)
    except InputError:
        raise
    except Exception as error:  # PyAV's FFmpegError family; IndexError/ValueError without a video stream
        raise InputError(f"{path}: cannot read this mask video ({type(error).__name__})") from error
    if not masks:
        raise InputError(f"{path}: the mask video has no frames")
    total = sum(mask.size for mask in masks)
    _check_black_and_white(path=path, coloured=unclear[0] / total, mid_grey=unclear[1] / total)
    return np.stack(masks)


def _unclear_pixels(*, rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 -> [coloured pixel count, mid-grey pixel count]."""
    pixels = rgb.astype(np.int16)
    coloured = pixels.max(axis=-1) - pixels.min(axis=-1) > GREY_SPREAD
    total = pixels.sum(axis=-1)
    mid_grey = (total > 3 * MID_GREY[0]) & (total < 3 * MID_GREY[1])
    return np.array([np.count_nonzero(coloured), np.count_nonzero(mid_grey)], dtype=np.int64)


def _check_black_and_white(*, path: Path, coloured: float, mid_grey: float) -> None:
    """InputError unless a mask video is (near-)binary grey; names the mask folder to use instead."""
    if coloured <= MAX_COLOURED and mid_grey <= MAX_MID_GREY:
        return
    if path.name.endswith(PREVIEW_SUFFIX):
        folder = f"{path.with_name(path.name[: -len(PREVIEW_SUFFIX)] + '.masks')}/"
    else:
        folder = "OUT.masks/ (written beside OUT.mask.mp4)"
    raise InputError(
        f"{path}: not a black-and-white mask video ({coloured:.1%} of its pixels are coloured, {mid_grey:.1%} "
        f"mid-grey); it looks like the preview overlay that `dmedit mask` writes: pass its mask folder {folder} instead"
    )


def _fitted(*, masks: np.ndarray, path: Path, width: int, height: int) -> np.ndarray:
    """(T,h,w) uint8 -> (T,height,width), resized (nearest) when only the scale differs, else InputError."""
    mask_height, mask_width = masks.shape[1:]
    if (mask_height, mask_width) == (height, width):
        return masks
    if abs(mask_width * height / (mask_height * width) - 1) > ASPECT_TOLERANCE:
        raise InputError(
            f"{path}: the mask is {mask_width}x{mask_height} but the video is {width}x{height}, another aspect "
            f"ratio; make the mask {width}x{height} (or that shape scaled)"
        )
    return np.stack([cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST) for mask in masks])


def save_mask_pngs(*, masks: np.ndarray, folder: Path, span: Mapping[str, Any] | None = None) -> list[Path]:
    """(T,H,W) masks -> folder/00000.png, ... (8-bit, 255 where mask >= 0.5, else 0); returns the PNGs.

    `span` (the span's dict: "indices" (T source frame indices), "fps", "start_frame", ...) is
    written as folder/span.json, so `load_user_masks` refuses the folder for other frames; without
    it an older span.json is removed. Older numbered masks (five digits) beyond T are removed too.
    """
    masks = np.asarray(masks)
    if span is not None and len(span.get("indices", ())) != len(masks):
        raise ValueError(f"span lists {len(span.get('indices', ()))} frames for {len(masks)} masks")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{folder}: cannot create the mask folder ({error.strerror})") from error
    written = []
    for index, mask in enumerate(masks):
        target = folder / f"{index:05d}.png"
        png = cv2.imencode(".png", np.where(mask >= 0.5, 255, 0).astype(np.uint8))[1]
        write_bytes(path=target, data=png.tobytes())
        written.append(target)
    for stale in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
        if int(stale.stem) >= len(written):
            stale.unlink()
    _write_span(folder=folder, span=span)
    return written


def _write_span(*, folder: Path, span: Mapping[str, Any] | None) -> None:
    target = folder / SPAN_FILE
    if span is None:
        target.unlink(missing_ok=True)
    else:
        write_text(path=target, text=json.dumps(dict(span), indent=2, default=str) + "\n")
