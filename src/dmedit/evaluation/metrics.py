"""Weight-free edit metrics on frames: motion fidelity from Lucas-Kanade grid tracks, and PSNR/SSIM
outside the mask. The flow-based ones (end-point error, warp error) are in flow_metrics.py.

Every function is pure: numpy uint8 (F,H,W,3) RGB videos of equal shape (source, edited) and
optional bool (F,H,W) masks (True = the edited object) in, a metric_types.Metric out.
"""

from __future__ import annotations

import cv2
import numpy as np

from dmedit.evaluation.metric_types import Metric

GRID_POINTS = 400  # about this many tracks on the first frame's grid
MIN_GRID_STEP = 4  # pixels between grid points at least
LK_WINDOW = 15
LK_LEVELS = 3
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
FORWARD_BACKWARD_PX = 1.0  # a track whose backward check misses its start by more is lost
STATIC_PX = 0.2  # a displacement shorter than this (pixels per frame) is "static"
PSNR_CAP_DB = 100.0  # identical pixels: PSNR is infinite; reported as this cap
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # the Gaussian window's radius: pixels this close to the mask see edited pixels
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def check_pair(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None = None) -> None:
    """ValueError unless source and edited are equal-shape (F,H,W,3) uint8 and mask, if given, (F,H,W)."""
    for name, video in (("source", source), ("edited", edited)):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or 0 in video.shape:
            raise ValueError(f"{name} must be a non-empty (F,H,W,3) uint8 array, got {video.shape} {video.dtype}")
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    if mask is not None and mask.shape != source.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not match the frames {source.shape[:3]}")


def grey(frames: np.ndarray) -> np.ndarray:
    """(F,H,W,3) uint8 RGB -> (F,H,W) uint8 luma."""
    return np.stack([cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames])


def grid_points(*, height: int, width: int, count: int = GRID_POINTS) -> np.ndarray:
    """(N,2) float32 (x, y) pixel centres on a regular grid of about `count` points, margins half a step."""
    step = max(MIN_GRID_STEP, int(round(np.sqrt(height * width / count))))
    xs = np.arange(step / 2, width, step, dtype=np.float32)
    ys = np.arange(step / 2, height, step, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def track_grid(*, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Track `points` (N,2) from frame 0 through (F,H,W) uint8 grey frames with pyramidal
    Lucas-Kanade, frame to frame -> positions (N,F,2) and alive (N,F) bool.

    A track is lost (alive False from then on) when LK fails, it leaves the frame, or tracking
    back from the next frame misses its position by more than FORWARD_BACKWARD_PX.
    """
    count, (height, width) = len(frames), frames.shape[1:3]
    positions = np.zeros((len(points), count, 2), dtype=np.float32)
    alive = np.zeros((len(points), count), dtype=bool)
    positions[:, 0], alive[:, 0] = points, True
    options = dict(winSize=(LK_WINDOW, LK_WINDOW), maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    for t in range(count - 1):
        here = np.ascontiguousarray(positions[:, t]).reshape(-1, 1, 2)
        ahead, found, _ = cv2.calcOpticalFlowPyrLK(frames[t], frames[t + 1], here, None, **options)
        back, found_back, _ = cv2.calcOpticalFlowPyrLK(frames[t + 1], frames[t], ahead, None, **options)
        ahead, back = ahead.reshape(-1, 2), back.reshape(-1, 2)
        inside = (ahead[:, 0] >= 0) & (ahead[:, 0] <= width - 1) & (ahead[:, 1] >= 0) & (ahead[:, 1] <= height - 1)
        consistent = np.linalg.norm(back - positions[:, t], axis=1) <= FORWARD_BACKWARD_PX
        ok = alive[:, t] & found.ravel().astype(bool) & found_back.ravel().astype(bool) & inside & consistent
        positions[:, t + 1] = np.where(ok[:, None], ahead, positions[:, t])
        alive[:, t + 1] = ok
    return positions, alive


def unit_displacements(*, positions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N,F,2), alive (N,F) -> unit displacement vectors (N,F-1,3) and valid (N,F-1).

    A moving point's displacement d becomes (d/|d|, 0); a static one (|d| < STATIC_PX) becomes
    (0, 0, 1), so two static points agree fully, and a static and a moving point not at all.
    """
    steps = positions[:, 1:] - positions[:, :-1]
    length = np.linalg.norm(steps, axis=2, keepdims=True)
    static = length < STATIC_PX
    planar = np.where(static, 0.0, steps / np.maximum(length, 1e-12))
    vectors = np.concatenate([planar, static.astype(np.float32)], axis=2).astype(np.float32)
    return vectors, alive[:, 1:]


def motion_fidelity(*, source: np.ndarray, edited: np.ndarray) -> Metric:
    """The paper's motion fidelity with OpenCV grid tracks: (F,H,W,3) source and edited -> Metric in [-1, 1].

    Tracks start on a grid of the first frame in both videos (track_grid). With unit displacements
    d (unit_displacements), S[n,m] = mean over the frames where edit track n and source track m are
    both alive of <d_edit[n,t], d_src[m,t]>; the score is the mean over n of max over m of S[n,m]
    (edit tracks that share no frame with any source track are left out). per_frame: per
    neighbouring pair, the mean agreement of each edit track with its best source track.
    extra: tracks, the lost share of each video's tracks, and `reverse` (mean over source tracks of
    their best edit track, the other half of the symmetric form). It misses reversed or mirrored
    motion when another part of the source moves that way (a best match exists); flow_metrics catches those.
    """
    check_pair(source=source, edited=edited)
    if len(source) < 2:
        raise ValueError("motion fidelity needs at least 2 frames")
    points = grid_points(height=source.shape[1], width=source.shape[2])
    tracks = {}
    for name, video in (("source", source), ("edited", edited)):
        positions, alive = track_grid(frames=grey(video), points=points)
        tracks[name] = (*unit_displacements(positions=positions, alive=alive), alive)
    (v_src, w_src, alive_src), (v_edit, w_edit, alive_edit) = tracks["source"], tracks["edited"]
    weighted_src, weighted_edit = v_src * w_src[..., None], v_edit * w_edit[..., None]
    shared = w_edit.astype(np.float32) @ w_src.astype(np.float32).T
    total = np.einsum("ntk,mtk->nm", weighted_edit, weighted_src)
    similarity = np.where(shared > 0, total / np.maximum(shared, 1), -np.inf)
    best = similarity.max(axis=1)
    scored = np.isfinite(best)
    value = float(best[scored].mean()) if scored.any() else 0.0
    reverse = similarity.max(axis=0)
    matched = similarity.argmax(axis=1)
    agreement = np.einsum("ntk,ntk->nt", weighted_edit, weighted_src[matched])
    valid = w_edit & w_src[matched] & scored[:, None]
    per_pair = np.where(valid.any(axis=0), (agreement * valid).sum(axis=0) / np.maximum(valid.sum(axis=0), 1), np.nan)
    extra = {
        "tracks": float(len(points)),
        "lost_source": float(1.0 - alive_src[:, -1].mean()),
        "lost_edited": float(1.0 - alive_edit[:, -1].mean()),
        "reverse": float(reverse[np.isfinite(reverse)].mean()) if np.isfinite(reverse).any() else 0.0,
    }
    return Metric(name="motion_fidelity_lk", value=value, higher_is_better=True, value_range="[-1, 1]",
                  model="opencv-lk (pyramidal Lucas-Kanade grid tracks)",
                  per_frame=tuple(float(x) for x in per_pair), extra=extra)


def _outside(*, mask: np.ndarray | None, shape: tuple[int, ...], grow: int = 0) -> np.ndarray:
    """(F,H,W) bool: the pixels compared (outside `mask` grown by `grow` pixels; all without a mask)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    if grow <= 0:
        return ~mask.astype(bool)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)  # the square window of the blur
    return ~np.stack([cv2.dilate(frame.astype(np.uint8), kernel) > 0 for frame in mask])


def _where(mask: np.ndarray | None) -> tuple[str, dict[str, float]]:
    if mask is None:
        return "all pixels (no mask given)", {"mask_coverage": 0.0}
    return "pixels outside the mask", {"mask_coverage": float(mask.mean())}


def _psnr(mse: float) -> float:
    return PSNR_CAP_DB if mse <= 0 else float(min(PSNR_CAP_DB, 10 * np.log10(255.0**2 / mse)))


def psnr_outside_mask(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None) -> Metric | None:
    """PSNR in dB of edited against source over the pixels outside `mask` (all pixels when None),
    the squared error averaged over those pixels only (so frames weigh by their unmasked pixels).
    Identical pixels give PSNR_CAP_DB; per_frame is NaN for a frame with no pixel outside the mask.
    None when the mask covers every pixel.
    """
    check_pair(source=source, edited=edited, mask=mask)
    outside = _outside(mask=mask, shape=source.shape[:3])
    if not outside.any():
        return None
    squared = ((source.astype(np.float64) - edited.astype(np.float64)) ** 2).mean(axis=3)
    per_frame = [_psnr(float(frame[keep].mean())) if keep.any() else float("nan")
                 for frame, keep in zip(squared, outside)]
    where, extra = _where(mask)
    return Metric(name="psnr_outside_mask", value=_psnr(float(squared[outside].mean())), higher_is_better=True,
                  value_range=f"[0, {PSNR_CAP_DB:g}] dB", model=f"psnr over {where}", per_frame=tuple(per_frame),
                  extra=extra)


def ssim_map(*, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two (H,W,3) uint8 images -> (H,W) float64 SSIM (Gaussian window, sigma 1.5), the mean over channels."""
    a, b = first.astype(np.float64), second.astype(np.float64)

    def blur(image: np.ndarray) -> np.ndarray:
        size = 2 * SSIM_RADIUS + 1
        return cv2.GaussianBlur(image, (size, size), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mean_a, mean_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mean_a**2, blur(b * b) - mean_b**2
    covariance = blur(a * b) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + SSIM_C1) * (2 * covariance + SSIM_C2)
    denominator = (mean_a**2 + mean_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (numerator / denominator).mean(axis=2)


def ssim_outside_mask(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None) -> Metric | None:
    """SSIM of edited against source averaged over the pixels at least SSIM_RADIUS pixels outside
    `mask` (whose windows see no masked pixel; all pixels when None). Range [-1, 1], 1 = identical.
    None when no such pixel is left.
    """
    check_pair(source=source, edited=edited, mask=mask)
    outside = _outside(mask=mask, shape=source.shape[:3], grow=SSIM_RADIUS)
    if not outside.any():
        return None
    maps = np.stack([ssim_map(first=s, second=e) for s, e in zip(source, edited)])
    per_frame = [float(frame[keep].mean()) if keep.any() else float("nan") for frame, keep in zip(maps, outside)]
    where, extra = _where(mask)
    if mask is not None:
        where = f"pixels {SSIM_RADIUS}+ px outside the mask"
    return Metric(name="ssim_outside_mask", value=float(maps[outside].mean()), higher_is_better=True,
                  value_range="[-1, 1]", model=f"ssim (gaussian window, sigma {SSIM_SIGMA}) over {where}",
                  per_frame=tuple(per_frame), extra=extra)
