"""HTML pages: the run's page (OUT.html, written last in the bundle's staging folder), and what the
pages of the layers above (batch.gallery, evaluation.ablation_page) share: one Jinja2 environment
with autoescaping, the shared layout and styles (templates/page.html.j2, with the script that plays
a group of videos together), relative links and PNGs embedded as data URIs.

A page is self-contained: no network, no CDN, CSS and script inline, links relative to the page.
Templates ship as package data: each package's `templates/` folder, then this one's for the layout.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import jinja2

from dmedit.core.files import write_text
from dmedit.runs.outputs import companion
from dmedit.runs.report import loss_png

LAYOUT_PACKAGE = "dmedit.runs"
TEMPLATES = "templates"
Rows = list[tuple[str, str]]


def render_page(*, package: str, template: str, context: Mapping[str, Any]) -> str:
    """`template` of `package`'s templates/ folder (extending this package's page.html.j2), rendered
    with every value HTML-escaped."""
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(package, TEMPLATES),
                                  jinja2.PackageLoader(LAYOUT_PACKAGE, TEMPLATES)])
    environment = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return environment.get_template(template).render(**context)


def page_link(*, target: Path, page: Path) -> str:
    """A URL to `target` relative to the folder of `page`, every unsafe character %-escaped."""
    return quote(Path(os.path.relpath(target, page.parent)).as_posix())


def png_data_uri(*, png: bytes) -> str:
    """PNG bytes as a data: URI, so a page shows the figure without another file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def shown(value: Any) -> str:
    """A report value as a table cell: None as a dash, switches as on/off, floats to 6 figures."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _rows(mapping: Mapping[str, Any], *, leave_out: Sequence[str] = ()) -> Rows:
    return [(key, shown(value)) for key, value in mapping.items() if key not in leave_out]


def settings_sections(*, report: Mapping[str, Any]) -> list[tuple[str, Rows]]:
    """Every resolved setting of a run report, grouped: model, method, span, mask, output."""
    model, resolved, options = report["model"], report["resolved"], report["options"]
    span, mask = report["span"], report["mask"]
    return [
        ("Model", [("entry", model["name"]), ("family", shown(model["family"])), ("repo", shown(model["repo"])),
                   ("revision", shown(model["revision"])), ("weights", shown(model["path"])),
                   ("device", resolved["device"]), ("dtype", resolved["dtype"]),
                   *_rows(options["model"], leave_out=("name", "device", "dtype"))]),
        ("Method", [("seed", shown(report["seed"])), ("steps done", shown(report["steps_done"])),
                    *_rows(report["edit"], leave_out=("seed",))]),
        ("Span", [("first frame", shown(span["start_frame"])), ("frames", shown(span["frames"])),
                  ("rate (fps)", shown(span["fps"])), ("start (s)", shown(span["start_time"])),
                  ("duration (s)", shown(span["duration"])), ("variable rate", shown(span["variable_rate"])),
                  ("fit", shown(report["fit"]["mode"]))]),
        ("Mask", [("origin", resolved["mask"]), ("mask file", shown(options["mask"]["source"])),
                  ("detector used", shown(resolved["detector"])), ("coverage", shown(mask.get("coverage"))),
                  *_rows(options["mask"], leave_out=("source", "detector"))]),
        ("Output", _rows(options["output"])),
    ]


def timing_rows(*, report: Mapping[str, Any]) -> Rows:
    """Stage -> seconds (the total last), then the peak memory figures."""
    timings = [(stage, f"{seconds:.2f} s") for stage, seconds in report["timings_s"].items()]
    memory = [(f"peak {name.removesuffix('_mib').replace('_', ' ')}", f"{value:.0f} MiB")
              for name, value in (report.get("peak_memory") or {}).items()]
    return timings + memory


def metric_rows(*, record: Mapping[str, Any]) -> list[dict[str, str]]:
    """An eval record's metrics as table rows (name, value, better, range, model), skipped ones last."""
    rows = [{"name": name, "value": shown(metric["value"]), "range": metric["range"], "model": metric["model"],
             "better": "higher" if metric["higher_is_better"] else "lower"}
            for name, metric in record["metrics"].items()]
    rows += [{"name": name, "value": "skipped", "better": "—", "range": "—", "model": reason}
             for name, reason in (record.get("skipped") or {}).items()]
    return rows


def _staged(*, folder: Path, output: Path, suffix: str) -> Path | None:
    path = folder / companion(output=output, suffix=suffix).name
    return path if path.exists() else None


def _mask_view(*, folder: Path, output: Path, report: Mapping[str, Any]) -> dict[str, str] | None:
    """The mask folder the run kept (link) and its first mask image when it is in the bundle."""
    if not report.get("masks"):
        return None
    masks = Path(report["masks"])
    staged = sorted((folder / masks.name).glob("*.png")) if masks.parent == output.parent else []
    first = page_link(target=masks / staged[0].name, page=output) if staged else None
    return {"link": page_link(target=masks, page=output) + "/", "first": first, "count": str(len(staged))}


def _entries(*, folder: Path) -> Rows:
    """Each file and folder of the bundle as (name, link); a folder's with a trailing slash."""
    entries = []
    for entry in sorted(folder.iterdir()):
        slash = "/" if entry.is_dir() else ""
        if not entry.name.startswith("."):
            entries.append((entry.name + slash, quote(entry.name) + slash))
    return entries


def run_page(*, folder: Path, output: Path, report: Mapping[str, Any]) -> str:
    """The run's page: source and edit side by side (played together), the compare video, the mask,
    the loss and eval figures, every setting, the timings; from the report and the staged files."""
    def link(path: Path | None) -> str | None:
        return None if path is None else quote(path.name)

    loss = _staged(folder=folder, output=output, suffix=".loss.png")
    curves = _staged(folder=folder, output=output, suffix=".eval.png")
    record = report.get("eval")
    options = report["options"]
    context = {
        "title": f"{output.name}: {options['src']} → {options['tgt']}", "name": output.name, "report": report,
        "source": link(_staged(folder=folder, output=output, suffix=".source.mp4")), "edited": quote(output.name),
        "compare": link(_staged(folder=folder, output=output, suffix=".compare.mp4")),
        "mask": _mask_view(folder=folder, output=output, report=report),
        "loss": png_data_uri(png=loss.read_bytes() if loss else loss_png(history=report["loss_history"])),
        "metrics": metric_rows(record=record) if record else None,
        "curves": png_data_uri(png=curves.read_bytes()) if curves else None,
        "settings": settings_sections(report=report), "timings": timing_rows(report=report),
        "files": _entries(folder=folder),
    }
    return render_page(package=LAYOUT_PACKAGE, template="run.html.j2", context=context)


def write_run_page(*, folder: Path, output: Path, report: Mapping[str, Any]) -> None:
    """OUT.html in the staging `folder`, after every other file of the bundle."""
    page = folder / companion(output=output, suffix=".html").name
    write_text(path=page, text=run_page(folder=folder, output=output, report=report))
