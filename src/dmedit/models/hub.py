"""Where an entry's weights are on disk, and how they get there.

Lookup order for one registry entry:
1. `builder` entries: <path or cache_dir()/NAME>, built offline on first use (no network ever);
2. `path` entries: that folder, which must hold model_index.json (video models) or config.json
   (detectors, scorers); the hub is never consulted, so a fine-tune never silently falls back to its base;
3. `repo` entries: the Hugging Face cache snapshot of repo@revision, used only when complete.
Nothing here touches the network except `pull`, which first checks in seconds that the hub (or
the proxy that would carry the request) accepts a connection, then keeps huggingface_hub's retry
warnings off stderr, so that a failure is one line. huggingface_hub is imported lazily so that
`set_offline` can run before it is.
"""

from __future__ import annotations

import importlib
import os
import posixpath
import re
import shutil
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from dmedit.core.config import DetectorEntry, ModelEntry, ScorerEntry
from dmedit.core.errors import DmeditError, ModelError, UsageError

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
_SAFETENSORS_NAME = re.compile(r"[^.]+(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.safetensors")
_TRUE_VALUES = ("1", "on", "yes", "true")
DEFAULT_ENDPOINT = "https://huggingface.co"
"""The hub huggingface_hub talks to unless HF_ENDPOINT names another (a mirror)."""
CONNECT_TIMEOUT_S = 5.0
"""How long `pull` waits for the hub (or its proxy) to resolve and accept a TCP connection."""
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks5": 1080, "socks5h": 1080}

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
    """The entry's local weights folder, or a one-line ModelError saying where it looked and what to do."""
    folder = local_model_dir(entry=entry)
    if folder is not None:
        return folder
    raise ModelError(_missing_message(entry=entry))


def pull(*, entry: Entry) -> Path:
    """Download repo@revision's configs, tokenizer files and safetensors weights into the hub cache.

    `builder` entries are built locally instead; `path` entries are only checked (nothing is
    downloaded into a local folder). Any hub or network failure is a one-line ModelError naming the
    entry; an unreachable hub is reported within CONNECT_TIMEOUT_S, before huggingface_hub (whose
    own retries take about 25 s) is called.
    """
    if entry.builder is not None or entry.path is not None:
        return resolve_weights(entry=entry)
    label = f"{_kind(entry=entry)} '{entry.name}'"
    source = f"{entry.repo}@{entry.revision or 'main'}"
    if is_offline():
        raise ModelError(
            f"cannot pull {label} from {source}: offline mode is on; drop --offline and unset "
            "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE on a machine that reaches huggingface.co"
        )
    check_hub_reachable(label=label)
    try:
        from huggingface_hub import HfApi, snapshot_download

        with _quiet_hub_logging():
            listing = HfApi().list_repo_files(entry.repo, revision=entry.revision)
            wanted = select_repo_files(files=listing, variant=getattr(entry, "variant", None))
            if not any(name.endswith(".safetensors") for name in wanted):
                raise ModelError(
                    f"cannot pull {label}: {source} has no .safetensors weights; pin a revision that has them"
                )
            folder = Path(snapshot_download(
                entry.repo, revision=entry.revision, cache_dir=hub_cache_dir(), allow_patterns=wanted
            ))
    except DmeditError:
        raise
    except Exception as error:
        raise ModelError(f"cannot pull {label} from {source}: {_one_line(error)}") from error
    if not (folder / marker_file(entry=entry)).is_file():
        raise ModelError(f"pulled {label} from {source}, but it has no {marker_file(entry=entry)}: not a model folder")
    return folder


def hub_endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT (a mirror) or https://huggingface.co, read from the environment now."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def check_hub_reachable(*, label: str) -> None:
    """A one-line ModelError unless the hub endpoint accepts a TCP connection within CONNECT_TIMEOUT_S.

    When a proxy would carry the request (HTTPS_PROXY, ALL_PROXY and their lowercase forms, unless
    NO_PROXY exempts the host), the proxy is checked instead: the hub itself may only be reachable
    through it. Name resolution counts towards the timeout too.
    """
    endpoint = urlsplit(hub_endpoint())
    try:
        target = (endpoint.hostname or "", endpoint.port or _DEFAULT_PORTS.get(endpoint.scheme, 443))
    except ValueError:  # a port that is not a number
        target = ("", 0)
    if not target[0]:
        return  # not a usable URL: huggingface_hub reports it
    proxy = _proxy_for(scheme=endpoint.scheme, host=endpoint.hostname)
    where = f"{target[0]}:{target[1]}" if proxy is None else f"the proxy {proxy[0]}:{proxy[1]}"
    problem = _connect_problem(address=proxy or target, timeout_s=CONNECT_TIMEOUT_S)
    if problem is not None:
        raise ModelError(
            f"cannot reach {where} ({problem}) to pull {label}; check the network or proxy, or copy the "
            f"Hugging Face cache ({hub_cache_dir()}) from a connected machine"
        )


def _proxy_for(*, scheme: str, host: str) -> tuple[str, int] | None:
    """(host, port) of the proxy the environment gives for `scheme`://`host`, or None for a direct connection."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    except ValueError:  # a port that is not a number: let the HTTP client report it
        return None
    return parts.hostname, port


def _connect_problem(*, address: tuple[str, int], timeout_s: float) -> str | None:
    """None when `address` accepts a TCP connection within `timeout_s`, else why not, in a few words.

    Runs in a daemon thread so that a name lookup, which socket timeouts do not cover, is bounded too.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                outcome.append(None)
        except TimeoutError:
            outcome.append(f"no answer within {timeout_s:g} s")
        except OSError as error:
            outcome.append(error.strerror or _one_line(error))

    worker = threading.Thread(target=attempt, name="dmedit-hub-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


@contextmanager
def _quiet_hub_logging() -> Iterator[None]:
    """huggingface_hub's warnings (one per retry: "Retrying in 1s [Retry 1/5]") off stderr while it runs;
    the failure that ends the retries still arrives as an exception, reported in one line."""
    from huggingface_hub.utils import logging as hub_logging

    previous = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(previous)


def select_repo_files(*, files: Iterable[str], variant: str | None) -> list[str]:
    """The repo files a model needs: configs and tokenizer files, and one set of safetensors per folder.

    In each folder the `variant` weights (name.fp16.safetensors, name.fp16-00001-of-00002.safetensors)
    are chosen when that folder has them, else the plain ones; other variants and pickle weights
    (.bin, .pth, .ckpt) are skipped. Paths are the hub's "/"-separated repo paths.
    """
    files = list(files)
    chosen = {name for name in files if any(fnmatchcase(name, pattern) for pattern in CONFIG_AND_TOKENIZER_PATTERNS)}
    weights_by_folder: dict[str, list[tuple[str, str | None]]] = {}
    for name in files:
        match = _SAFETENSORS_NAME.fullmatch(posixpath.basename(name))
        if match:
            weights_by_folder.setdefault(posixpath.dirname(name), []).append((name, match["variant"]))
    for weights in weights_by_folder.values():
        has_variant = variant is not None and any(found == variant for _, found in weights)
        chosen.update(name for name, found in weights if found == (variant if has_variant else None))
    return sorted(chosen)


def _kind(*, entry: Entry) -> str:
    return "model" if isinstance(entry, ModelEntry) else "scorer" if isinstance(entry, ScorerEntry) else "detector"


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _missing_message(*, entry: Entry) -> str:
    label = f"{_kind(entry=entry)} '{entry.name}'"
    marker = marker_file(entry=entry)
    table = f"{_kind(entry=entry)}s"
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
        raise ModelError(f"builder {name!r} is unavailable ({BUILDERS[name]}): {_one_line(error)}") from error


def _built_model_dir(*, entry: Entry) -> Path:
    """The builder's folder, built first when missing: into a staging folder, then renamed into place,
    so a concurrent process sees either no folder or a complete one."""
    target = _builder_target(entry=entry)
    marker = marker_file(entry=entry)
    if (target / marker).is_file():
        return target
    label = f"{_kind(entry=entry)} '{entry.name}'"
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
        raise ModelError(f"{label}: building it into {target} failed: {_one_line(error)}") from error
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    return target


def _move_into_place(*, staging: Path, target: Path, marker: str) -> None:
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / marker).is_file():
            raise
