"""`dmedit models pull`: an entry's files fetched from the Hugging Face hub into its cache, the only
network access dmedit makes.

`pull` first checks in seconds that the hub (or the proxy that would carry the request) accepts a
connection, then keeps huggingface_hub's retry warnings off stderr, so that a failure is one line.
An entry marked `weights = "pickle"` (its pinned revision has pickle checkpoints only) gets those
downloaded and converted to safetensors in the cache (convert.py: no code in them is run); loading
stays safetensors-only. huggingface_hub is imported lazily so that `hub.set_offline` can run before it is.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from dmedit.core.console import Reporter
from dmedit.core.errors import DmeditError, ModelError
from dmedit.models.convert import PICKLE_SUFFIXES, convert_folder
from dmedit.models.hub import (
    Entry, entry_kind, hub_cache_dir, is_offline, marker_file, one_line, resolve_weights, select_repo_files,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
"""The hub huggingface_hub talks to unless HF_ENDPOINT names another (a mirror)."""
CONNECT_TIMEOUT_S = 5.0
"""How long `pull` waits for the hub (or its proxy) to resolve and accept a TCP connection."""
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks5": 1080, "socks5h": 1080}
_NO_WEIGHTS_HINT = {
    "safetensors": ".safetensors weights; pin a revision that has them, or set `weights = \"pickle\"` on the "
                   "entry to download its pickle checkpoints and convert them",
    "pickle": "pickle weights (.bin, .pt, .pth), which the entry's `weights = \"pickle\"` expects",
}
"""The end of the message for a revision without the weights the entry's `weights` names."""


def pull(*, entry: Entry, reporter: Reporter | None = None) -> Path:
    """Download repo@revision's configs, tokenizer files and weights into the hub cache.

    The weights are the safetensors, or for a `weights = "pickle"` entry the pickle checkpoints,
    converted in the cache (each conversion a line on `reporter`). `builder` entries are built locally
    instead; `path` entries are only checked (nothing is downloaded into a local folder). Any hub or
    network failure is a one-line ModelError naming the entry; an unreachable hub is reported within
    CONNECT_TIMEOUT_S, before huggingface_hub (whose own retries take about 25 s) is called.
    """
    if entry.builder is not None or entry.path is not None:
        return resolve_weights(entry=entry)
    label = f"{entry_kind(entry=entry)} '{entry.name}'"
    source = f"{entry.repo}@{entry.revision or 'main'}"
    if is_offline():
        raise ModelError(
            f"cannot pull {label} from {source}: offline mode is on; drop --offline and unset "
            "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE on a machine that reaches huggingface.co"
        )
    check_hub_reachable(label=label)
    folder = _download(entry=entry, label=label, source=source)
    if not (folder / marker_file(entry=entry)).is_file():
        raise ModelError(
            f"pulled {label} from {source}, but it has no {marker_file(entry=entry)}: not a model folder"
        )
    if entry.weights == "pickle":
        for conversion in convert_folder(folder=folder):
            if reporter is not None:
                reporter.line(f"{entry.name}: {conversion.describe(root=folder)}")
    return folder


def _download(*, entry: Entry, label: str, source: str) -> Path:
    """snapshot_download of the files `select_repo_files` picks from the repo's listing."""
    try:
        from huggingface_hub import HfApi, snapshot_download

        with _quiet_hub_logging():
            listing = HfApi().list_repo_files(entry.repo, revision=entry.revision)
            variant = getattr(entry, "variant", None)
            wanted = select_repo_files(files=listing, variant=variant, weights=entry.weights)
            suffixes = PICKLE_SUFFIXES if entry.weights == "pickle" else (".safetensors",)
            if not any(name.endswith(suffixes) for name in wanted):
                raise ModelError(f"cannot pull {label}: {source} has no {_NO_WEIGHTS_HINT[entry.weights]}")
            return Path(snapshot_download(
                entry.repo, revision=entry.revision, cache_dir=hub_cache_dir(), allow_patterns=wanted
            ))
    except DmeditError:
        raise
    except Exception as error:
        raise ModelError(f"cannot pull {label} from {source}: {one_line(error)}") from error


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
