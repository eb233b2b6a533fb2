"""Still images a run writes beside its video (plots, curves), atomically (core.files)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dmedit.core.files import replaced_atomically


def write_png(*, path: Path, image: np.ndarray, what: str) -> None:
    """(H,W,3) uint8 BGR -> PNG at `path`, through a temporary name (never a half-written file)."""
    with replaced_atomically(path=path, suffix=".png") as temporary:
        if not cv2.imwrite(str(temporary), image):
            raise OSError(f"{path}: cannot write {what}")
