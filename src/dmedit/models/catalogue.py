"""What `dmedit models`, `models show` and `models pull` print: the registry seen by a user."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dmedit.core.config import DetectorEntry, EditConfig, ModelEntry, ScorerEntry
from dmedit.core.errors import UsageError
from dmedit.models.hub import pull, weights_present
from dmedit.models.registry import Registry, load_registry


SSM_REDUCTIONS = {
    "mean": "per key layer the mean of the squared map differences (S-SSM over N x HW x HW entries, T-SSM over "
            "N x N), averaged over the layers",
    "sum": "per key layer the paper's Eq. 12, (1/N) sum_n ||SS^n - SS^n_src||^2, and Eq. 15, ||TS - TS_src||^2, "
           "summed over the layers",
}
"""What --ssm-reduction computes, as `models show` says it."""


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
        present = "here" if weights_present(entry=entry) else "missing"
        if entry.builder and not present == "here":
            present = "builds"
        size = f"{entry.width}x{entry.height}"
        frames = f"{entry.frames}/{entry.max_frames}"
        rows.append(f"{entry.name:22} {entry.family:15} {size:9} {frames:8} {present:8} {_where(entry)}")
    for entry in (*registry.detectors.values(), *registry.scorers.values()):
        present = "here" if weights_present(entry=entry) else ("builds" if entry.builder else "missing")
        rows.append(f"{entry.name:22} {entry.family:15} {'-':9} {'-':8} {present:8} {_where(entry)}")
    return rows


def describe_entry(*, name: str, registry_file: Path | None) -> str:
    """Every field of one entry, then where its weights are and whether they are present."""
    entry = _find(name=name, registry_file=registry_file)
    kind = "model" if isinstance(entry, ModelEntry) else "scorer" if isinstance(entry, ScorerEntry) else "detector"
    lines = [f"{'kind':16} {kind}"]
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if field.name == "revision" and value is None and entry.repo:
            value = "unpinned (the hub's main branch when pulled)"
        lines.append(f"{field.name:16} {value}")
    if isinstance(entry, ModelEntry):
        reduction = EditConfig().merged(dict(entry.defaults)).ssm_reduction
        lines.append(f"{'ssm_reduction':16} {reduction}: {SSM_REDUCTIONS[reduction]}")
    lines.append(f"{'weights':16} {'present' if weights_present(entry=entry) else 'missing'} ({_where(entry)})")
    return "\n".join(lines)


def pull_entry(*, name: str, registry_file: Path | None) -> Path:
    entry = _find(name=name, registry_file=registry_file)
    if entry.path and not entry.builder:
        raise UsageError(f"model {name!r} is a local folder ({entry.path}); there is nothing to pull")
    folder = pull(entry=entry)
    for stage in getattr(entry, "stages", ()):  # a cascade: every stage too (local folders have nothing to pull)
        stage_entry = _registry(registry_file).model(stage)
        if stage_entry.builder or not stage_entry.path:
            pull(entry=stage_entry)
    return folder
