"""What `dmedit models`, `models show`, `models pull` and `models convert` print: the registry seen by a user."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from dmedit.core.config import DetectorEntry, EditConfig, ModelEntry, ScorerEntry
from dmedit.core.console import Reporter
from dmedit.core.errors import UsageError
from dmedit.models.convert import convert_folder, pickle_only_folders
from dmedit.models.download import pull
from dmedit.models.hub import entry_kind, local_model_dir, weights_present
from dmedit.models.registry import Registry, load_registry


SSM_REDUCTIONS = {
    "mean": "per key layer the mean of the squared map differences (S-SSM over N x HW x HW entries, T-SSM over "
            "N x N), averaged over the layers",
    "sum": "per key layer the paper's Eq. 12, (1/N) sum_n ||SS^n - SS^n_src||^2, and Eq. 15, ||TS - TS_src||^2, "
           "summed over the layers",
}
"""What --ssm-reduction computes, as `models show` says it."""
WEIGHT_FORMATS = {
    "safetensors": "loaded as they are",
    "pickle": "the revision holds pickle checkpoints only; `dmedit models pull` converts them to safetensors in "
              "the cache (no code in them is run)",
}
"""What an entry's `weights` key says, as `models show` says it."""


def _registry(registry_file: Path | None) -> Registry:
    return load_registry(registry_file=registry_file)


def _find(*, name: str, registry_file: Path | None) -> ModelEntry | DetectorEntry | ScorerEntry:
    registry = _registry(registry_file)
    if name in registry.models:
        return registry.models[name]
    if name in registry.detectors:
        return registry.detectors[name]
    if name in registry.scorers:
        return registry.scorers[name]
    return registry.model(name)


def _where(entry: ModelEntry | DetectorEntry | ScorerEntry) -> str:
    if entry.path:
        return entry.path
    if entry.builder:
        return f"built offline by {entry.builder!r} into the dmedit cache"
    return f"{entry.repo}@{(entry.revision or 'main')[:12]}"


def model_rows(*, registry_file: Path | None) -> list[str]:
    """One header and one line per entry: name, family, resolution, frames, weights present, source."""
    registry = _registry(registry_file)
    rows = [f"{'name':22} {'family':15} {'size':9} {'frames':8} {'weights':8} source"]
    for entry in registry.models.values():
        present = _presence(entry)
        size = f"{entry.width}x{entry.height}"
        frames = f"{entry.frames}/{entry.max_frames}"
        rows.append(f"{entry.name:22} {entry.family:15} {size:9} {frames:8} {present:8} {_where(entry)}")
    for entry in (*registry.detectors.values(), *registry.scorers.values()):
        present = _presence(entry)
        rows.append(f"{entry.name:22} {entry.family:15} {'-':9} {'-':8} {present:8} {_where(entry)}")
    return rows


def _presence(entry: ModelEntry | DetectorEntry | ScorerEntry) -> str:
    """here, missing, builds (a builder entry not built yet) or convert (pickle weights only)."""
    if not weights_present(entry=entry):
        return "builds" if entry.builder else "missing"
    folder = local_model_dir(entry=entry)
    return "convert" if folder is not None and pickle_only_folders(folder=folder) else "here"


def describe_entry(*, name: str, registry_file: Path | None) -> str:
    """Every field of one entry, then where its weights are and whether they are present."""
    entry = _find(name=name, registry_file=registry_file)
    kind = entry_kind(entry=entry)
    lines = [f"{'kind':16} {kind}"]
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if field.name == "revision" and value is None and entry.repo:
            value = "unpinned (the hub's main branch when pulled)"
        if field.name == "weights":
            value = f"{value}: {WEIGHT_FORMATS[value]}"
        lines.append(f"{field.name:16} {value}")
    if isinstance(entry, ModelEntry):
        reduction = EditConfig().merged(dict(entry.defaults)).ssm_reduction
        lines.append(f"{'ssm_reduction':16} {reduction}: {SSM_REDUCTIONS[reduction]}")
    presence = {"here": "present", "builds": "missing (built on first use)", "missing": "missing",
                "convert": f"pickle only: run `dmedit models convert {local_model_dir(entry=entry)}`"}
    lines.append(f"{'on disk':16} {presence[_presence(entry)]} ({_where(entry)})")
    return "\n".join(lines)


def pull_entry(*, name: str, registry_file: Path | None, reporter: Reporter | None = None) -> Path:
    """`download.pull` of entry `name` and, for a cascade, of each stage; each conversion of pickle
    weights is a line on `reporter`."""
    entry = _find(name=name, registry_file=registry_file)
    if entry.path and not entry.builder:
        raise UsageError(f"model {name!r} is a local folder ({entry.path}); there is nothing to pull; "
                         f"`dmedit models convert {entry.path}` converts pickle weights in it")
    folder = pull(entry=entry, reporter=reporter)
    for stage in getattr(entry, "stages", ()):  # a cascade: every stage too (local folders have nothing to pull)
        stage_entry = _registry(registry_file).model(stage)
        if stage_entry.builder or not stage_entry.path:
            pull(entry=stage_entry, reporter=reporter)
    return folder


def conversion_lines(*, folder: Path, remove_pickles: bool) -> Iterator[str]:
    """What `dmedit models convert FOLDER` prints: a line per checkpoint as it is converted, then a count."""
    folder = folder.expanduser()
    done = already = 0
    for conversion in convert_folder(folder=folder, remove_pickles=remove_pickles):
        done, already = done + conversion.converted, already + (not conversion.converted)
        yield conversion.describe(root=folder)
    if done + already == 0:
        yield f"{folder}: no pickle checkpoints (.bin, .pt, .pth), nothing to convert"
    else:
        yield f"{folder}: {done} converted, {already} already converted"
