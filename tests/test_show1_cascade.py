"""The Show-1 cascade (`--model show1-tiny`, built offline): keyframes edited, then interpolation,
SR1 and SR2, written at the source's size and timing; the stage options; offline failures."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clips import make_clip
from dmedit.cli.app import app
from dmedit.core.errors import UsageError
from dmedit.media.video import probe
from test_cli_errors import dmedit

PROMPTS = ("--src", "a man", "--tgt", "a robot")
runner = CliRunner()


def run_here(*args: str):
    """`dmedit ARGS` in this process (the model and import costs paid once per session)."""
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def clip29(clip_dir: Path) -> Path:
    """29 frames (Show-1's interpolated length), 96x64, 25 fps, with audio."""
    return make_clip(clip_dir / "show1-29.mp4", width=96, height=64, frames=29, fps=Fraction(25), audio=True)


def _report(output: Path) -> dict:
    return json.loads(output.with_suffix(".json").read_text())


def test_the_whole_cascade_writes_29_frames_at_the_source_size_and_rate(tmp_path: Path, clip29: Path) -> None:
    output = tmp_path / "edited.mp4"
    result = dmedit("run", str(clip29), *PROMPTS, "--model", "show1-tiny", "--steps", "1", "--mask", "full",
                    "-o", str(output))
    assert result.returncode == 0, result.stderr
    written = probe(path=output)
    assert (written.width, written.height, written.frame_count) == (96, 64, 29)
    assert written.fps == Fraction(25) and written.has_audio
    report = _report(output)
    stages = [(s["stage"], s["frames"], s["height"], s["width"]) for s in report["stages"]]
    assert stages == [("keyframes", 8, 16, 24), ("interpolation", 29, 16, 24), ("sr1", 29, 32, 48),
                      ("sr2", 29, 48, 80)]
    assert {"interpolation", "sr1", "sr2"} <= set(report["timings_s"])
    assert report["steps_done"] == 1 and report["span"]["frames"] == 29


def test_a_longer_span_plays_the_29_frames_over_its_duration(tmp_path: Path, ntsc_clip: Path) -> None:
    output = tmp_path / "interpolated.mp4"
    result = run_here("run", str(ntsc_clip), *PROMPTS, "--model", "show1-tiny", "--steps", "1", "--mask", "full",
                      "--frames", "24", "--stop-after", "interpolation", "--out-size", "model", "-o", str(output))
    assert result.exit_code == 0, result.output
    written = probe(path=output)
    assert (written.width, written.height, written.frame_count) == (24, 16, 29)
    assert written.fps == Fraction(30000, 1001) * 29 / 24
    assert written.duration == pytest.approx(24 * 1001 / 30000, abs=1e-3)
    assert [s["stage"] for s in _report(output)["stages"]] == ["keyframes", "interpolation"]


def test_stop_after_keyframes_writes_the_8_edited_keyframes(tmp_path: Path, clip29: Path) -> None:
    output = tmp_path / "keyframes.mp4"
    result = run_here("run", str(clip29), *PROMPTS, "--model", "show1-tiny", "--steps", "1", "--mask", "full",
                      "--stop-after", "keyframes", "--keyframe-size", "32x48", "-o", str(output))
    assert result.exit_code == 0, result.output
    written = probe(path=output)
    assert (written.width, written.height, written.frame_count) == (96, 64, 8)
    assert written.duration == pytest.approx(29 / 25, abs=1e-3)
    report = _report(output)
    assert [(s["stage"], s["height"], s["width"]) for s in report["stages"]] == [("keyframes", 32, 48)]
    assert report["span"]["indices"] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert "interpolation" not in report["timings_s"]


def test_show1_offline_names_every_missing_stage_and_how_to_get_them(tmp_path: Path, clip29: Path) -> None:
    result = run_here("run", str(clip29), *PROMPTS, "--model", "show1", "--offline", "-o", str(tmp_path / "x.mp4"))
    assert result.exit_code == 4, result.output
    assert "dmedit models pull show1" in result.output and "Traceback" not in result.output
    for stage in ("showlab/show-1-base", "show1-interpolation", "show1-sr1", "show1-sr2"):
        assert stage in result.output
    keyframes_only = run_here("run", str(clip29), *PROMPTS, "--model", "show1", "--stop-after", "keyframes",
                              "-o", str(tmp_path / "x.mp4"))
    assert keyframes_only.exit_code == 4 and "show1-sr1" not in keyframes_only.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, mentions", [
    (("--model", "show1-sr1"), "--model show1"),
    (("--model", "tiny", "--stop-after", "sr1"), "--stop-after"),
    (("--model", "show1-tiny", "--keyframe-size", "20x30"), "--keyframe-size"),
])
def test_stage_entries_and_cascade_options_are_usage_errors(tmp_path: Path, clip29: Path, args, mentions) -> None:
    result = run_here("run", str(clip29), *PROMPTS, *args, "-o", str(tmp_path / "x.mp4"))
    assert result.exit_code == 2, result.output
    assert mentions in result.output and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stages, mentions", [
    ('["show1-tiny-sr1", "show1-tiny-interpolation", "show1-tiny-sr2"]', "show1_interpolation"),
    ('["show1-tiny-interpolation", "show1-tiny-sr1"]', "needs 3 stages"),
    ('["show1-tiny-interpolation", "show1-tiny-sr1", "show1-tiny-sr3"]', "show1-tiny-sr2"),
])
def test_the_registry_checks_a_cascades_stages(tmp_path: Path, stages: str, mentions: str) -> None:
    from dmedit.models.registry import load_registry

    registry = tmp_path / "mine.toml"
    registry.write_text(f'[models.mine]\nbase = "show1-tiny"\nstages = {stages}\n')
    with pytest.raises(UsageError, match=mentions):
        load_registry(registry_file=registry)


def test_the_keyframe_backend_encodes_with_t5_once_and_predicts_the_first_3_channels(hermetic_environment) -> None:
    from diffusers import DDPMScheduler

    from dmedit.models.backends.show1 import load_show1
    from dmedit.models.hub import resolve_weights
    from dmedit.models.registry import load_registry

    folder = resolve_weights(entry=load_registry().model("show1-tiny"))
    backend = load_show1(folder=folder, device=torch.device("cpu"), dtype=torch.float32,
                         vae_dtype=torch.float32, vae_chunk=8)
    first = backend.encode_prompts(prompts=["", "a man", "a robot"])
    again = backend.encode_prompts(prompts=["a robot", ""])
    assert backend.text.loads == 1 and torch.equal(again, first[[2, 0]])
    frames = torch.rand(8, 3, 16, 24) * 2 - 1
    latents = backend.encode_video(frames=frames)
    assert torch.equal(backend.decode_latents(latents=latents), frames)
    timesteps = torch.tensor([500])
    with torch.no_grad():
        eps = backend.predict_noise(latents=latents, timesteps=timesteps, text_embeddings=first[2:])
        full = backend.unet(latents, timesteps, encoder_hidden_states=first[2:]).sample
    assert full.shape[1] == 6 and torch.equal(eps, full[:, :3])
    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.allclose(backend.alphas_cumprod, cosine)
