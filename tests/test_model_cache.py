"""Runs of one process share loaded models through a ModelCache (what `dmedit batch` relies on)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from dmedit.core.console import Reporter
from dmedit.models.model_cache import ModelCache
from dmedit.runs.pipeline import run_edit
from dmedit.runs.settings import EditOverrides, ModelSettings, OutputSettings, RunRequest, SpanSettings


def request(video: Path, output: Path, *, tgt: str) -> RunRequest:
    return RunRequest(video=video, src="a square", tgt=tgt, span=SpanSettings(frames=4),
                      model=ModelSettings(name="tiny"), edit=EditOverrides(steps=1),
                      output=OutputSettings(path=output))


def quiet_reporter() -> Reporter:
    return Reporter(console=Console(file=io.StringIO()), quiet=True)


def test_two_runs_with_one_cache_load_the_model_and_detector_once(tmp_path: Path, ntsc_clip: Path) -> None:
    models = ModelCache()
    for index, tgt in enumerate(("a circle", "a star")):
        output = tmp_path / f"out{index}.mp4"
        assert run_edit(request=request(ntsc_clip, output, tgt=tgt), reporter=quiet_reporter(), models=models) == output
        assert output.exists()
    assert models.loads == 2, "one video backend and one detector for both runs"
    assert len(models.loaded) == 2


def test_another_model_entry_loads_its_own(tmp_path: Path, ntsc_clip: Path, tiny_model_dir: Path) -> None:
    registry = tmp_path / "mine.toml"
    registry.write_text(f'[models.my-tiny]\nbase = "tiny"\npath = "{tiny_model_dir}"\n')
    models = ModelCache()
    first = request(ntsc_clip, tmp_path / "a.mp4", tgt="a circle")
    run_edit(request=first, reporter=quiet_reporter(), models=models)
    other = RunRequest(video=ntsc_clip, src="a square", tgt="a circle", span=SpanSettings(frames=4),
                       model=ModelSettings(name="my-tiny", registry=registry), edit=EditOverrides(steps=1),
                       output=OutputSettings(path=tmp_path / "b.mp4"))
    run_edit(request=other, reporter=quiet_reporter(), models=models)
    assert models.loads == 3, "a second video backend; the detector is shared"
