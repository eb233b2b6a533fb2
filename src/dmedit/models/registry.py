"""The model registry: models.toml files read into typed, checked `ModelEntry`/`DetectorEntry`/`ScorerEntry`s.

Files, each merged over the ones before it (an entry of the same name merges key by key, its
`dtype` and `defaults` sub-tables too):
built-in models.toml < <platform config folder>/models.toml < $DMEDIT_MODELS < --registry FILE.
`base = "NAME"` starts an entry from the merged entry NAME of the same table. Parsing is strict:
every error is one line naming the file, the entry and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import platformdirs

from dmedit.core.config import EDIT_DEFAULT_KEYS, DetectorEntry, DtypeByDevice, EditConfig, ModelEntry, ScorerEntry
from dmedit.core.errors import UsageError
from dmedit.models.backends import CASCADES, DETECTOR_FAMILIES, FAMILIES as VIDEO_FAMILIES, STAGE_FAMILIES
from dmedit.models.hub import BUILDERS
from dmedit.models.scorers import FAMILIES as SCORER_FAMILIES

REGISTRY_FILE_NAME = "models.toml"
MODELS_ENV = "DMEDIT_MODELS"
DTYPE_NAMES = ("fp32", "fp16", "bf16")
TABLES = {"models": ModelEntry, "detectors": DetectorEntry, "scorers": ScorerEntry}
KINDS = {"models": "model", "detectors": "detector", "scorers": "scorer"}
FAMILIES = {"models": (*VIDEO_FAMILIES, *STAGE_FAMILIES), "detectors": tuple(DETECTOR_FAMILIES),
            "scorers": tuple(SCORER_FAMILIES)}
SUB_TABLES = ("dtype", "defaults")
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOML_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"}

RawEntry = dict[str, Any]
"""One entry's checked keys as written in one file (plus `source_file`), before merging."""


@dataclass(frozen=True)
class Registry:
    """Every model, detector and scorer after merging all registry files (`files`, in merge order)."""

    models: Mapping[str, ModelEntry]
    detectors: Mapping[str, DetectorEntry]
    files: tuple[Path, ...]
    scorers: Mapping[str, ScorerEntry] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    def model(self, name: str) -> ModelEntry:
        """The entry `name`; an unknown name is a UsageError suggesting the closest one."""
        return _lookup(entries=self.models, kind="model", name=name)

    def detector(self, name: str) -> DetectorEntry:
        """The entry `name`; an unknown name is a UsageError suggesting the closest one."""
        return _lookup(entries=self.detectors, kind="detector", name=name)

    def scorer(self, name: str) -> ScorerEntry:
        """The entry `name` (a metric's model); an unknown name is a UsageError suggesting the closest one."""
        return _lookup(entries=self.scorers, kind="scorer", name=name)


def builtin_registry_path() -> Path:
    """The models.toml shipped inside the package."""
    return Path(__file__).with_name(REGISTRY_FILE_NAME)


def user_config_registry_path() -> Path:
    """<platform config folder>/models.toml, read when it exists (e.g. ~/.config/dmedit/models.toml)."""
    return Path(platformdirs.user_config_dir("dmedit")) / REGISTRY_FILE_NAME


def user_registry_paths(*, registry_file: Path | None) -> list[Path]:
    """User registry files in merge order: config folder (if present) < $DMEDIT_MODELS < registry_file.

    A $DMEDIT_MODELS or `registry_file` that is not a file is a UsageError.
    """
    paths = []
    config_file = user_config_registry_path()
    if config_file.is_file():
        paths.append(config_file)
    env_value = os.environ.get(MODELS_ENV, "")
    if env_value:
        env_file = Path(env_value).expanduser()
        if not env_file.is_file():
            raise UsageError(f"${MODELS_ENV} names {env_file}, which is not a file")
        paths.append(env_file)
    if registry_file is not None:
        registry_file = Path(registry_file).expanduser()
        if not registry_file.is_file():
            raise UsageError(f"--registry {registry_file}: no such file")
        paths.append(registry_file)
    return paths


def load_registry(*, registry_file: Path | None = None) -> Registry:
    """Read the built-in registry and every user file (see `user_registry_paths`) into one Registry."""
    files = [builtin_registry_path(), *user_registry_paths(registry_file=registry_file)]
    layers = [parse_registry_text(text=_read_text(path=path), source=str(path)) for path in files]
    return build_registry(layers=layers, files=files)


def parse_registry_text(*, text: str, source: str) -> tuple[dict[str, RawEntry], ...]:
    """Check one file's TOML text; return its (models, detectors, scorers) entries, keys as written.

    `source` names the file in errors and in each entry's `source_file`; a relative `path` value is
    taken relative to its folder, and a leading "~" is expanded.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{source}: invalid TOML: {error}") from error
    for table, entries in document.items():
        if table not in TABLES:
            raise UsageError(f"{source}: unknown table [{table}]; use [models.NAME], [detectors.NAME] or "
                             "[scorers.NAME]")
        if not isinstance(entries, dict):
            raise UsageError(f"{source}: '{table}' must be a table of [{table}.NAME] entries")
    parsed = []
    for table in TABLES:
        checked = {}
        for name, raw in document.get(table, {}).items():
            where = f"{source}: [{table}.{name}]"
            if not ENTRY_NAME.fullmatch(name):
                raise UsageError(f"{where} bad entry name: use letters, digits, '.', '_' and '-'")
            if not isinstance(raw, dict):
                raise UsageError(f"{where} must be a table, got {_describe(raw)}")
            checked[name] = _check_keys(table=table, raw=raw, where=where, source=source)
        parsed.append(checked)
    return tuple(parsed)


def build_registry(
    *, layers: Sequence[tuple[dict[str, RawEntry], ...]], files: Sequence[Path] = ()
) -> Registry:
    """Merge parsed files (earliest first), resolve `base`, and build the checked entries."""
    merged: dict[str, dict[str, RawEntry]] = {table: {} for table in TABLES}
    for layer in layers:
        for table, entries in zip(TABLES, layer):
            for name, raw in entries.items():
                older = merged[table].get(name)
                merged[table][name] = raw if older is None else _merge_raw(older=older, newer=raw)
    built = {}
    for table in TABLES:
        resolved = _resolve_bases(table=table, entries=merged[table])
        built[table] = {name: _build_entry(table=table, name=name, raw=raw) for name, raw in resolved.items()}
    for entry in built["models"].values():
        if entry.detector not in built["detectors"]:
            close = difflib.get_close_matches(entry.detector, list(built["detectors"]), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{entry.source_file}: [models.{entry.name}] key 'detector'"
            raise UsageError(f"{where}: unknown detector {entry.detector!r}{hint}")
        _check_stages(entry=entry, models=built["models"])
    return Registry(
        models=types.MappingProxyType(built["models"]),
        detectors=types.MappingProxyType(built["detectors"]),
        files=tuple(Path(path) for path in files),
        scorers=types.MappingProxyType(built["scorers"]),
    )


def _lookup(*, entries: Mapping[str, Any], kind: str, name: str) -> Any:
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    else:
        hint = f"known {kind}s: {', '.join(sorted(entries))}" if entries else f"no {kind}s are defined"
    raise UsageError(f"unknown {kind} {name!r}; {hint}")


def _read_text(*, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UsageError(f"{path}: cannot read registry file: {reason}") from error


@functools.cache
def _field_types(entry_class: type) -> dict[str, Any]:
    """TOML key -> type hint, from the dataclass (name and source_file are not written in files)."""
    hints = typing.get_type_hints(entry_class)
    return {key: hint for key, hint in hints.items() if key not in ("name", "source_file")}


def _check_keys(*, table: str, raw: dict[str, Any], where: str, source: str) -> RawEntry:
    hints = _field_types(TABLES[table])
    allowed = [*hints, "base"]
    checked: RawEntry = {"source_file": source}
    for key, value in raw.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where} unknown key {key!r}{suggestion}")
        key_where = f"{where} key {key!r}"
        if key == "base":
            checked[key] = _convert(value=value, hint=str, where=key_where)
        elif key == "dtype":
            checked[key] = _check_dtype(value=value, where=where)
        elif key == "defaults":
            checked[key] = _check_defaults(value=value, where=where)
        elif key == "path":
            checked[key] = _expand_path(value=_convert(value=value, hint=str, where=key_where), source=source)
        else:
            checked[key] = _convert(value=value, hint=hints[key], where=key_where)
    return checked


def _convert(*, value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field's type hint; ints are accepted for floats."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise UsageError(f"{where} must be one of {', '.join(map(str, choices))}, got {_describe(value)}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        expected = "an array of strings"
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif hint in (int, str, bool):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        expected = {int: "an integer", str: "a string", bool: "true or false"}[hint]
    else:
        raise TypeError(f"registry cannot check values of type {hint!r}")
    raise UsageError(f"{where} must be {expected}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{_TOML_TYPE_NAMES.get(type(value), type(value).__name__)} {value!r}"


def _check_dtype(*, value: Any, where: str) -> dict[str, str]:
    devices = [field.name for field in dataclasses.fields(DtypeByDevice)]
    if not isinstance(value, dict):
        raise UsageError(f"{where} key 'dtype' must be a table like {{ cuda = \"fp16\" }}, got {_describe(value)}")
    for device, name in value.items():
        if device not in devices:
            raise UsageError(f"{where} unknown key 'dtype.{device}' (devices: {', '.join(devices)})")
        if name not in DTYPE_NAMES:
            raise UsageError(
                f"{where} key 'dtype.{device}' must be one of {', '.join(DTYPE_NAMES)}, got {_describe(name)}"
            )
    return dict(value)


def _check_defaults(*, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} key 'defaults' must be a table of edit settings, got {_describe(value)}")
    hints = typing.get_type_hints(EditConfig)
    checked = {}
    for key, setting in value.items():
        if key not in EDIT_DEFAULT_KEYS:
            raise UsageError(f"{where} unknown key 'defaults.{key}' (allowed: {', '.join(EDIT_DEFAULT_KEYS)})")
        checked[key] = _convert(value=setting, hint=hints[key], where=f"{where} key 'defaults.{key}'")
    return checked


def _expand_path(*, value: str, source: str) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(source).parent / path
    return str(path)


def _merge_raw(*, older: RawEntry, newer: RawEntry) -> RawEntry:
    merged = dict(older)
    for key, value in newer.items():
        merged[key] = {**older[key], **value} if key in SUB_TABLES and key in older else value
    return merged


def _resolve_bases(*, table: str, entries: dict[str, RawEntry]) -> dict[str, RawEntry]:
    """Each entry with `base = "NAME"` becomes NAME's resolved keys merged under its own."""
    resolved: dict[str, RawEntry] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> RawEntry:
        if name in resolved:
            return resolved[name]
        raw = entries[name]
        base = raw.get("base")
        if base is not None:
            where = f"{raw['source_file']}: [{table}.{name}] key 'base'"
            if base == name or base in chain:
                raise UsageError(f"{where}: inheritance loop {' -> '.join((*chain, name, base))}")
            if base not in entries:
                close = difflib.get_close_matches(base, list(entries), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UsageError(f"{where}: unknown {KINDS[table]} {base!r}{hint}")
            raw = _merge_raw(older=resolve(base, (*chain, name)), newer=raw)
            del raw["base"]
        resolved[name] = raw
        return raw

    for entry_name in entries:
        resolve(entry_name, ())
    return resolved


def _build_entry(*, table: str, name: str, raw: RawEntry) -> ModelEntry | DetectorEntry | ScorerEntry:
    entry_class = TABLES[table]
    where = f"{raw['source_file']}: [{table}.{name}]"
    for field in dataclasses.fields(entry_class):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and field.name != "name" and field.name not in raw:
            raise UsageError(f"{where} missing required key {field.name!r}")
    values = dict(raw)
    if "dtype" in values:
        values["dtype"] = DtypeByDevice(**values["dtype"])
    entry = entry_class(name=name, **values)
    _check_common(entry=entry, table=table, where=where)
    if isinstance(entry, ModelEntry):
        _check_model(entry=entry, where=where)
    elif isinstance(entry, DetectorEntry):
        _check_detector(entry=entry, where=where)
    return entry


def _check_common(*, entry: ModelEntry | DetectorEntry | ScorerEntry, table: str, where: str) -> None:
    if entry.family not in FAMILIES[table]:
        raise UsageError(f"{where} key 'family' must be one of {', '.join(FAMILIES[table])}, got {entry.family!r}")
    if not (entry.repo or entry.path or entry.builder):
        raise UsageError(f"{where} needs one of the keys 'repo', 'path' or 'builder' to find its weights")
    if entry.builder is not None and entry.builder not in BUILDERS:
        raise UsageError(f"{where} key 'builder' must be one of {', '.join(BUILDERS)}, got {entry.builder!r}")


def _check_model(*, entry: ModelEntry, where: str) -> None:
    for key in ("width", "height"):
        size = getattr(entry, key)
        if size <= 0 or size % 8:
            raise UsageError(f"{where} key {key!r} must be a positive multiple of 8 (the VAE's factor), got {size}")
    if not 1 <= entry.frames <= entry.max_frames:
        raise UsageError(
            f"{where} key 'frames' must be between 1 and max_frames ({entry.max_frames}), got {entry.frames}"
        )
    window = entry.window if entry.window is not None else entry.frames
    if not 1 <= window <= entry.max_frames:
        raise UsageError(f"{where} key 'window' must be between 1 and max_frames ({entry.max_frames}), got {window}")
    if entry.window_overlap is not None and not 0 <= entry.window_overlap < window:
        raise UsageError(f"{where} key 'window_overlap' must be between 0 and window - 1 ({window - 1}), "
                         f"got {entry.window_overlap}")
    if not entry.key_layers or not all(entry.key_layers):
        raise UsageError(f"{where} key 'key_layers' must list at least one non-empty module-name pattern")
    try:
        EditConfig().merged(entry.defaults)
    except UsageError as error:
        raise UsageError(f"{where} key 'defaults': {error}") from error


def _check_stages(*, entry: ModelEntry, models: Mapping[str, ModelEntry]) -> None:
    """A cascade's family (backends.CASCADES) names, in `stages`, entries of its stage families in order."""
    where = f"{entry.source_file}: [models.{entry.name}] key 'stages'"
    wanted = CASCADES.get(entry.family, ())
    if not wanted:
        if entry.stages:
            raise UsageError(f"{where}: family {entry.family!r} is not a cascade; remove 'stages'")
        return
    if len(entry.stages) != len(wanted):
        raise UsageError(f"{where}: a {entry.family} cascade needs {len(wanted)} stages ({', '.join(wanted)}), "
                         f"got {len(entry.stages)}")
    for name, family in zip(entry.stages, wanted):
        if name not in models:
            close = difflib.get_close_matches(name, list(models), n=1)
            raise UsageError(f"{where}: unknown model {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        if models[name].family != family:
            raise UsageError(f"{where}: stage {name!r} must have family {family!r}, got {models[name].family!r}")


def _check_detector(*, entry: DetectorEntry, where: str) -> None:
    for key in ("box_threshold", "text_threshold"):
        threshold = getattr(entry, key)
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"{where} key {key!r} must be between 0 and 1, got {threshold}")
