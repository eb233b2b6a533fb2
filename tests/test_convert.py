"""Pickle checkpoints as models are published (`.bin` only, sharded, tied weights): `dmedit models
convert` turns them into safetensors without running their code, and the converted models run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clips import make_clip
from dmedit.core.config import ModelEntry
from dmedit.core.errors import ModelError, UsageError
from dmedit.models.convert import convert_folder, safetensors_index_name, safetensors_name
from dmedit.models.registry import load_registry
from test_cli_errors import assert_clean_failure
from warm_dmedit import dmedit

PROMPTS = ("--src", "a man", "--tgt", "a robot")
SHOW1_STAGES = ("show1-tiny", "show1-tiny-interpolation", "show1-tiny-sr1", "show1-tiny-sr2")


class Planted:
    """Unpickling this calls open(path, "w"): a file appears if a loader runs what a pickle asks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_planted_pickle_runs_its_code_in_an_unrestricted_load(tmp_path: Path) -> None:
    """What the refusals below guard against is real: a plain torch.load runs the planted call."""
    marker = tmp_path / "ran.txt"
    torch.save({"x": Planted(marker)}, tmp_path / "planted.bin")
    torch.load(tmp_path / "planted.bin", weights_only=False)
    assert marker.exists()


def pickle_name(safetensors: str) -> str:
    """The pickle a hub repository would hold in place of a safetensors file."""
    stem = safetensors.removesuffix(".safetensors")
    return ("pytorch_model" if stem == "model" else stem) + ".bin"


def save_shards(*, state: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
    """`state` as two pickle shards STEM-0000N-of-00002.bin and STEM.bin.index.json, as hub repositories
    shard large checkpoints."""
    names = list(state)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    weight_map = {}
    for number, half in enumerate(halves, start=1):
        shard = f"{stem}-{number:05d}-of-00002.bin"
        torch.save({name: state[name] for name in half}, folder / shard)
        weight_map.update({name: shard for name in half})
    index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}
    (folder / f"{stem}.bin.index.json").write_text(json.dumps(index), encoding="utf-8")


def pickled_copy(*, source: Path, target: Path, shard: str | None = None) -> Path:
    """A copy of model folder `source` whose weights are pickles only, as torch.save wrote them: the
    component `shard` in two shards, a T5 encoder's tied embedding as one tensor under both names."""
    shutil.copytree(source, target)
    for weights in sorted(target.rglob("*.safetensors")):
        state = load_file(weights)
        if "shared.weight" in state:  # transformers' pickles hold tied weights once, under both names
            state["encoder.embed_tokens.weight"] = state["shared.weight"]
        if weights.parent.name == shard:
            save_shards(state=state, folder=weights.parent, stem=pickle_name(weights.name).removesuffix(".bin"))
        else:
            torch.save(state, weights.with_name(pickle_name(weights.name)))
        weights.unlink()
    return target


def tensors_of(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Component folder -> every tensor in its safetensors files (shards merged)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for weights in folder.rglob("*.safetensors"):
        found.setdefault(weights.parent.relative_to(folder).as_posix(), {}).update(load_file(weights))
    return found


def assert_same_tensors(*, converted: Path, original: Path) -> None:
    """Every tensor of `original`'s safetensors is in `converted`'s, in the same component, equal."""
    ours, theirs = tensors_of(converted), tensors_of(original)
    assert ours.keys() == theirs.keys()
    for component, tensors in theirs.items():
        assert all(torch.equal(ours[component][name], tensor) for name, tensor in tensors.items()), component


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, (str, tuple, list)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value).lower() if isinstance(value, bool) else repr(value)


def path_entry(*, name: str, like: ModelEntry, path: Path, stages: tuple[str, ...] = ()) -> str:
    """A registry entry with `path = ` and the settings of built-in entry `like` (no builder)."""
    keys = dict(family=like.family, width=like.width, height=like.height, frames=like.frames,
                max_frames=like.max_frames, key_layers=like.key_layers, path=str(path), detector=like.detector,
                dtype={"cuda": like.dtype.cuda, "mps": like.dtype.mps, "cpu": like.dtype.cpu})
    keys.update({key: getattr(like, key) for key in ("window", "window_overlap") if getattr(like, key) is not None})
    if stages:
        keys["stages"] = stages
    table = "\n".join(f"{key} = {toml_value(value)}" for key, value in keys.items())
    defaults = "\n".join(f"{key} = {toml_value(value)}" for key, value in like.defaults.items())
    return f"[models.{name}]\n{table}\n\n[models.{name}.defaults]\n{defaults}\n\n"


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("pickle, safetensors", [
    ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
    ("diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16.safetensors"),
    ("diffusion_pytorch_model-00001-of-00002.bin", "diffusion_pytorch_model-00001-of-00002.safetensors"),
    ("pytorch_model.bin", "model.safetensors"),
    ("pytorch_model.fp16-00002-of-00003.bin", "model.fp16-00002-of-00003.safetensors"),
    ("learned_embeds.pt", "learned_embeds.safetensors"),
])
def test_converted_files_have_the_names_the_loaders_look_for(pickle: str, safetensors: str) -> None:
    assert safetensors_name(name=pickle) == safetensors


def test_index_names_follow_the_shards() -> None:
    assert safetensors_index_name(name="pytorch_model.bin.index.json") == "model.safetensors.index.json"
    assert (safetensors_index_name(name="diffusion_pytorch_model.bin.index.fp16.json")
            == "diffusion_pytorch_model.safetensors.index.fp16.json")
    assert safetensors_index_name(name="config.json") is None


def test_a_sharded_transformers_checkpoint_with_tied_weights_loads_after_conversion(tmp_path: Path) -> None:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8)
    model = T5EncoderModel(config)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    config.save_pretrained(folder)
    state = dict(model.state_dict())
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # one tensor under both names
    save_shards(state=state, folder=folder, stem="pytorch_model")

    conversions = list(convert_folder(folder=folder))

    assert [c.describe(root=folder) for c in conversions] == [
        f"converted pytorch_model.bin.index.json -> model.safetensors.index.json (2 shards), {len(state)} tensors"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    loaded = T5EncoderModel.from_pretrained(folder, use_safetensors=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    again = list(convert_folder(folder=folder))
    assert [c.converted for c in again] == [False] and (folder / "pytorch_model-00001-of-00002.bin").is_file()


def test_a_planted_shard_leaves_no_shard_of_its_checkpoint_written(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    save_shards(state={"a": torch.ones(3), "b": torch.zeros(2)}, folder=tmp_path, stem="diffusion_pytorch_model")
    torch.save({"b": torch.zeros(2), "x": Planted(marker)}, tmp_path / "diffusion_pytorch_model-00002-of-00002.bin")
    before = files_under(tmp_path)
    with pytest.raises(ModelError, match="diffusion_pytorch_model-00002-of-00002.bin"):
        list(convert_folder(folder=tmp_path))
    assert not marker.exists() and files_under(tmp_path) == before


def test_a_checkpoint_that_is_not_a_state_dict_or_folder_is_refused(tmp_path: Path) -> None:
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="list.pt.*not a mapping of names to tensors"):
        list(convert_folder(folder=tmp_path))
    with pytest.raises(UsageError, match="no such folder"):
        list(convert_folder(folder=tmp_path / "absent"))


def test_a_pickle_that_would_run_code_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    torch.save({"conv.weight": torch.ones(2, 2), "payload": Planted(marker)},
               model / "unet" / "diffusion_pytorch_model.bin")
    before = files_under(model)

    result = dmedit("models", "convert", str(model))

    assert_clean_failure(result, code=4, mentions=str(model / "unet" / "diffusion_pytorch_model.bin"), folder=model)
    assert "refused" in result.stderr and not marker.exists()
    assert files_under(model) == before  # no safetensors, no partial file


def test_a_full_disk_while_converting_is_one_line_and_a_rerun_goes_on(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = pickled_copy(source=tiny_model_dir, target=tmp_path / "pickled-tiny")
    before = files_under(folder)
    largest = max((folder / name).stat().st_size for name in before if name.endswith(".bin"))
    full = dmedit("models", "convert", str(folder), file_size_limit=largest // 2)
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert full.returncode == 1 and len(lines) == 1, full.stderr
    assert lines[0].startswith(f"error: {folder}/") and ".safetensors: File too large" in lines[0], lines[0]
    assert "MiB free on its disk" in lines[0]
    failed = lines[0].removeprefix(f"error: {folder}/").split(":")[0]
    after = files_under(folder)
    assert set(before) <= set(after) and failed not in after, "the pickles stay; the failed file is absent"
    assert not [name for name in after if Path(name).name.startswith(".")], "no partial file"
    again = dmedit("models", "convert", str(folder))
    assert again.returncode == 0 and failed in files_under(folder), again.stderr


def test_a_bin_only_tiny_model_is_refused_then_converts_and_runs(
    tmp_path: Path, tiny_model_dir: Path, ntsc_clip: Path,
) -> None:
    folder = pickled_copy(source=tiny_model_dir, target=tmp_path / "pickled-tiny", shard="unet")
    registry = tmp_path / "mine.toml"
    registry.write_text(path_entry(name="pickled", like=load_registry().model("tiny"), path=folder))
    output = tmp_path / "out.mp4"
    run = ("run", str(ntsc_clip), *PROMPTS, "--model", "pickled", "--registry", str(registry), "--mask", "full",
           "--steps", "1", "--frames", "4", "-o", str(output))

    refused = dmedit(*run)
    assert_clean_failure(refused, code=4, mentions=f"dmedit models convert {folder}", folder=tmp_path)
    listed = dmedit("models", "--registry", str(registry))
    assert [line.split()[4] for line in listed.stdout.splitlines() if line.startswith("pickled ")] == ["convert"]

    converted = dmedit("models", "convert", str(folder))
    assert converted.returncode == 0, converted.stderr
    assert ("converted unet/diffusion_pytorch_model.bin.index.json -> "
            "unet/diffusion_pytorch_model.safetensors.index.json (2 shards)") in converted.stdout
    assert "converted text_encoder/pytorch_model.bin -> text_encoder/model.safetensors" in converted.stdout
    assert f"{folder}: 3 converted, 0 already converted" in converted.stdout
    assert_same_tensors(converted=folder, original=tiny_model_dir)

    ran = dmedit(*run)
    assert ran.returncode == 0, ran.stderr
    assert output.is_file()

    stamps = {path: os.stat(folder / path).st_mtime_ns for path in files_under(folder) if ".safetensors" in path}
    again = dmedit("models", "convert", str(folder), "--remove-pickles")
    assert again.returncode == 0 and f"{folder}: 0 converted, 3 already converted" in again.stdout
    assert {path: os.stat(folder / path).st_mtime_ns for path in stamps} == stamps
    assert not [path for path in files_under(folder) if path.endswith((".bin", ".bin.index.json"))]


def test_a_bin_only_show1_cascade_converts_and_runs(tmp_path: Path, clip_dir: Path) -> None:
    from dmedit.models.hub import resolve_weights

    registry = load_registry()
    names = {stage: f"pickled-{stage}" for stage in SHOW1_STAGES}
    entries, folders = [], []
    for stage in SHOW1_STAGES:
        folders.append(pickled_copy(source=resolve_weights(entry=registry.model(stage)), target=tmp_path / stage))
        stages = tuple(names[name] for name in registry.model(stage).stages)
        entries.append(path_entry(name=names[stage], like=registry.model(stage), path=folders[-1], stages=stages))
    registry_file = tmp_path / "pickled.toml"
    registry_file.write_text("".join(entries))
    clip = make_clip(clip_dir / "convert-29.mp4", width=96, height=64, frames=29, fps=Fraction(25))
    output = tmp_path / "show1.mp4"
    run = ("run", str(clip), *PROMPTS, "--model", names["show1-tiny"], "--registry", str(registry_file),
           "--steps", "1", "--mask", "full", "-o", str(output))
    for folder in folders[:-1]:
        converted = dmedit("models", "convert", str(folder))
        assert converted.returncode == 0, converted.stderr
        assert ("converted unet/diffusion_pytorch_model.bin -> unet/diffusion_pytorch_model.safetensors"
                in converted.stdout)

    last_stage_pickled = dmedit(*run)

    assert last_stage_pickled.returncode == 4
    assert f"dmedit models convert {folders[-1]}" in last_stage_pickled.stderr
    assert len(last_stage_pickled.stderr.strip().splitlines()) == 1 and not output.exists()
    assert dmedit("models", "convert", str(folders[-1])).returncode == 0
    assert_same_tensors(converted=tmp_path / "show1-tiny", original=resolve_weights(entry=registry.model("show1-tiny")))

    result = dmedit(*run)

    assert result.returncode == 0, result.stderr
    report = json.loads(output.with_suffix(".json").read_text())
    assert [stage["stage"] for stage in report["stages"]] == ["keyframes", "interpolation", "sr1", "sr2"]


def test_pull_of_a_pickle_entry_converts_in_the_cache_and_loads_from_there(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`models pull` of a `weights = "pickle"` entry, against a fake hub serving a .bin-only repository."""
    import io

    import huggingface_hub
    from rich.console import Console

    from dmedit.core.console import Reporter
    from dmedit.models import download, hub

    repository = pickled_copy(source=tiny_model_dir, target=tmp_path / "repository", shard="text_encoder")
    real_snapshot_download = huggingface_hub.snapshot_download
    (repository / "README.md").write_text("a model card")
    revision = "0123456789abcdef0123456789abcdef01234567"
    requested = []

    def fake_snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, **kwargs):
        requested.extend(allow_patterns)
        snapshot = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
        for name in allow_patterns:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repository / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(download, "check_hub_reachable", lambda *, label: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, **kwargs: files_under(repository))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    registry = tmp_path / "hub-entry.toml"
    registry.write_text(f'[models.pickled-hub]\nbase = "zeroscope"\nrepo = "someone/pickled-tiny"\n'
                        f'revision = "{revision}"\nweights = "pickle"\n')
    entry = load_registry(registry_file=registry).model("pickled-hub")
    buffer = io.StringIO()

    folder = download.pull(entry=entry, reporter=Reporter(console=Console(file=buffer, width=300), held=None))

    assert sorted(name for name in requested if not name.endswith((".json", ".txt"))) == [
        "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
        "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin"]
    assert "pickled-hub: converted unet/diffusion_pytorch_model.bin -> unet/diffusion_pytorch_model.safetensors" \
        in buffer.getvalue()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", real_snapshot_download)
    assert hub.resolve_weights(entry=entry) == folder  # found in the cache, from the converted safetensors
    assert_same_tensors(converted=folder, original=tiny_model_dir)
    with pytest.raises(ModelError, match='has no .safetensors weights.*weights = "pickle"'):
        download.pull(entry=dataclasses.replace(entry, weights="safetensors"))


def test_the_weights_key_is_checked_and_shown(tmp_path: Path) -> None:
    registry = tmp_path / "bad.toml"
    registry.write_text('[models.mine]\nbase = "zeroscope"\nweights = "pkl"\n')
    with pytest.raises(UsageError, match="key 'weights' must be one of safetensors, pickle"):
        load_registry(registry_file=registry)
    builtin = load_registry()
    assert [builtin.model(name).weights for name in ("show1", "show1-interpolation", "show1-sr1", "show1-sr2")] == [
        "pickle"] * 4
    assert builtin.model("zeroscope").weights == "safetensors"
    shown = dmedit("models", "show", "show1")
    assert shown.returncode == 0 and "weights          pickle: " in shown.stdout
    assert "dmedit models pull" in shown.stdout.split("weights          pickle: ")[1].splitlines()[0]
