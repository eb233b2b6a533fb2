"""The HTML pages without a browser (tests/test_pages_browser.py plays them in Chromium): what a run's
page OUT.html says and links, its source span OUT.source.mp4, --no-html, the batch's index.html
(escaped job names, a failed job's reason, rewritten while the batch runs) and output folders
that refuse new files (exit 1, one line)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import av
import numpy as np
import pytest
from rich.console import Console

from clips import make_clip
from dmedit.batch.jobs import load_jobs
from dmedit.batch.queue import BatchSettings, run_batch
from dmedit.cli.run_flags import job_options
from dmedit.core.console import Reporter
from test_cli_errors import EXIT_USAGE, assert_clean_failure, dmedit

EXIT_FAILURE, EXIT_BATCH_FAILED = 1, 6
TINY = ("--model", "tiny", "--steps", "1")
ODD_NAME = "<b>&\"'"
"""A job (file) name made of HTML metacharacters."""


class Page(HTMLParser):
    """What a page shows: its text, the (th, td) pairs of its tables, every src/href, the scripts'
    sources, and the text of each <h3> and <article>."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.cells: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] = []
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]
        if tag in ("th", "td"):
            self._cell = []
        elif tag == "tr":
            self._row = []
        elif tag == "h3":
            self._heading = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and len(self._row) == 2:
            self.cells.append((self._row[0], self._row[1]))
        elif tag == "h3" and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def page_of(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def frames_of(path: Path) -> tuple[np.ndarray, float]:
    """Every frame (T,H,W,3) and the stream's rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("pages") / "clip.mp4", width=96, height=64, frames=16)


def test_a_run_page_shows_the_report_and_plays_the_edited_span_beside_the_edit(tmp_path: Path, clip: Path) -> None:
    output = tmp_path / "edit.mp4"
    result = dmedit("run", str(clip), "--src", "a red square", "--tgt", "a <green> square & more", *TINY,
                    "--start", "6", "--frames", "5", "--out-size", "model", "--compare", "--eval", "--eval-scorers",
                    "none", "-o", str(output))
    assert result.returncode == 0, result.stderr
    report = json.loads(output.with_suffix(".json").read_text())
    page = page_of(tmp_path / "edit.html")
    shown = dict(page.cells)
    assert shown["seed"] == str(report["seed"]) and shown["steps done"] == "1"
    for name in ("lambda_spatial", "lambda_temporal", "guidance_scale", "learning_rate", "t_min", "t_max"):
        assert float(shown[name]) == pytest.approx(report["edit"][name], rel=1e-5), name
    assert shown["entry"] == "tiny" and shown["revision"] == "—" and shown["first frame"] == "6"
    assert shown["origin"] == report["resolved"]["mask"] and shown["device"] == report["resolved"]["device"]
    assert set(report["timings_s"]) <= set(shown) and shown["peak rss"].endswith("MiB")
    assert {"motion_fidelity_lk", "flow_epe"} <= set(report["eval"]["metrics"])
    assert "motion_fidelity_lk" in page.all_text, "the metric table"
    assert "edit.mp4: a red square → a <green> square & more" in page.all_text, "the prompts, as text"
    assert "<green>" not in (tmp_path / "edit.html").read_text(), "escaped, not markup"

    local = [link for link in page.links if not link.startswith(("data:", "#"))]
    assert {"edit.mp4", "edit.source.mp4", "edit.compare.mp4", "edit.json"} <= set(local)
    assert all("://" not in link and not link.startswith("/") for link in local), "relative links only"
    assert all((tmp_path / unquote(link)).exists() for link in local), local
    assert sum(link.startswith("data:image/png;base64,") for link in page.links) == 2, "loss and eval figures inside"
    assert not any(link.endswith((".css", ".js")) for link in local), "styles and script inline"

    source, source_rate = frames_of(tmp_path / "edit.source.mp4")
    edited, edited_rate = frames_of(output)
    assert source.shape == edited.shape and source_rate == pytest.approx(edited_rate), "the edit's frames, size, rate"
    fit = report["fit"]
    assert source.shape[1:3] == (fit["model_height"], fit["model_width"]), "--out-size model: the model's size"
    left, top, width, height = fit["source_box"]
    crops = frames_of(clip)[0][:, top:top + height, left:left + width]
    assert crops.shape[1:3] == source.shape[1:3], "the crop fit needs no resize here"
    errors = [np.abs(source.astype(int) - crops[start:start + 5].astype(int)).mean() for start in range(0, 12)]
    assert int(np.argmin(errors)) == 6, f"OUT.source.mp4 is the span from frame 6: {errors}"


def test_no_html_writes_neither_the_page_nor_its_source_video(tmp_path: Path, clip: Path) -> None:
    output = tmp_path / "plain.mp4"
    result = dmedit("run", str(clip), "--src", "a", "--tgt", "b", *TINY, "--mask", "full", "--frames", "4",
                    "--no-html", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plain.json", "plain.mp4"]
    assert json.loads((tmp_path / "plain.json").read_text())["options"]["output"]["html"] is False


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good clip, one named with HTML metacharacters, and a corrupt one."""
    folder = tmp_path_factory.mktemp("shots")
    make_clip(folder / "a.mp4", frames=8)
    make_clip(folder / f"{ODD_NAME}.mp4", frames=8)
    (folder / "broken.mp4").write_text("this is not a video\n")
    return folder


def test_the_batch_page_escapes_names_and_names_a_failed_jobs_reason(tmp_path: Path, shots: Path) -> None:
    out = tmp_path / "out"
    result = dmedit("batch", str(shots), "--src", "a <i>square</i>", "--tgt", "a circle", *TINY, "--frames", "4",
                    "-o", str(out))
    assert result.returncode == EXIT_BATCH_FAILED, result.stderr
    raw = (out / "index.html").read_text()
    assert ODD_NAME not in raw and "<i>square" not in raw, "names and prompts are text, never markup"
    page = page_of(out / "index.html")
    assert page.headings == [f"1. {ODD_NAME}", "2. a", "3. broken"]
    assert "3 jobs: 2 done, 1 failed" in page.all_text and "finished" in page.all_text
    assert "failed (exit 3)" in page.all_text and "broken.mp4: not a readable video file" in page.all_text
    assert "a <i>square</i> → a circle" in page.all_text
    local = [unquote(link) for link in page.links if not link.startswith("data:")]
    assert {f"{ODD_NAME}.html", f"{ODD_NAME}.json", f"{ODD_NAME}.mp4", "a.html", "a.json", "a.mp4"} == set(local)
    assert sum(link.startswith("data:image/jpeg;base64,") for link in page.links) == 2, "a poster per edit"
    job_page = page_of(out / f"{ODD_NAME}.html")
    assert f"{ODD_NAME}.mp4: a <i>square</i> → a circle" in job_page.all_text

    written = (out / "index.html").stat().st_mtime_ns
    rerun = dmedit("batch", str(shots), "--src", "a <i>square</i>", "--tgt", "a circle", *TINY, "--frames", "4",
                   "-o", str(out), "--no-html")
    assert rerun.returncode == EXIT_BATCH_FAILED, rerun.stderr
    assert (out / "index.html").stat().st_mtime_ns == written, "--no-html: the batch leaves its page alone"


def test_the_batch_page_is_rewritten_while_jobs_run(tmp_path: Path, shots: Path) -> None:
    """What the page says at each job's start (batch_planted.copies_the_page keeps a copy)."""
    out = tmp_path / "out"
    jobs = load_jobs(source=shots, given={"src": "a", "tgt": "b", "model": "tiny", "frames": "4", "steps": 1},
                     options=job_options(), out_dir=out)
    reporter = Reporter(console=Console(file=io.StringIO()), quiet=True)
    summary = run_batch(jobs=jobs, reporter=reporter, emit=lambda line: None, settings=BatchSettings(
        workers=1, out_dir=out, runner="batch_planted:copies_the_page"))
    assert [outcome.status for outcome in summary.outcomes] == ["done", "done", "failed"]
    seen = {name: page_of(tmp_path / "seen" / f"{name}.html").all_text for name in (ODD_NAME, "a", "broken")}
    assert "3 jobs: 1 running, 2 pending" in seen[ODD_NAME] and "this page reloads itself" in seen[ODD_NAME]
    assert "3 jobs: 1 done, 1 running, 1 pending" in seen["a"]
    assert "3 jobs: 2 done, 1 running" in seen["broken"]
    assert "3 jobs: 2 done, 1 failed" in page_of(out / "index.html").all_text


@pytest.fixture()
def read_only(tmp_path: Path):
    """A folder that refuses new files: permission bits for a user, a read-only bind mount for root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root ignores permission bits and cannot mount a read-only folder here: {mounted.stderr.strip()}")
    try:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pytest.skip("the read-only bind mount still takes files")
        except OSError:
            pass
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("command, where", [
    ("run", "-o {folder}/edit.mp4"), ("batch", "-o {folder}"), ("batch", "-o {folder}/new"),
    ("ablate", "--out-dir {folder}"), ("ablate", "--out-dir {folder}/new"),
])
def test_an_output_folder_that_refuses_files_is_exit_1_in_one_line(read_only: Path, clip: Path, command: str,
                                                                   where: str) -> None:
    source = clip.parent if command == "batch" else clip
    extra = ("--scorers", "none") if command == "ablate" else ()
    result = dmedit(command, str(source), "--src", "a", "--tgt", "b", *TINY, "--mask", "full", "--frames", "4",
                    *extra, *where.format(folder=read_only).split())
    assert_clean_failure(result, code=EXIT_FAILURE, mentions="cannot write in", folder=read_only)
    assert str(read_only) in result.stderr and list(read_only.iterdir()) == []


def test_a_job_whose_page_would_be_the_batch_page_is_refused_before_any_job_runs(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    make_clip(shots / "index.mp4", frames=4)
    out = tmp_path / "out"
    result = dmedit("batch", str(shots), "--src", "a", "--tgt", "b", *TINY, "--frames", "4", "-o", str(out))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="job 'index' would write its page over", folder=out)
    assert list(out.iterdir()) == []
    allowed = dmedit("batch", str(shots), "--src", "a", "--tgt", "b", *TINY, "--frames", "4", "-o", str(out),
                     "--no-html")
    assert allowed.returncode == 0, allowed.stderr


def test_a_file_where_the_batch_folder_should_be_is_a_usage_error(tmp_path: Path, clip: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    result = dmedit("batch", str(clip.parent), "--src", "a", "--tgt", "b", *TINY, "--frames", "4", "-o", str(taken))
    assert_clean_failure(result, code=EXIT_USAGE, mentions="a file stands where this folder should be", folder=tmp_path)
    assert taken.read_text() == "a file\n"


def test_a_batch_page_that_cannot_be_written_leaves_the_batch_its_outcome(tmp_path: Path) -> None:
    """The page is for looking: when it cannot be written (here a folder stands in its place; a full
    disk alike), one warning says so and the jobs, the summary and the exit code are the batch's."""
    shots = tmp_path / "shots"
    shots.mkdir()
    make_clip(shots / "a.mp4", frames=4)
    out = tmp_path / "out"
    (out / "index.html").mkdir(parents=True)
    result = dmedit("batch", str(shots), "--src", "a", "--tgt", "b", *TINY, "--frames", "4", "--mask", "full",
                    "-o", str(out))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "batch page" in line]
    assert len(warnings) == 1 and f"{out / 'index.html'}" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "a.mp4").is_file() and result.stdout.strip().splitlines()[-1].startswith("1 job")
