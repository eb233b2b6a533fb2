"""Write the `lpips-alex` scorer folder from the two published weight files (no network here).

    python -m dmedit.models.scorers.lpips_weights alexnet-owt-7be5be79.pth alex.pth ~/.cache/dmedit/lpips-alex

- AlexNet, ImageNet weights of torchvision (BSD-3-Clause):
  https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (keys `features.N.weight/bias`).
- LPIPS v0.1 linear heads (BSD-2-Clause), `lpips/weights/v0.1/alex.pth` of
  github.com/richzhang/PerceptualSimilarity or of the `lpips` PyPI package (keys
  `linK.model.1.weight`).

A whole `lpips.LPIPS(net="alex").state_dict()` saved with torch.save (keys `net.sliceK.N.*`,
`linK.model.1.weight`) works as either argument. Files are read with `torch.load(weights_only=True)`
(or safetensors), which runs no pickled code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Mapping

import torch

from dmedit.core.errors import DmeditError, UsageError
from dmedit.models.scorers.lpips import ALEXNET_CHANNELS, CONV_INDICES, save_lpips_folder

_BACKBONE_KEY = re.compile(r"(?:features|net\.slice\d)\.(?P<index>\d+)\.(?P<kind>weight|bias)")
_HEAD_KEY = re.compile(r"(?:lin(?P<head>\d)\.model\.1|lins\.(?P<other>\d)(?:\.model\.1)?)\.weight")


def lpips_state(*, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published key names (torchvision AlexNet, lpips heads, a whole lpips state) -> LpipsNet's names.

    Other keys (AlexNet's classifier, lpips's scaling buffers, duplicate `lins.K` copies) are dropped.
    """
    state = {}
    for name, tensor in tensors.items():
        backbone = _BACKBONE_KEY.fullmatch(name)
        head = _HEAD_KEY.fullmatch(name)
        if backbone and int(backbone["index"]) in CONV_INDICES:
            state[f"features.{backbone['index']}.{backbone['kind']}"] = tensor
        elif head:
            state[f"lins.{head['head'] or head['other']}.weight"] = tensor
    return state


def read_tensors(*, path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file or a torch.save'd state dict -> name -> tensor; a bad file is a UsageError."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # OSError, pickle and safetensors errors
        raise UsageError(f"{path}: cannot read weights: {str(error).strip().splitlines()[0]}") from error
    if not isinstance(loaded, Mapping):
        raise UsageError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {str(name): tensor for name, tensor in loaded.items() if isinstance(tensor, torch.Tensor)}


def convert(*, backbone: Path, heads: Path, path: Path) -> None:
    """Read the AlexNet and LPIPS-head files and write the scorer folder at `path`."""
    state = {**lpips_state(tensors=read_tensors(path=backbone)), **lpips_state(tensors=read_tensors(path=heads))}
    save_lpips_folder(state=state, channels=ALEXNET_CHANNELS, path=Path(path).expanduser())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dmedit.models.scorers.lpips_weights",
                                     description="Write the LPIPS (AlexNet) scorer folder from published weights.")
    parser.add_argument("backbone", type=Path, help="torchvision alexnet-owt-7be5be79.pth (or a whole lpips state)")
    parser.add_argument("heads", type=Path, help="lpips weights/v0.1/alex.pth")
    parser.add_argument("folder", type=Path, help="the folder to write (the entry's `path`)")
    arguments = parser.parse_args(argv)
    try:
        convert(backbone=arguments.backbone, heads=arguments.heads, path=arguments.folder)
    except DmeditError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
