"""The ablation's page, OUT_DIR/index.html (`dmedit ablate`): the source span and the four variants
side by side, played together, each linking its own run page; the metric table (the one of
ablation.md), the per-frame curves (ablation.png) and the other files of the ablation.

Written last, after every file it shows; the layout and the escaping are runs.page's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from dmedit.core.files import write_text
from dmedit.evaluation.metric_report import metric_table
from dmedit.evaluation.metric_types import Metric
from dmedit.runs.outputs import companion
from dmedit.runs.page import page_link, render_page
from dmedit.runs.settings import RunRequest

PAGE_NAME = "index.html"
LINKED_FILES = ("ablation.md", "ablation.json", "ablation.png", "ablation.mp4", "mask.mask.mp4", "mask.masks")


def write_ablation_page(*, out_dir: Path, base: RunRequest, variants: Sequence[tuple[str, str]],
                        scores: Mapping[str, Mapping[str, Metric]], scorers: str) -> None:
    """OUT_DIR/index.html. `variants`: (file name, label) of each run, in order; `scores`: label ->
    its metrics (as in ablation.md)."""
    page = out_dir / PAGE_NAME

    def link(path: Path) -> str | None:
        return page_link(target=path, page=page) + ("/" if path.is_dir() else "") if path.exists() else None

    source = companion(output=out_dir / f"{variants[0][0]}.mp4", suffix=".source.mp4")
    videos = [{"label": "source", "video": link(source), "page": None}] if source.is_file() else []
    videos += [{"label": label, "video": link(out_dir / f"{name}.mp4"), "page": link(out_dir / f"{name}.html")}
               for name, label in variants]
    context = {"title": f"Ablation: {base.video.name}, {base.src} → {base.tgt}", "base": base, "scorers": scorers,
               "videos": videos, "table": metric_table(runs=scores), "curves": link(out_dir / "ablation.png"),
               "mask": link(out_dir / "mask.mask.mp4"),
               "files": [(name, link(out_dir / name)) for name in LINKED_FILES if (out_dir / name).exists()]}
    write_text(path=page, text=render_page(package="dmedit.evaluation", template="ablation.html.j2", context=context))
