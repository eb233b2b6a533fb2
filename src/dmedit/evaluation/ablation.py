"""`dmedit ablate`: the full method and the paper's three ablations (Table 3: without the mask,
without S-SSM, without T-SSM) on one clip with one seed, each run through runs.pipeline.run_edit with
the models loaded once, then scored (evaluation.py) and tabulated.

OUT_DIR receives each run's bundle (full.mp4, no-mask.mp4, no-s-ssm.mp4, no-t-ssm.mp4 with their
.json reports and the .masks/ of each masked run), the mask they share (mask.masks/, mask.mask.mp4,
when it is detected), and ablation.md, ablation.json (every metric), ablation.png (per-frame curves), ablation.mp4 (the
four results side by side, labelled) and index.html (the page: evaluation.ablation_page). Every
file is written under a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dmedit.core.console import Reporter
from dmedit.core.errors import UsageError
from dmedit.core.files import writable_folder, write_json, write_text
from dmedit.evaluation.ablation_page import PAGE_NAME, write_ablation_page
from dmedit.evaluation.compare import EvalRequest
from dmedit.evaluation.metric_report import markdown_table, plot_curves
from dmedit.evaluation.metric_types import Metric
from dmedit.evaluation.scoring import check_scorers, evaluate
from dmedit.media.fit import side_by_side
from dmedit.media.video import probe, read_frames, select_span, write_video
from dmedit.models.model_cache import ModelCache
from dmedit.models.registry import load_registry
from dmedit.models.scorers.choice import Scorers
from dmedit.runs.outputs import companion, is_complete, remove_stale_partials, staged_bundle
from dmedit.runs.pipeline import run_edit, run_mask_preview
from dmedit.runs.settings import MaskRequest, OutputSettings, RunRequest

VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("full", "full method", {}),
    ("no-mask", "w/o mask", {"use_mask": False}),
    ("no-s-ssm", "w/o S-SSM", {"lambda_spatial": 0.0}),
    ("no-t-ssm", "w/o T-SSM", {"lambda_temporal": 0.0}),
)
"""(file name, label, the EditOverrides changed from the full method)."""
FULL_MASK_WARNING = ("--mask full: the 'w/o mask' run edits the whole frame as the full method does, so its row "
                     "repeats the full method's; drop --mask full (the mask is then detected) or give a mask file")
TABLE_FILES = ("ablation.md", "ablation.json", "ablation.png", "ablation.mp4")
MASK_BASE = "mask"


@dataclass(frozen=True)
class AblationRequest:
    """The full method's run request (its output path is not used), the folder receiving every
    file, the models of the model-based metrics, and whether existing files are replaced."""

    run: RunRequest
    out_dir: Path
    scorers: Scorers
    overwrite: bool = False


def planned_files(*, request: AblationRequest) -> list[Path]:
    """Every file and folder the ablation writes in out_dir."""
    names = [f"{name}{suffix}" for name, _, _ in VARIANTS for suffix in (".mp4", ".json")]
    names += [f"{name}.masks" for name, _, changes in VARIANTS  # the mask each masked run kept
              if request.run.mask.source != "full" and changes.get("use_mask", True)]
    if request.run.mask.source is None:
        names += [f"{MASK_BASE}.masks", f"{MASK_BASE}.mask.mp4"]
    pages = [PAGE_NAME] if request.run.output.html else []
    return [request.out_dir / name for name in (*names, *TABLE_FILES, *pages)]


def _check_request(*, request: AblationRequest) -> None:
    try:
        mode = request.run.video.stat().st_mode
    except OSError:
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        raise UsageError(f"{request.run.video}: ablate reads the video four times; give a file, not a pipe")
    if request.out_dir.exists() and not request.out_dir.is_dir():
        raise UsageError(f"--out-dir {request.out_dir}: is a file, not a folder")
    check_scorers(registry=load_registry(registry_file=request.run.model.registry), scorers=request.scorers)
    if not request.overwrite:
        kept = {*_finished_variants(request=request), *_mask_files(request=request)}
        existing = [path for path in planned_files(request=request) if path.exists() and path not in kept]
        if existing:
            raise UsageError(f"{existing[0]} exists; pass --overwrite or choose another --out-dir")


def _mask_files(*, request: AblationRequest) -> list[Path]:
    """The shared mask a detecting ablation wrote, reused by a rerun without --overwrite."""
    return [request.out_dir / f"{MASK_BASE}.masks", request.out_dir / f"{MASK_BASE}.mask.mp4"]


def _finished_variants(*, request: AblationRequest) -> list[Path]:
    """The bundles (MP4 and report) of variants a previous run of this ablation finished: a rerun
    without --overwrite scores them instead of running them again."""
    finished = []
    for name, _, changes in VARIANTS:
        output = request.out_dir / f"{name}.mp4"
        if is_complete(output=output) and _same_settings(
                report=companion(output=output, suffix=".json"),
                variant=_variant(base=request.run, request=request, name=name, changes=changes)):
            finished += [output, companion(output=output, suffix=".json"), companion(output=output, suffix=".masks")]
    return finished


def _same_settings(*, report: Path, variant: RunRequest) -> bool:
    """The report's run was asked what `variant` asks (its output and the shared mask's folder aside)."""
    def comparable(options: dict[str, Any]) -> str:
        kept = {key: value for key, value in options.items() if key != "output"}
        kept["mask"] = {key: value for key, value in kept.get("mask", {}).items() if key != "source"}
        return json.dumps(kept, sort_keys=True, default=str)

    try:
        return comparable(json.loads(report.read_text(encoding="utf-8"))["options"]) == comparable(variant.to_dict())
    except (OSError, ValueError, KeyError):
        return False


def _shared_mask(*, request: AblationRequest, reporter: Reporter) -> RunRequest:
    """The run request with a mask file every variant uses: the user's, or one detected once here."""
    base = request.run
    if base.mask.source is not None:
        return base
    folder = request.out_dir / f"{MASK_BASE}.masks"
    if folder.is_dir() and not request.overwrite:
        return dataclasses.replace(base, mask=dataclasses.replace(base.mask, source=str(folder.absolute())))
    mask = dataclasses.replace(base.mask, prompt=base.detection_prompt)
    preview = MaskRequest(video=base.video, span=base.span, mask=mask, model=base.model,
                          output=OutputSettings(path=request.out_dir / MASK_BASE, overwrite=request.overwrite))
    _, folder = run_mask_preview(request=preview, reporter=reporter)
    return dataclasses.replace(base, mask=dataclasses.replace(base.mask, source=str(folder.absolute())))


def _variant(*, base: RunRequest, request: AblationRequest, name: str, changes: dict[str, Any]) -> RunRequest:
    output = dataclasses.replace(base.output, path=request.out_dir / f"{name}.mp4", overwrite=request.overwrite,
                                 skip_existing=False)
    return dataclasses.replace(base, edit=dataclasses.replace(base.edit, **changes), output=output, resume=False)


def run_ablation(*, request: AblationRequest, reporter: Reporter) -> str:
    """Run the four variants, score them, write the table files; returns the Markdown table."""
    _check_request(request=request)
    if request.run.mask.source == "full":
        reporter.warn(FULL_MASK_WARNING)
    writable_folder(folder=request.out_dir)
    base = _shared_mask(request=request, reporter=reporter)
    models = ModelCache()
    finished = set() if request.overwrite else set(_finished_variants(request=request))
    for index, (name, label, changes) in enumerate(VARIANTS, start=1):
        output = request.out_dir / f"{name}.mp4"
        if output in finished:
            reporter.line(f"ablation {index}/{len(VARIANTS)}: {label}: {output} is done, scored as it is")
            continue
        reporter.line(f"ablation {index}/{len(VARIANTS)}: {label} -> {output}")
        run_edit(request=_variant(base=base, request=request, name=name, changes=changes), reporter=reporter,
                 models=models)
    models.clear()  # the video model; the scorers load into it next, once for all four
    scores: dict[str, dict[str, Metric]] = {}
    records: dict[str, Any] = {}
    for name, label, changes in VARIANTS:
        reporter.line(f"scoring {label}")
        edited = request.out_dir / f"{name}.mp4"
        metrics, record = evaluate(request=EvalRequest(
            source=base.video, edited=edited, target_text=base.tgt, registry=base.model.registry,
            device=base.model.device, scorers=request.scorers), models=models)
        scores[label] = metrics
        records[name] = {"label": label, "changes": changes, "output": str(edited), "eval": record}
    table = markdown_table(runs=scores)
    remove_stale_partials(output=request.out_dir / "ablation.md")  # of a killed ablate
    with staged_bundle(output=request.out_dir / "ablation.md") as folder:  # the table's files: all or none
        write_json(path=folder / "ablation.json", data={
            "video": str(base.video), "src": base.src, "tgt": base.tgt, "model": base.model.name,
            "seed": base.edit.seed, "mask": base.mask.source, "scorers": request.scorers.to_text(), "runs": records})
        write_text(path=folder / "ablation.md", text=_markdown_document(base=base, table=table))
        plot_curves(path=folder / "ablation.png", series=scores)
        _write_side_by_side(request=request, folder=folder)
        if request.run.output.html:
            write_ablation_page(out_dir=request.out_dir, folder=folder, base=base, scores=scores,
                                variants=[(name, label) for name, label, _ in VARIANTS],
                                scorers=request.scorers.to_text())
    return table


def _markdown_document(*, base: RunRequest, table: str) -> str:
    return (f"# Ablation: {base.video.name}, {base.src!r} -> {base.tgt!r}\n\n"
            f"Model `{base.model.name}`, seed {base.edit.seed}, mask `{base.mask.source}`; one run per row "
            "(the paper's Table 3: the full method, then without the mask, S-SSM or T-SSM).\n\n" + table)


def labelled(*, frames: np.ndarray, label: str) -> np.ndarray:
    """(T,H,W,3) uint8 -> (T,H+bar,W,3): a dark bar above the frames with `label` in white."""
    width = frames.shape[2]
    bar = max(12, frames.shape[1] // 10)
    scale = bar / 32
    strip = np.full((bar, width, 3), 24, np.uint8)
    cv2.putText(strip, label, (3, bar - max(3, bar // 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([np.broadcast_to(strip, (len(frames), *strip.shape)), frames], axis=1)


def _write_side_by_side(*, request: AblationRequest, folder: Path) -> None:
    """folder/ablation.mp4: the four results left to right, each under its label, at the full run's rate."""
    panels, fps = [], None
    for name, label, _ in VARIANTS:
        info = probe(path=request.out_dir / f"{name}.mp4")
        fps = fps or info.fps
        frames = read_frames(info=info, span=select_span(info=info, start=None, frames=None))
        panels.append(labelled(frames=frames, label=label))
    count = min(len(panel) for panel in panels)
    write_video(path=folder / "ablation.mp4", frames=side_by_side(panels=[p[:count] for p in panels]), fps=fps)
