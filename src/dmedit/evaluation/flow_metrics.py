"""Weight-free edit metrics on dense optical flow (OpenCV DIS): the end-point error between the
source's and the edit's flows, and the warp error of the edit under the source's flow.

Videos are numpy uint8 (F,H,W,3) RGB of equal shape with F >= 2. Flows are (H,W,2) float32 (dx, dy)
in pixels, computed one neighbouring pair at a time (forward: frame t -> t+1, backward: t+1 -> t)
and dropped after use, so memory does not grow with the clip.
"""

from __future__ import annotations

import cv2
import numpy as np

from dmedit.evaluation.metric_types import Metric
from dmedit.evaluation.metrics import check_pair, grey

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
OCCLUSION_RELATIVE = 0.01  # forward-backward check of Sundaram et al. (2010):
OCCLUSION_ABSOLUTE = 0.5  # |b + f(x + b)|^2 < 0.01 (|b|^2 + |f(x + b)|^2) + 0.5 keeps a pixel


def _sample(image: np.ndarray, *, flow: np.ndarray) -> np.ndarray:
    """image (H,W[,C]) sampled at x + flow(x) for every pixel x of a (H,W,2) flow, bilinear."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def visible(*, forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H,W) bool over frame t+1's pixels: the `backward` flow (t+1 -> t) lands inside frame t and
    the `forward` flow (t -> t+1) there brings it back (Sundaram et al.'s consistency check):
    neither occluded nor disoccluded."""
    height, width = backward.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    x_to, y_to = xs + backward[..., 0], ys + backward[..., 1]
    inside = (x_to >= 0) & (x_to <= width - 1) & (y_to >= 0) & (y_to <= height - 1)
    returned = _sample(forward, flow=backward)
    loop = ((backward + returned) ** 2).sum(axis=2)
    bound = OCCLUSION_RELATIVE * ((backward**2).sum(axis=2) + (returned**2).sum(axis=2)) + OCCLUSION_ABSOLUTE
    return inside & (loop < bound)


def _warp_pair(*, before: np.ndarray, after: np.ndarray, backward: np.ndarray, keep: np.ndarray) -> float:
    """Mean squared difference (RGB in [0,1]) between `after` and `before` carried along the
    backward flow, over the `keep` pixels (NaN when none)."""
    if not keep.any():
        return float("nan")
    warped = _sample(before.astype(np.float32) / 255.0, flow=backward)
    squared = ((after.astype(np.float32) / 255.0 - warped) ** 2).mean(axis=2)
    return float(squared[keep].mean())


def flow_metrics(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Metric]:
    """Both flow metrics from one pass over the neighbouring pairs: {"flow_epe", "warp_error"}.

    flow_epe: the mean end-point error in pixels between the edit's and the source's forward
    flows over every pixel of every pair; 0 when the edit moves exactly as the source. It catches
    frozen, reversed and mirrored motion (the flow changes sign or place). extra: the error inside
    and outside `mask` ((F,H,W) bool, True = object; pair t uses frame t's mask).
    warp_error (Lai et al. 2018): per pair, the mean squared difference (RGB in [0,1]) between
    edited frame t+1 and edited frame t carried along the source's flow, over the pixels the
    forward-backward check finds visible in both; the value is the mean over pairs. An edit as
    steady as the source scores the source's own warp error (extra `source`). It catches
    flicker, frozen and reversed motion. per_frame of both: one value per pair.
    """
    check_pair(source=source, edited=edited, mask=mask)
    if len(source) < 2:
        raise ValueError("flow metrics need at least 2 frames")
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    src_luma, edit_luma = grey(source), grey(edited)
    epe, edit_warp, source_warp, shares = [], [], [], []
    sums = {"inside_mask": [0.0, 0], "outside_mask": [0.0, 0]}
    for t in range(len(source) - 1):
        forward = dis.calc(src_luma[t], src_luma[t + 1], None)
        backward = dis.calc(src_luma[t + 1], src_luma[t], None)
        error = np.linalg.norm(dis.calc(edit_luma[t], edit_luma[t + 1], None) - forward, axis=2)
        epe.append(float(error.mean()))
        if mask is not None:
            for name, where in (("inside_mask", mask[t]), ("outside_mask", ~mask[t])):
                sums[name][0] += float(error[where].sum())
                sums[name][1] += int(where.sum())
        keep = visible(forward=forward, backward=backward)
        shares.append(float(keep.mean()))
        edit_warp.append(_warp_pair(before=edited[t], after=edited[t + 1], backward=backward, keep=keep))
        source_warp.append(_warp_pair(before=source[t], after=source[t + 1], backward=backward, keep=keep))
    extra = {name: total / count for name, (total, count) in sums.items() if count}
    warps = np.asarray(edit_warp)
    scored = np.isfinite(warps)
    return {
        "flow_epe": Metric(name="flow_epe", value=float(np.mean(epe)), higher_is_better=False,
                           value_range="[0, inf) px", model="opencv-dis (dense inverse search flow, medium preset)",
                           per_frame=tuple(epe), extra=extra),
        "warp_error": Metric(name="warp_error", value=float(warps[scored].mean()) if scored.any() else 0.0,
                             higher_is_better=False, value_range="[0, 1]",
                             model="opencv-dis source flow, forward-backward occlusion mask",
                             per_frame=tuple(edit_warp),
                             extra={"source": float(np.nanmean(source_warp)) if scored.any() else 0.0,
                                    "visible_fraction": float(np.mean(shares))}),
    }


def flow_endpoint_error(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None = None) -> Metric:
    """The end-point error of flow_metrics alone."""
    return flow_metrics(source=source, edited=edited, mask=mask)["flow_epe"]


def warp_error(*, source: np.ndarray, edited: np.ndarray) -> Metric:
    """The warp error of flow_metrics alone."""
    return flow_metrics(source=source, edited=edited)["warp_error"]
