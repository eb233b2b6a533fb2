"""The ablation's page, OUT_DIR/index.html (`dmedit ablate`): the source span and the four variants
side by side, played together, each linking its own run page; the metric table (the one of
ablation.md), the per-frame curves (ablation.png) and the other files of the ablation.

Written last, after every file it shows, in the staging folder of the table's files; the layout and the escaping are runs.page's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

from dmedit.core.files import write_text
from dmedit.evaluation.metric_report import metric_table
from dmedit.evaluation.metric_types import Metric
from dmedit.runs.outputs import companion
from dmedit.runs.page import render_page
from dmedit.runs.settings import RunRequest

PAGE_NAME = "index.html"
LINKED_FILES = ("ablation.md", "ablation.json", "ablation.png", "ablation.mp4", "mask.mask.mp4", "mask.masks")


def write_ablation_page(*, out_dir: Path, folder: Path, base: RunRequest, variants: Sequence[tuple[str, str]],
                        scores: Mapping[str, Mapping[str, Metric]], scorers: str) -> None:
    """folder/index.html, for OUT_DIR: `folder` is where the table's files are staged before they are
    renamed into OUT_DIR with the page (runs.outputs.staged_bundle). `variants`: (file name, label)
    of each run, in order; `scores`: label -> its metrics (as in ablation.md)."""

    def link(name: str) -> str | None:
        """The relative link to OUT_DIR/name, when it is there or staged to be."""
        path = next((place / name for place in (folder, out_dir) if (place / name).exists()), None)
        return None if path is None else quote(name) + ("/" if path.is_dir() else "")

    source = companion(output=out_dir / f"{variants[0][0]}.mp4", suffix=".source.mp4")
    videos = [{"label": "source", "video": link(source.name), "page": None}] if source.is_file() else []
    videos += [{"label": label, "video": link(f"{name}.mp4"), "page": link(f"{name}.html")} for name, label in variants]
    context = {"title": f"Ablation: {base.video.name}, {base.src} → {base.tgt}", "base": base, "scorers": scorers,
               "videos": videos, "table": metric_table(runs=scores), "curves": link("ablation.png"),
               "mask": link("mask.mask.mp4"),
               "files": [(name, link(name)) for name in LINKED_FILES if link(name) is not None]}
    write_text(path=folder / PAGE_NAME, text=render_page(package="dmedit.evaluation", template="ablation.html.j2",
                                                         context=context))
