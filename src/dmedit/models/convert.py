"""Pickle checkpoints (`.bin`, `.pt`, `.pth`) turned into safetensors without running their code.

dmedit loads safetensors only. A pickle is a program: loading one the ordinary way may call any
function it names. Here each one is read with `torch.load(weights_only=True)`, PyTorch's restricted
unpickler, which builds tensors and plain containers (dicts, lists, numbers, strings) and refuses
anything else a pickle asks for (a function to call, a class to build) before calling it; such a
file is a one-line ModelError naming it, and nothing is written for it.

Each checkpoint becomes safetensors beside it, under the names diffusers and transformers look for
(`safetensors_name`): diffusion_pytorch_model[.fp16].bin -> diffusion_pytorch_model[.fp16].safetensors,
pytorch_model.bin -> model.safetensors, and a sharded checkpoint (`*-00001-of-00002.bin` listed by
`*.bin.index.json`) becomes safetensors shards and a `*.safetensors.index.json` whose weight_map
names them. Tensors that share memory (tied weights) are written as copies, which safetensors
requires. Every file appears whole or not at all (core.files), a sharded checkpoint's index after
all its shards; a checkpoint whose safetensors are already there is left as it is, so converting
again does nothing. Pickles are deleted only when asked.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmedit.core.errors import ModelError, UsageError
from dmedit.core.files import replaced_atomically

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
"""The pickle checkpoint files `convert_folder` reads (PyTorch's torch.save format or a plain pickle)."""
SAFETENSORS_METADATA = {"format": "pt"}
"""The header transformers requires of a safetensors file it loads."""
_INDEX_NAME = re.compile(r"(?P<stem>[^/]+?)\.(?:bin|pt|pth)\.index(?P<variant>\.[^.]+)?\.json")
_TRANSFORMERS_STEM = re.compile(r"^pytorch_model(?=$|[.-])")
LOADED_PICKLE = re.compile(r"(?:diffusion_)?pytorch_model(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.bin")
"""The pickle names diffusers and transformers would load, were pickles allowed (name, variant,
shard number): what `models pull` downloads for a `weights = "pickle"` entry."""
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass(frozen=True)
class Checkpoint:
    """One pickle checkpoint: a file, or the shards its index lists, and the safetensors it becomes.

    sources/targets: pickle files and their safetensors, in the same order; index/index_target: a
    sharded checkpoint's index JSON and its safetensors index (None for a single file).
    """

    sources: tuple[Path, ...]
    targets: tuple[Path, ...]
    index: Path | None = None
    index_target: Path | None = None

    def has_safetensors(self) -> bool:
        """True when its safetensors are there: the index (written last) or the single file."""
        return (self.index_target or self.targets[0]).is_file()

    def pickles(self) -> tuple[Path, ...]:
        """Every file of the pickle form: the sources and the index."""
        return self.sources + ((self.index,) if self.index is not None else ())


@dataclass(frozen=True)
class Conversion:
    """What converting one checkpoint did: `converted` False when its safetensors were already there,
    `tensors` how many it holds (0 when not read), `removed` whether its pickles were deleted."""

    checkpoint: Checkpoint
    converted: bool
    tensors: int
    removed: bool

    def describe(self, *, root: Path) -> str:
        """One line, with paths relative to `root`: what became what."""
        checkpoint = self.checkpoint
        source, target = checkpoint.index or checkpoint.sources[0], checkpoint.index_target or checkpoint.targets[0]
        shards = f" ({len(checkpoint.sources)} shards)" if checkpoint.index is not None else ""
        names = f"{_relative(path=source, root=root)} -> {_relative(path=target, root=root)}{shards}"
        count = f"{self.tensors} tensor{'' if self.tensors == 1 else 's'}"
        line = f"converted {names}, {count}" if self.converted else f"already converted: {names}"
        return line + ("; pickles removed" if self.removed else "")


def safetensors_name(*, name: str) -> str:
    """The safetensors file name a loader looks for in place of pickle file `name` (a weight file or
    a shard): the suffix becomes .safetensors, and transformers' `pytorch_model` becomes `model`."""
    stem = name.rsplit(".", 1)[0]
    return _TRANSFORMERS_STEM.sub("model", stem) + ".safetensors"


def safetensors_index_name(*, name: str) -> str | None:
    """`X.bin.index[.VARIANT].json` -> `Y.safetensors.index[.VARIANT].json` (Y as in `safetensors_name`),
    or None when `name` is not a pickle checkpoint's index."""
    match = _INDEX_NAME.fullmatch(name)
    if match is None:
        return None
    return f"{_TRANSFORMERS_STEM.sub('model', match['stem'])}.safetensors.index{match['variant'] or ''}.json"


def find_checkpoints(*, folder: Path) -> list[Checkpoint]:
    """Every pickle checkpoint under `folder` (hidden files and folders skipped), shards grouped by
    their index; a missing shard or an unreadable index is a ModelError naming the file."""
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and not _hidden(path=path, root=folder)]
    checkpoints, sharded = [], set()
    for path in files:
        index_target = safetensors_index_name(name=path.name)
        if index_target is not None:
            shards = _shards(index=path)
            sharded.update(shards)
            checkpoints.append(Checkpoint(
                sources=shards, targets=tuple(shard.with_name(safetensors_name(name=shard.name)) for shard in shards),
                index=path, index_target=path.with_name(index_target),
            ))
    for path in files:
        if path.suffix in PICKLE_SUFFIXES and path not in sharded:
            target = path.with_name(safetensors_name(name=path.name))
            checkpoints.append(Checkpoint(sources=(path,), targets=(target,)))
    return sorted(checkpoints, key=lambda checkpoint: checkpoint.pickles()[0])


def pickle_only_folders(*, folder: Path) -> list[Path]:
    """The folders under `folder` (itself included) that hold weights a loader would read as pickles
    (diffusion_pytorch_model*.bin, pytorch_model*.bin) and no .safetensors file: what `dmedit models
    convert` still has to do before dmedit can load the model."""
    with_pickles = {path.parent for path in folder.rglob("*.bin") if LOADED_PICKLE.fullmatch(path.name)}
    return sorted(path for path in with_pickles if not any(path.glob("*.safetensors")))


def convert_folder(*, folder: Path, remove_pickles: bool = False) -> Iterator[Conversion]:
    """Convert every pickle checkpoint under `folder`, yielding each as it is done (see the module).

    A folder that is not there is a UsageError; a pickle that asks for more than tensors and plain
    containers, or that is no checkpoint, a ModelError naming it (what was converted before it stays).
    """
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    for checkpoint in find_checkpoints(folder=folder):
        yield convert_checkpoint(checkpoint=checkpoint, remove_pickles=remove_pickles)


def convert_checkpoint(*, checkpoint: Checkpoint, remove_pickles: bool = False) -> Conversion:
    """Write `checkpoint`'s safetensors unless they are there; then delete its pickles if asked."""
    tensors, converted = 0, not checkpoint.has_safetensors()
    if converted:
        with ExitStack() as renames:  # entered first, left last: the index is renamed after every shard
            index_temporary = None
            if checkpoint.index_target is not None:
                index_temporary = renames.enter_context(replaced_atomically(path=checkpoint.index_target))
            for source, target in zip(checkpoint.sources, checkpoint.targets):
                tensors += _write_safetensors(source=source, temporary=renames.enter_context(
                    replaced_atomically(path=target)))
            if index_temporary is not None:
                _write_index(index=checkpoint.index, temporary=index_temporary)
    if remove_pickles:
        for path in checkpoint.pickles():
            path.unlink(missing_ok=True)
    return Conversion(checkpoint=checkpoint, converted=converted, tensors=tensors, removed=remove_pickles)


def read_state_dict(*, path: Path) -> dict[str, Any]:
    """The named tensors of pickle checkpoint `path`, read by the restricted unpickler (nothing in
    the file is called). A pickle asking for anything else, an unreadable file or one that is not a
    mapping of names to tensors is a ModelError naming `path`; a refused system read stays an OSError."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol would be a second line
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        found = _REFUSED_GLOBAL.search(str(error))
        wants = f"asks for {found[1]}" if found else "holds more than tensors and plain containers"
        raise ModelError(f"refused {path}: the pickle {wants}, which a weights file never needs; nothing in it "
                         "was run and nothing was written for it (move it away if it is not weights)") from error
    except OSError:
        raise
    except Exception as error:  # a truncated or corrupt file: zip, pickle and torch each raise their own
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from error
    if not (isinstance(loaded, Mapping) and all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in loaded.items())):
        raise ModelError(f"cannot convert {path}: it holds a {type(loaded).__name__}, not a mapping of names to "
                         "tensors (a state dict)")
    return dict(loaded)


def without_shared_memory(*, state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` with each tensor that shares memory with an earlier one, or is not a whole contiguous
    block of its own memory, replaced by a contiguous copy: safetensors refuses both."""
    import torch

    seen: set[int] = set()
    unshared = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.nbytes == storage.nbytes()
        if storage.data_ptr() in seen or not whole:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(storage.data_ptr())
        unshared[name] = tensor
    return unshared


def _write_safetensors(*, source: Path, temporary: Path) -> int:
    from safetensors.torch import save_file

    state = without_shared_memory(state=read_state_dict(path=source))
    save_file(state, str(temporary), metadata=SAFETENSORS_METADATA)
    return len(state)


def _write_index(*, index: Path, temporary: Path) -> None:
    data = _read_index(index=index)
    weight_map = {name: safetensors_name(name=shard) for name, shard in data["weight_map"].items()}
    temporary.write_text(json.dumps({**data, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")


def _read_index(*, index: Path) -> dict[str, Any]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read checkpoint index {index}: {error}") from error
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not (isinstance(weight_map, dict) and weight_map and all(
            isinstance(shard, str) and os.path.basename(shard) == shard for shard in weight_map.values())):
        raise ModelError(f"{index}: not a checkpoint index (its weight_map must name shard files beside it)")
    return data


def _shards(*, index: Path) -> tuple[Path, ...]:
    names = sorted(set(_read_index(index=index)["weight_map"].values()))
    shards = tuple(index.with_name(name) for name in names)
    for shard in shards:
        if not shard.is_file() or shard.suffix not in PICKLE_SUFFIXES:
            raise ModelError(f"{index} lists {shard.name}, which is not a pickle checkpoint beside it")
    return shards


def _hidden(*, path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _relative(*, path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
