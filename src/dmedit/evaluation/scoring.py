"""Scoring an edit: the weight-free metrics (metrics.py, flow_metrics.py) and the model-based ones
(model_metrics.py) of the frames `compare` aligned, and the record written to JSON. Used by
`dmedit eval` (`evaluate`), `dmedit ablate` (ablation.py) and `dmedit run --eval` (`RunScores`,
an extra of the run's bundle, given the finished clip as plain data).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping

import numpy as np

from dmedit.core.config import ModelEntry
from dmedit.core.console import Reporter
from dmedit.core.errors import ModelError
from dmedit.evaluation.compare import Compared, EvalRequest, load_compared
from dmedit.evaluation.flow_metrics import flow_metrics
from dmedit.evaluation.metric_report import plot_curves
from dmedit.evaluation.metric_types import Metric
from dmedit.evaluation.metrics import motion_fidelity, psnr_outside_mask, ssim_outside_mask
from dmedit.evaluation.model_metrics import METRIC_ROLES, check_scorer_weights, score_with_models
from dmedit.models.backends import resolve_device
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import Registry, load_registry
from dmedit.models.scorers.choice import Scorers
from dmedit.runs.extras import FinishedClip, RunExtra
from dmedit.runs.outputs import companion
from dmedit.runs.settings import RunRequest

if TYPE_CHECKING:
    import torch


def check_scorers(*, registry: Registry, scorers: Scorers) -> dict[str, str]:
    """Before any frame is decoded, without loading anything: every scorer entry the model-based
    metrics use exists (UsageError) and its weights are here (a builder entry is built). A missing
    one is a ModelError (with the `dmedit models pull` hint) when `scorers.required`; otherwise its
    metrics are skipped -> {metric: the reason} (empty when every one can run)."""
    if not scorers.enabled:
        return {}
    if scorers.required:
        check_scorer_weights(registry=registry, scorers=scorers.mapping())
        return {}
    skipped: dict[str, str] = {}
    for role in dict.fromkeys(METRIC_ROLES.values()):
        metrics = [name for name, owner in METRIC_ROLES.items() if owner == role]
        try:
            check_scorer_weights(registry=registry, scorers=scorers.mapping(), metrics=metrics)
        except ModelError as error:
            skipped.update(dict.fromkeys(metrics, str(error)))
    return skipped


def weight_free_metrics(*, source: np.ndarray, edited: np.ndarray, mask: np.ndarray | None) -> dict[str, Metric]:
    """Every weight-free metric of (F,H,W,3) source and edited under an (F,H,W) bool mask; the motion
    ones need F >= 2, the outside-mask ones a pixel outside the mask."""
    found: list[Metric | None] = []
    if len(source) >= 2:
        found += [motion_fidelity(source=source, edited=edited),
                  *flow_metrics(source=source, edited=edited, mask=mask).values()]
    found += [psnr_outside_mask(source=source, edited=edited, mask=mask),
              ssim_outside_mask(source=source, edited=edited, mask=mask)]
    return {metric.name: metric for metric in found if metric is not None}


def score(*, compared: Compared, scorers: Scorers, registry: Registry | None, device: "torch.device | None",
          models: ModelCache | None = None, skipped: Collection[str] = ()) -> dict[str, Metric]:
    """The model-based metrics but the `skipped` ones (when `scorers.enabled`; model_metrics.py,
    their models kept in `models`) then the weight-free ones."""
    scores: dict[str, Metric] = {}
    wanted = [name for name in METRIC_ROLES if name not in skipped]
    if scorers.enabled and wanted:
        scores.update(score_with_models(source=compared.source, edited=compared.edited,
                                        target_text=compared.target_text, registry=registry, device=device,
                                        scorers=scorers.mapping(), metrics=wanted, models=models))
    scores.update(weight_free_metrics(source=compared.source, edited=compared.edited, mask=compared.mask))
    return scores


def _finite(value: Any) -> Any:
    """NaN and infinities become None (JSON has neither), inside lists and dicts too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def eval_record(*, compared: Compared, metrics: Mapping[str, Metric], scorers: Scorers, seconds: float,
                skipped: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON record of one evaluation (the `eval` key of a run report, `dmedit eval --json`)."""
    frames, height, width = compared.source.shape[:3]
    coverage = None if compared.mask is None else round(float(compared.mask.mean()), 6)
    return _finite({
        "span": {"from": compared.span_from, "frames": frames, "source_indices": list(compared.indices)},
        "size": {"width": width, "height": height},
        "mask": {"from": compared.mask_from, "coverage": coverage},
        "target_text": compared.target_text, "scorers": scorers.to_text(),
        "metrics": {name: metric.as_json() for name, metric in metrics.items()}, "skipped": dict(skipped or {}),
        "notes": list(compared.notes), "seconds": round(seconds, 3),
    })


def evaluate(*, request: EvalRequest, models: ModelCache | None = None) -> tuple[dict[str, Metric], dict[str, Any]]:
    """`dmedit eval`: the metrics and their JSON record for the request (scorers kept in `models`)."""
    started = time.perf_counter()
    registry, device, skipped = None, None, {}
    if request.scorers.enabled:
        registry, device = load_registry(registry_file=request.registry), resolve_device(name=request.device)
        skipped = check_scorers(registry=registry, scorers=request.scorers)
    compared = load_compared(request=request)
    metrics = score(compared=compared, scorers=request.scorers, registry=registry, device=device, models=models,
                    skipped=skipped)
    return metrics, eval_record(compared=compared, metrics=metrics, scorers=request.scorers,
                                seconds=time.perf_counter() - started, skipped=skipped)


@dataclass(frozen=True)
class RunScores:
    """`dmedit run --eval` as an extra of the run's bundle (runs.extras.RunExtra): its scorers'
    weights checked at plan time; the finished clip scored into the report's `eval` key, with the
    per-frame curves in OUT.eval.png."""

    scorers: Scorers
    reporter: Reporter

    def check(self, *, request: RunRequest, entry: ModelEntry, registry: Registry, device: "torch.device") -> None:
        report_skipped(reporter=self.reporter, skipped=check_scorers(registry=registry, scorers=self.scorers))

    def write(self, *, clip: FinishedClip, folder: Path, output: Path) -> dict[str, Any]:
        started = time.perf_counter()
        compared = Compared(source=clip.source, edited=clip.edited, mask=clip.mask, indices=clip.indices,
                            span_from="run", target_text=clip.target_text, mask_from=clip.mask_origin)
        skipped = check_scorers(registry=clip.registry, scorers=self.scorers)
        metrics = score(compared=compared, scorers=self.scorers, registry=clip.registry, device=clip.device,
                        models=clip.models, skipped=skipped)
        plot_curves(path=folder / companion(output=output, suffix=".eval.png").name, series={"edit": metrics})
        record = eval_record(compared=compared, metrics=metrics, scorers=self.scorers,
                             seconds=time.perf_counter() - started, skipped=skipped)
        return {"eval": record}


def report_skipped(*, reporter: Reporter, skipped: Mapping[str, str]) -> None:
    """One line per model metric skipped for want of its weights, naming what would add them."""
    for name, reason in skipped.items():
        reporter.line(f"skipped {name}: {reason}")


def run_extras(*, request: RunRequest, reporter: Reporter) -> tuple[RunExtra, ...]:
    """What a `dmedit run` request adds to its bundle: its scores with --eval (the metrics it skips
    said on `reporter` when the plan checks them)."""
    return (RunScores(scorers=request.output.scorers, reporter=reporter),) if request.output.eval else ()
