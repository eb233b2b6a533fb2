"""Where an entry's weights are on disk; offline builds of the `builder` entries.

Lookup order for one registry entry:
1. `builder` entries: <path or cache_dir()/NAME>, built offline on first use (no network ever);
2. `path` entries: that folder, which must hold model_index.json (video models) or config.json
   (detectors, scorers); the hub is never consulted, so a fine-tune never silently falls back to its base;
3. `repo` entries: the Hugging Face cache snapshot of repo@revision, used only when complete.
A folder found whose weights are pickle checkpoints only is refused with the `dmedit models
convert` command that fixes it (dmedit loads safetensors only). Nothing here touches the network:
downloads are `download.pull`. huggingface_hub is imported lazily so that `set_offline` can run
before it is.
"""

from __future__ import annotations

import importlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path

import platformdirs

from dmedit.core.config import DetectorEntry, ModelEntry, ScorerEntry, WeightFormat
from dmedit.core.disk import OUT_OF_SPACE_ERRNOS, space_error
from dmedit.core.errors import DmeditError, ModelError, UsageError
from dmedit.core.files import errno_in_message, write_error
from dmedit.models.convert import LOADED_PICKLE, pickle_only_folders

CACHE_ENV = "DMEDIT_CACHE"
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
BUILDERS: dict[str, str] = {
    "tiny-t2v": "dmedit.models.backends.tiny:build_tiny_video_model",
    "zeroscope-random": "dmedit.models.backends.zeroscope_random:build_zeroscope_random",
    "tiny-grounding-dino": "dmedit.models.backends.grounding_dino:build_tiny_detector",
    "tiny-show1-base": "dmedit.models.backends.show1_tiny:build_tiny_show1_base",
    "tiny-show1-interpolation": "dmedit.models.backends.show1_tiny:build_tiny_show1_interpolation",
    "tiny-show1-sr1": "dmedit.models.backends.show1_tiny:build_tiny_show1_sr1",
    "tiny-clip": "dmedit.models.scorers.clip:build_tiny_clip",
    "tiny-lpips": "dmedit.models.scorers.lpips:build_tiny_lpips",
    "tiny-tracker": "dmedit.models.scorers.tracker:build_tiny_tracker",
}
"""Builder name -> "module:function"; each function is called as fn(path=Path) and writes the folder."""
BUILD_REVISION = 1
"""Part of a built model's cache folder name: raise it when a builder's output changes, so a cache
built by an older dmedit is never mistaken for the current model."""
CONFIG_AND_TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model")
_WEIGHT_NAMES = {
    "safetensors": re.compile(r"[^.]+(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.safetensors"),
    "pickle": LOADED_PICKLE,  # not optimizer.pt or training_args.bin: only the weights loaders read
}
"""The weight files `select_repo_files` picks for each `weights` format (name, variant, shard number)."""
_TRUE_VALUES = ("1", "on", "yes", "true")

Entry = ModelEntry | DetectorEntry | ScorerEntry


def cache_dir() -> Path:
    """dmedit's own cache (built tiny models): $DMEDIT_CACHE or the platform user cache folder."""
    configured = os.environ.get(CACHE_ENV, "")
    return Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("dmedit"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now, as huggingface_hub reads it at import."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg_cache).expanduser() / "huggingface" / "hub"


def set_offline() -> None:
    """Forbid hub downloads in this process and its children. Call before huggingface_hub is imported."""
    for name in OFFLINE_ENVS:
        os.environ[name] = "1"


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE_VALUES for name in OFFLINE_ENVS)


def marker_file(*, entry: Entry) -> str:
    """The file whose presence makes a folder a model: model_index.json or config.json (detectors, scorers)."""
    return "model_index.json" if isinstance(entry, ModelEntry) else "config.json"


def local_model_dir(*, entry: Entry) -> Path | None:
    """The entry's weights folder on this machine, or None. Builds `builder` entries when missing."""
    if entry.builder is not None:
        return _built_model_dir(entry=entry)
    if entry.path is not None:
        folder = Path(entry.path).expanduser()
        return folder if (folder / marker_file(entry=entry)).is_file() else None
    if entry.repo is not None:
        return _hub_snapshot_dir(entry=entry)
    return None


def weights_present(*, entry: Entry) -> bool:
    """True when the weights are on disk now. Never builds and never touches the network."""
    if entry.builder is not None:
        return (_builder_target(entry=entry) / marker_file(entry=entry)).is_file()
    return local_model_dir(entry=entry) is not None


def resolve_weights(*, entry: Entry) -> Path:
    """The entry's local weights folder, or a one-line ModelError saying where it looked and what to do:
    also when a folder there holds pickle weights and no safetensors (`dmedit models convert` fixes it)."""
    folder = local_model_dir(entry=entry)
    if folder is None:
        raise ModelError(_missing_message(entry=entry))
    unconverted = pickle_only_folders(folder=folder)
    if unconverted:
        names = ", ".join(f"{path.relative_to(folder).as_posix()}/" for path in unconverted)
        raise ModelError(
            f"{entry_kind(entry=entry)} '{entry.name}': {folder} has pickle weights and no safetensors in "
            f"{names}, and dmedit loads safetensors only; convert them (no code in them is run) with "
            f"`dmedit models convert {folder}`"
        )
    return folder


def select_repo_files(
    *, files: Iterable[str], variant: str | None, weights: WeightFormat = "safetensors"
) -> list[str]:
    """The repo files a model needs: configs and tokenizer files, and one set of weights per folder.

    In each folder the `variant` weights (name.fp16.safetensors, name.fp16-00001-of-00002.safetensors)
    are chosen when that folder has them, else the plain ones; other variants and other formats are
    skipped. `weights`: "safetensors" (.bin, .pt, .pth, .ckpt skipped) or "pickle" (.bin, .pt, .pth,
    for an entry that has nothing else; `download.pull` converts them). Paths are the hub's
    "/"-separated repo paths.
    """
    files = list(files)
    chosen = {name for name in files if any(fnmatchcase(name, pattern) for pattern in CONFIG_AND_TOKENIZER_PATTERNS)}
    weights_by_folder: dict[str, list[tuple[str, str | None]]] = {}
    for name in files:
        match = _WEIGHT_NAMES[weights].fullmatch(posixpath.basename(name))
        if match:
            weights_by_folder.setdefault(posixpath.dirname(name), []).append((name, match["variant"]))
    for weights in weights_by_folder.values():
        has_variant = variant is not None and any(found == variant for _, found in weights)
        chosen.update(name for name, found in weights if found == (variant if has_variant else None))
    return sorted(chosen)


def entry_kind(*, entry: Entry) -> str:
    """"model", "detector" or "scorer": how messages name the entry's table."""
    return "model" if isinstance(entry, ModelEntry) else "scorer" if isinstance(entry, ScorerEntry) else "detector"


def one_line(error: BaseException) -> str:
    """The error's type and the first line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _missing_message(*, entry: Entry) -> str:
    label = f"{entry_kind(entry=entry)} '{entry.name}'"
    marker = marker_file(entry=entry)
    table = f"{entry_kind(entry=entry)}s"
    defined_in = entry.source_file or "a registry file"
    if entry.path is not None:
        return (
            f"{label} is not on this machine: {Path(entry.path).expanduser()} has no {marker}. "
            f"Put the model folder there, or point `path` under [{table}.{entry.name}] in {defined_in} "
            f"at a folder that holds {marker}."
        )
    return (
        f"{label} is not on this machine: looked for {entry.repo}@{entry.revision or 'main'} in the Hugging Face "
        f"cache {hub_cache_dir()}. Run `dmedit models pull {entry.name}` on a connected machine (copy that cache "
        f"folder here if it is another one), or set `path = \"/folder/with/{marker}\"` under [{table}.{entry.name}] "
        "in a registry file (--registry FILE or $DMEDIT_MODELS)."
    )


def _hub_snapshot_dir(*, entry: Entry) -> Path | None:
    """The cached snapshot of repo@revision when complete, without any network call."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                entry.repo,
                revision=entry.revision,
                cache_dir=hub_cache_dir(),
                local_files_only=True,
                allow_patterns=_cached_selection(entry=entry),
            )
        )
    except (OSError, ValueError):
        return None
    if not (folder / marker_file(entry=entry)).is_file():
        return None
    has_weights = any(path.is_file() for path in folder.rglob("*.safetensors"))
    return folder if has_weights else None


def _cached_selection(*, entry: Entry) -> list[str] | None:
    """The files `pull` would fetch, from the repo listing the hub cached at download time.

    With it, snapshot_download verifies every one is present; without it (a cache written by an
    older huggingface_hub) only the folder, its marker file and some safetensors are checked.
    """
    try:
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:
        return None
    try:
        listing = get_cached_repo_tree(entry.repo, revision=entry.revision, cache_dir=hub_cache_dir())
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None
    return select_repo_files(files=[item.path for item in listing], variant=getattr(entry, "variant", None))


def _builder_target(*, entry: Entry) -> Path:
    if entry.path is not None:
        return Path(entry.path).expanduser()
    return cache_dir() / f"{entry.name}.build{BUILD_REVISION}"


def _builder_function(*, name: str) -> Callable[..., None]:
    if name not in BUILDERS:
        raise UsageError(f"unknown builder {name!r}; known builders: {', '.join(BUILDERS)}")
    module_name, function_name = BUILDERS[name].split(":")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"builder {name!r} is unavailable ({BUILDERS[name]}): {one_line(error)}") from error


def _built_model_dir(*, entry: Entry) -> Path:
    """The builder's folder, built first when missing: into a staging folder, then renamed into place,
    so a concurrent process sees either no folder or a complete one."""
    target = _builder_target(entry=entry)
    marker = marker_file(entry=entry)
    if (target / marker).is_file():
        return target
    label = f"{entry_kind(entry=entry)} '{entry.name}'"
    if target.exists() and any(target.iterdir()):
        raise ModelError(f"{label}: {target} exists but has no {marker}; remove it so it can be rebuilt")
    build = _builder_function(name=entry.builder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_parent = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    staging = staging_parent / target.name
    try:
        build(path=staging)
        if not (staging / marker).is_file():
            raise ModelError(f"{label}: builder {entry.builder!r} wrote no {marker}")
        _move_into_place(staging=staging, target=target, marker=marker)
    except DmeditError:
        raise
    except Exception as error:
        number = errno_in_message(error)  # safetensors' writes raise no OSError
        full = space_error(error=error) or (OSError(number, os.strerror(number)) if number in OUT_OF_SPACE_ERRNOS
                                            else None)
        if full is not None:  # a full disk: a system error (exit 1), not a fault of the model
            raise write_error(error=full, path=target) from None
        raise ModelError(f"{label}: building it into {target} failed: {one_line(error)}") from error
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    return target


def _move_into_place(*, staging: Path, target: Path, marker: str) -> None:
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / marker).is_file():
            raise
