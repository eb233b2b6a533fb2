"""Where weights are found (path, builder, hub cache) and how failures read, all without a network."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import platformdirs
import pytest

from dmedit.models import download, hub
from dmedit.core.config import DetectorEntry, ModelEntry
from dmedit.core.errors import ModelError, UsageError
from dmedit.models.registry import load_registry

ZEROSCOPE_REVISION = "1f35e3dc3350d649f342bb7618fe34ac8fae5c9e"
PROXY_VARIABLES = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
)
FAKE_BUILDERS_MODULE = "dmedit_test_fake_builders"

MODELSCOPE_LISTING = [
    ".gitattributes", "README.md", "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bf16.safetensors",
]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache and dmedit cache in tmp, offline, and no user registry files."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("DMEDIT_CACHE", str(tmp_path / "dmedit-cache"))
    monkeypatch.delenv("DMEDIT_MODELS", raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *args, **kwargs: str(tmp_path / "user-config"))
    return tmp_path / "hf-home" / "hub"


@pytest.fixture()
def fake_builder(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Builders 'tiny-t2v' / 'tiny-grounding-dino' replaced by fakes that write only the marker file."""
    calls: list[Path] = []
    module = types.ModuleType(FAKE_BUILDERS_MODULE)

    def build_video(*, path: Path) -> None:
        calls.append(path)
        path.mkdir(parents=True)
        (path / "model_index.json").write_text('{"built": "here"}', encoding="utf-8")

    def build_detector(*, path: Path) -> None:
        calls.append(path)
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}", encoding="utf-8")

    module.build_video = build_video
    module.build_detector = build_detector
    monkeypatch.setitem(sys.modules, FAKE_BUILDERS_MODULE, module)
    monkeypatch.setitem(hub.BUILDERS, "tiny-t2v", f"{FAKE_BUILDERS_MODULE}:build_video")
    monkeypatch.setitem(hub.BUILDERS, "tiny-grounding-dino", f"{FAKE_BUILDERS_MODULE}:build_detector")
    return types.SimpleNamespace(module=module, calls=calls)


@pytest.fixture()
def reachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pull` goes straight to huggingface_hub (replaced by fakes in the test): no reachability check."""
    monkeypatch.setattr(download, "check_hub_reachable", lambda *, label: None)


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def video_entry(**changes) -> ModelEntry:
    base = ModelEntry(
        name="clip-model", family="text_to_video", width=64, height=64, frames=8, max_frames=8,
        key_layers=("up_blocks.*.attentions.*.attn1",), source_file="/etc/dmedit/models.toml",
    )
    return dataclasses.replace(base, **changes)


def write_snapshot(hub_cache: Path, *, repo: str, revision: str, files: dict[str, bytes]) -> Path:
    snapshot = hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    return snapshot


def test_offline_missing_zeroscope_names_model_repo_and_both_ways_out(offline_hub: Path) -> None:
    zeroscope = load_registry().model("zeroscope")
    assert hub.local_model_dir(entry=zeroscope) is None
    assert not hub.weights_present(entry=zeroscope)
    with pytest.raises(ModelError) as caught:
        hub.resolve_weights(entry=zeroscope)
    message = str(caught.value)
    assert "\n" not in message
    assert "model 'zeroscope'" in message
    assert f"cerspense/zeroscope_v2_576w@{ZEROSCOPE_REVISION}" in message
    assert str(offline_hub) in message
    assert "`dmedit models pull zeroscope`" in message
    assert "path = " in message and "model_index.json" in message


def test_complete_hub_snapshot_is_found_offline(offline_hub: Path) -> None:
    zeroscope = load_registry().model("zeroscope")
    snapshot = write_snapshot(
        offline_hub, repo=zeroscope.repo, revision=ZEROSCOPE_REVISION,
        files={"model_index.json": b"{}", "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"x"},
    )
    assert hub.resolve_weights(entry=zeroscope) == snapshot
    assert hub.weights_present(entry=zeroscope)


def test_hub_snapshot_without_weights_does_not_count(offline_hub: Path) -> None:
    zeroscope = load_registry().model("zeroscope")
    write_snapshot(offline_hub, repo=zeroscope.repo, revision=ZEROSCOPE_REVISION, files={"model_index.json": b"{}"})
    assert hub.local_model_dir(entry=zeroscope) is None
    with pytest.raises(ModelError, match="dmedit models pull zeroscope"):
        hub.resolve_weights(entry=zeroscope)


def test_interrupted_download_is_not_used(offline_hub: Path) -> None:
    """With the repo listing the hub cached at download time, every file `pull` selects must be there."""
    tree_cache = pytest.importorskip("huggingface_hub._tree_cache")
    modelscope = load_registry().model("modelscope")
    storage = offline_hub / "models--ali-vilab--text-to-video-ms-1.7b"
    listing = {
        name: tree_cache.TreeCacheEntry(size=1, blob_id="0", lfs_sha256=None, lfs_size=None, xet_hash=None)
        for name in MODELSCOPE_LISTING
    }
    tree_cache.write_tree_cache(str(storage), modelscope.revision, listing)
    wanted = hub.select_repo_files(files=MODELSCOPE_LISTING, variant="fp16")
    snapshot = write_snapshot(
        offline_hub, repo=modelscope.repo, revision=modelscope.revision,
        files={name: b"x" for name in wanted if name != "vae/diffusion_pytorch_model.fp16.safetensors"},
    )
    assert hub.local_model_dir(entry=modelscope) is None

    (snapshot / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x")
    assert hub.local_model_dir(entry=modelscope) == snapshot


def test_pull_offline_fails_with_model_error_naming_model_and_repo() -> None:
    zeroscope = load_registry().model("zeroscope")
    with pytest.raises(ModelError) as caught:
        download.pull(entry=zeroscope)
    message = str(caught.value)
    assert "model 'zeroscope'" in message and "cerspense/zeroscope_v2_576w" in message
    assert "offline" in message and "\n" not in message


def test_pull_network_failure_is_a_model_error(monkeypatch: pytest.MonkeyPatch, reachable_hub: None) -> None:
    import huggingface_hub

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more detail on a second line)")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    detector = load_registry().detector("grounding-dino-tiny")
    with pytest.raises(ModelError) as caught:
        download.pull(entry=detector)
    assert str(caught.value) == (
        "cannot pull detector 'grounding-dino-tiny' from IDEA-Research/grounding-dino-tiny@main: "
        "ConnectionError: Failed to resolve 'huggingface.co'"
    )


def test_pull_fetches_variant_weights_into_the_hub_cache(
    offline_hub: Path, monkeypatch: pytest.MonkeyPatch, reachable_hub: None,
) -> None:
    import huggingface_hub
    from huggingface_hub.utils import logging as hub_logging

    requests = []
    verbosity_before = hub_logging.get_verbosity()

    def listing(self, repo_id, *, revision=None, **kwargs):
        requests.append(("list", repo_id, revision))
        assert hub_logging.get_verbosity() == logging.ERROR  # no "Retrying in 1s" warnings on stderr
        return MODELSCOPE_LISTING

    def fake_snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, **kwargs):
        requests.append(("download", repo_id, revision, Path(cache_dir), allow_patterns))
        return str(write_snapshot(Path(cache_dir), repo=repo_id, revision=revision, files={"model_index.json": b"{}"}))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    modelscope = load_registry().model("modelscope")

    folder = download.pull(entry=modelscope)

    assert folder.parent.parent.parent == offline_hub and (folder / "model_index.json").is_file()
    assert requests[0] == ("list", "ali-vilab/text-to-video-ms-1.7b", modelscope.revision)
    _, repo, revision, cache, patterns = requests[1]
    assert (repo, revision, cache) == ("ali-vilab/text-to-video-ms-1.7b", modelscope.revision, offline_hub)
    assert [name for name in patterns if name.endswith(".safetensors")] == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert {"model_index.json", "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json"} <= set(patterns)
    assert not any(name.endswith((".bin", ".md", ".gitattributes")) for name in patterns)
    assert hub_logging.get_verbosity() == verbosity_before


def test_unreachable_hub_is_one_line_naming_host_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/")
    with pytest.raises(ModelError) as caught:
        download.check_hub_reachable(label="model 'zeroscope'")
    message = str(caught.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{port} (Connection refused) to pull model 'zeroscope'; ")
    assert "\n" not in message and "proxy" in message

    with socket.socket() as server:  # a listening socket accepts the connection (backlog) without serving
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        download.check_hub_reachable(label="model 'zeroscope'")


def test_with_a_proxy_the_proxy_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match=rf"^cannot reach the proxy 127\.0\.0\.1:{port} \(Connection refused\)"):
        download.check_hub_reachable(label="model 'zeroscope'")

    with socket.socket() as server:  # NO_PROXY exempts the endpoint: connected directly, proxy unused
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        download.check_hub_reachable(label="model 'zeroscope'")


def test_models_pull_without_network_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """A real process against a closed port: no retry storm on stderr, one line, exit 4."""
    environ = {name: value for name, value in os.environ.items()
               if name not in (*hub.OFFLINE_ENVS, *PROXY_VARIABLES)}
    environ["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    done = subprocess.run([sys.executable, "-m", "dmedit", "models", "pull", "zeroscope"], capture_output=True,
                          text=True, env=environ, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=60, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 4, done.stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {done.stderr!r}"
    assert "Connection refused" in lines[0] and "'zeroscope'" in lines[0]


def test_select_repo_files_without_variant_and_with_shards() -> None:
    plain = hub.select_repo_files(files=MODELSCOPE_LISTING, variant=None)
    assert [name for name in plain if name.endswith(".safetensors")] == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    sharded = [
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    assert hub.select_repo_files(files=sharded, variant="fp16") == sharded[2:]


def test_a_pickle_entry_pulls_the_weights_loaders_read_and_nothing_else() -> None:
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
               "unet/diffusion_pytorch_model.fp16.bin", "unet/training_args.bin", "optimizer.pt",
               "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
               "text_encoder/pytorch_model.bin.index.json", "vae/diffusion_pytorch_model.safetensors"]
    wanted = hub.select_repo_files(files=listing, variant=None, weights="pickle")
    assert [name for name in wanted if not name.endswith(".json")] == [
        "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
        "unet/diffusion_pytorch_model.bin"]
    assert "unet/diffusion_pytorch_model.fp16.bin" in hub.select_repo_files(files=listing, variant="fp16",
                                                                           weights="pickle")


def test_path_entry_needs_its_marker_file(tmp_path: Path) -> None:
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    entry = video_entry(name="my-finetune", path=str(folder), repo="cerspense/zeroscope_v2_576w")
    with pytest.raises(ModelError) as caught:
        hub.resolve_weights(entry=entry)
    message = str(caught.value)
    assert f"{folder} has no model_index.json" in message and "/etc/dmedit/models.toml" in message
    assert not hub.weights_present(entry=entry)

    (folder / "model_index.json").write_text("{}", encoding="utf-8")
    assert hub.resolve_weights(entry=entry) == folder
    assert download.pull(entry=entry) == folder
    detector = DetectorEntry(name="my-detector", family="grounding_dino", path=str(folder))
    assert hub.local_model_dir(entry=detector) is None


def test_builder_entry_is_built_once_into_the_cache(tmp_path: Path, fake_builder: types.SimpleNamespace) -> None:
    entry = video_entry(name="tiny", builder="tiny-t2v")
    target = tmp_path / "dmedit-cache" / f"tiny.build{hub.BUILD_REVISION}"
    assert not hub.weights_present(entry=entry)

    assert hub.resolve_weights(entry=entry) == target
    assert hub.resolve_weights(entry=entry) == target
    assert download.pull(entry=entry) == target
    assert len(fake_builder.calls) == 1
    assert (target / "model_index.json").read_text(encoding="utf-8") == '{"built": "here"}'
    assert hub.weights_present(entry=entry)
    assert sorted(os.listdir(target.parent)) == [target.name]

    detector = DetectorEntry(name="tiny-detector", family="grounding_dino", builder="tiny-grounding-dino")
    assert (hub.resolve_weights(entry=detector) / "config.json").is_file()


def test_failed_build_leaves_nothing_behind(tmp_path: Path, fake_builder: types.SimpleNamespace) -> None:
    def broken(*, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "unet").mkdir()
        raise RuntimeError("out of disk space")

    fake_builder.module.build_video = broken
    entry = video_entry(name="tiny", builder="tiny-t2v")
    with pytest.raises(ModelError, match="model 'tiny'.*out of disk space"):
        hub.resolve_weights(entry=entry)
    assert os.listdir(tmp_path / "dmedit-cache") == []

    fake_builder.module.build_video = lambda *, path: path.mkdir(parents=True)
    with pytest.raises(ModelError, match="wrote no model_index.json"):
        hub.resolve_weights(entry=entry)
    assert os.listdir(tmp_path / "dmedit-cache") == []


def test_concurrent_build_that_finishes_first_wins(tmp_path: Path, fake_builder: types.SimpleNamespace) -> None:
    target = tmp_path / "dmedit-cache" / f"tiny.build{hub.BUILD_REVISION}"

    def slow_twin(*, path: Path) -> None:
        target.mkdir(parents=True)
        (target / "model_index.json").write_text('{"built": "by the other process"}', encoding="utf-8")
        path.mkdir(parents=True)
        (path / "model_index.json").write_text('{"built": "here"}', encoding="utf-8")

    fake_builder.module.build_video = slow_twin
    folder = hub.resolve_weights(entry=video_entry(name="tiny", builder="tiny-t2v"))
    assert folder == target
    assert (target / "model_index.json").read_text(encoding="utf-8") == '{"built": "by the other process"}'
    assert sorted(os.listdir(target.parent)) == [target.name]


def test_unknown_builder_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown builder 'nope'"):
        hub.resolve_weights(entry=video_entry(builder="nope"))


def test_builder_table_points_at_real_functions() -> None:
    for name, target in hub.BUILDERS.items():
        module_name, function_name = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function_name)), name


def test_cache_dir_and_offline_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.cache_dir() == tmp_path / "dmedit-cache"
    monkeypatch.delenv("DMEDIT_CACHE")
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *args, **kwargs: str(tmp_path / "platform-cache"))
    assert hub.cache_dir() == tmp_path / "platform-cache"

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    assert not hub.is_offline()
    hub.set_offline()
    assert (os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"]) == ("1", "1")
    assert hub.is_offline()
