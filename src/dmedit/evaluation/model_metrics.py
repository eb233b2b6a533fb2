"""The paper's model-based metrics (Table 1): Text-Align, Frame-Con, Frame-LPIPS, Motion-Fidelity.

API for `dmedit eval`, `run --eval` and `ablate` (evaluation.py):

    names = model_metric_names()   # ("text_align", "frame_con", "frame_lpips", "motion_fidelity")
    scores = score_with_models(source=src, edited=out, target_text="a parrot", registry=registry,
                               device=torch.device("cuda"), scorers=None, metrics=None)
    scores["text_align"].value     # a metric_types.Metric per computed name

- source, edited: (F, H, W, 3) uint8 RGB of one shape, the edited span only.
- target_text None: no "text_align". Fewer than 2 frames: no "frame_con" and no "motion_fidelity".
- scorers: role -> `[scorers.NAME]` entry, merged over DEFAULT_SCORERS (the real weights);
  TINY_SCORERS are the offline random-weight stand-ins for tests and smoke runs.
- metrics: the names to compute (None: all four); only their models are loaded.
- Every needed entry's weights are located before any model loads: missing ones raise ModelError
  (exit 4) with hub's message (`dmedit models pull NAME`; for lpips-alex, how to write its
  folder); bad arguments raise UsageError, clips of different shapes InputError.
  `check_scorer_weights(registry=, scorers=, metrics=)` runs those checks alone, before decoding.

What each metric is (value, range, direction):
- text_align: CLIP-S (Hessel et al. 2021) of the target text and each edited frame,
  2.5 * max(cos, 0), mean over frames; [0, 2.5], higher is better. extra: "clip_s" (the value)
  and "cosine" (the raw mean cosine, [-1, 1]). The paper's values around 0.82 read as CLIP-S.
- frame_con: mean CLIP image-embedding cosine of neighbouring edited frames; [-1, 1], higher
  is better; per_frame has one value per pair.
- frame_lpips: mean LPIPS (AlexNet, v0.1) of each source frame and its edited frame; 0 for
  identical frames, typically below 1; lower is better.
- motion_fidelity: grid tracks (TRACK_GRID² points on the first frame) in source and edit;
  unit displacements d (a displacement of zero stays zero); S[n, m] = mean over steps t of
  sim(d_edit[n, t], d_src[m, t]), where sim is the cosine, 1 when both points stand still and 0
  when only one does; score = mean over n of max over m; [-1, 1], higher is better, 1 for
  identical clips. per_frame: for each step, the mean over n of sim with n's best source track.
  The tracker is EfficientLoFTR chained over frame pairs, not the paper's CoTracker (scorers/tracker.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dmedit.core.errors import InputError, ModelError, UsageError
from dmedit.evaluation.metric_types import Metric
from dmedit.core.config import ScorerEntry
from dmedit.models.hub import resolve_weights
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import Registry
from dmedit.models.scorers import ROLES
from dmedit.models.scorers.choice import DEFAULT_SCORERS

if TYPE_CHECKING:
    import torch

METRIC_ROLES = {"text_align": "clip", "frame_con": "clip", "frame_lpips": "lpips", "motion_fidelity": "tracker"}
CLIP_S_WEIGHT = 2.5
TRACK_GRID = 20
STILL_PX = 1e-6
"""A displacement shorter than this (source pixels) counts as standing still."""


def model_metric_names() -> tuple[str, ...]:
    """The metrics `score_with_models` can compute, in the paper's order."""
    return tuple(METRIC_ROLES)


def score_with_models(
    *, source: np.ndarray, edited: np.ndarray, target_text: str | None, registry: Registry,
    device: "torch.device", scorers: Mapping[str, str] | None = None, metrics: Collection[str] | None = None,
    models: ModelCache | None = None,
) -> dict[str, Metric]:
    """Score an edit with the model-based metrics (see the module docstring for each one); `models`
    keeps the loaded scorers for later calls (None: loaded for this call alone)."""
    _check_clips(source=source, edited=edited)
    wanted = _wanted_metrics(metrics=metrics, target_text=target_text, frames=len(edited))
    entries = _scorer_entries(registry=registry, scorers=scorers, roles={METRIC_ROLES[name] for name in wanted})
    folders = {role: _weights_folder(entry=entry) for role, entry in entries.items()}
    models = models if models is not None else ModelCache()
    loaded = {role: models.scorer(entry=entries[role], folder=folders[role], device=device) for role in entries}
    results: dict[str, Metric] = {}
    if "clip" in loaded:
        results.update(_clip_metrics(scorer=loaded["clip"], edited=edited, target_text=target_text,
                                     wanted=wanted, model=entries["clip"].name))
    if "lpips" in loaded:
        distances = loaded["lpips"].distances(source=source, edited=edited)
        results["frame_lpips"] = Metric(
            name="frame_lpips", value=float(distances.mean()), higher_is_better=False,
            value_range="[0, inf), 0 = identical, typically below 1", model=entries["lpips"].name,
            per_frame=tuple(float(value) for value in distances),
        )
    if "tracker" in loaded:
        tracker = loaded["tracker"]
        score, per_step = motion_fidelity_from_tracks(
            source_tracks=tracker.grid_tracks(frames=source, grid_size=TRACK_GRID),
            edited_tracks=tracker.grid_tracks(frames=edited, grid_size=TRACK_GRID),
        )
        results["motion_fidelity"] = Metric(
            name="motion_fidelity", value=score, higher_is_better=True, value_range="[-1, 1]",
            model=entries["tracker"].name, per_frame=tuple(float(value) for value in per_step),
        )
    return {name: results[name] for name in model_metric_names() if name in results}


def check_scorer_weights(
    *, registry: Registry, scorers: Mapping[str, str] | None = None, metrics: Collection[str] | None = None,
) -> None:
    """Without loading anything: the scorer entries `metrics` (None: all four) need exist, fit their roles
    and have their weights here (builder entries are built); UsageError / ModelError as score_with_models."""
    names = _wanted_metrics(metrics=metrics, target_text="", frames=2)
    for entry in _scorer_entries(registry=registry, scorers=scorers,
                                 roles={METRIC_ROLES[name] for name in names}).values():
        _weights_folder(entry=entry)


def motion_fidelity_from_tracks(*, source_tracks: np.ndarray, edited_tracks: np.ndarray) -> tuple[float, np.ndarray]:
    """Tracks (M, F, 2) of the source and (N, F, 2) of the edit, x, y per frame -> (score, per step (F-1,)).

    score = mean over n of max over m of S[n, m], S[n, m] = mean over t of sim(d_edit[n, t], d_src[m, t])
    for unit displacements d; sim is their dot product, or 1 when both are still (STILL_PX).
    """
    source_steps = _unit_steps(tracks=source_tracks)
    edited_steps = _unit_steps(tracks=edited_tracks)
    source_still = (~source_steps.any(axis=-1)).astype(np.float64)
    edited_still = (~edited_steps.any(axis=-1)).astype(np.float64)
    count = source_steps.shape[1]
    similarity = (np.einsum("ntc,mtc->nm", edited_steps, source_steps) + edited_still @ source_still.T) / count
    best = similarity.argmax(axis=1)
    per_pair = (edited_steps * source_steps[best]).sum(axis=-1) + edited_still * source_still[best]
    return float(similarity.max(axis=1).mean()), per_pair.mean(axis=0)


def _unit_steps(*, tracks: np.ndarray) -> np.ndarray:
    """(N, F, 2) positions -> (N, F-1, 2) unit displacements, zero where a point stands still."""
    steps = np.diff(np.asarray(tracks, dtype=np.float64), axis=1)
    lengths = np.linalg.norm(steps, axis=-1, keepdims=True)
    return np.where(lengths > STILL_PX, steps / np.maximum(lengths, STILL_PX), 0.0)


def _clip_metrics(*, scorer: Any, edited: np.ndarray, target_text: str | None, wanted: list[str],
                  model: str) -> dict[str, Metric]:
    embeddings = scorer.image_embeddings(frames=edited)
    results = {}
    if "text_align" in wanted:
        cosines = (embeddings @ scorer.text_embedding(text=target_text)).numpy().astype(np.float64)
        clip_s = CLIP_S_WEIGHT * np.maximum(cosines, 0.0)
        results["text_align"] = Metric(
            name="text_align", value=float(clip_s.mean()), higher_is_better=True,
            value_range="[0, 2.5] (CLIP-S = 2.5 x max(cosine, 0))", model=model,
            per_frame=tuple(float(value) for value in clip_s),
            extra={"clip_s": float(clip_s.mean()), "cosine": float(cosines.mean())},
        )
    if "frame_con" in wanted:
        neighbours = (embeddings[:-1] * embeddings[1:]).sum(dim=-1).numpy().astype(np.float64)
        results["frame_con"] = Metric(
            name="frame_con", value=float(neighbours.mean()), higher_is_better=True, value_range="[-1, 1]",
            model=model, per_frame=tuple(float(value) for value in neighbours),
        )
    return results


def _check_clips(*, source: np.ndarray, edited: np.ndarray) -> None:
    for label, clip in (("source", source), ("edited", edited)):
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8 or len(clip) == 0:
            raise InputError(f"the {label} clip must be (frames, height, width, 3) uint8 RGB, got {clip.dtype} "
                             f"{tuple(clip.shape)}")
    if source.shape != edited.shape:
        raise InputError(f"source and edited clips differ: {tuple(source.shape)} and {tuple(edited.shape)} "
                         "(frames, height, width, channels)")


def _wanted_metrics(*, metrics: Collection[str] | None, target_text: str | None, frames: int) -> list[str]:
    names = list(model_metric_names() if metrics is None else metrics)
    unknown = [name for name in names if name not in METRIC_ROLES]
    if unknown:
        raise UsageError(f"unknown model metric {unknown[0]!r}; known: {', '.join(model_metric_names())}")
    if target_text is None:
        names = [name for name in names if name != "text_align"]
    if frames < 2:
        names = [name for name in names if name not in ("frame_con", "motion_fidelity")]
    return names


def _scorer_entries(*, registry: Registry, scorers: Mapping[str, str] | None,
                    roles: set[str]) -> dict[str, ScorerEntry]:
    chosen = {**DEFAULT_SCORERS, **(scorers or {})}
    unknown = sorted(set(chosen) - set(DEFAULT_SCORERS))
    if unknown:
        raise UsageError(f"unknown scorer role {unknown[0]!r}; roles: {', '.join(DEFAULT_SCORERS)}")
    entries = {}
    for role in sorted(roles):
        entry = registry.scorer(chosen[role])
        if ROLES.get(entry.family) != role:
            raise UsageError(f"scorer {entry.name!r} is a {entry.family} model; the {role} role needs one of "
                             f"family {', '.join(family for family, plays in ROLES.items() if plays == role)}")
        entries[role] = entry
    return entries


def _weights_folder(*, entry: ScorerEntry):
    try:
        return resolve_weights(entry=entry)
    except ModelError as error:
        if entry.family == "lpips" and entry.path and not entry.builder:
            raise ModelError(f"{error} Write that folder with `python -m dmedit.models.scorers.lpips_weights "
                             f"ALEXNET.pth LPIPS_ALEX.pth {entry.path}` (README: Metric models).") from error
        raise
