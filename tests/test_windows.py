"""Temporal windows for long clips (issue 12): the grid, its shift from step to step, the mean of the
windows' gradients on shared frames, resume, and the seam measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmedit.engine import editor
from dmedit.core.config import EditConfig
from dmedit.engine.windows import WindowPlan, draw_starts, seam_measure

KEY_LAYERS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
SRC, TGT = "a grey car on a road", "a red car on a road"


def test_the_grid_covers_every_frame_and_pins_both_ends() -> None:
    plan = WindowPlan(frames=64, length=16, overlap=8)
    assert plan.starts(offset=0) == [0, 8, 16, 24, 32, 40, 48]
    assert plan.starts(offset=3) == [0, 3, 11, 19, 27, 35, 43, 48]
    for offset in range(plan.stride):
        starts = plan.starts(offset=offset)
        coverage = plan.coverage(starts=starts)
        assert coverage.min() >= 1 and all(start + 16 <= 64 for start in starts)
    assert WindowPlan(frames=12, length=16, overlap=8).starts(offset=5) == [0], "a short clip is one window"


def test_the_grid_shifts_from_step_to_step_and_repeats_for_a_seed() -> None:
    plan = WindowPlan(frames=64, length=16, overlap=8)

    def grids(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return [draw_starts(plan=plan, generator=generator) for _ in range(6)]

    assert len({tuple(grid) for grid in grids(0)}) > 1, "the grid moves between steps"
    assert grids(0) == grids(0)


def test_a_subset_of_windows_per_step() -> None:
    plan = WindowPlan(frames=64, length=16, overlap=8, per_step=3)
    starts = draw_starts(plan=plan, generator=torch.Generator().manual_seed(1))
    assert len(starts) == 3 and starts == sorted(starts)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _session(backend, frames, **settings) -> editor.EditSession:
    config = EditConfig(lambda_spatial=30.0, lambda_temporal=30.0, dds_scale=5.0, learning_rate=0.3, **settings)
    return editor.prepare(backend=backend, frames=frames, masks=None, src_prompt=SRC, tgt_prompt=TGT,
                          config=config, key_layers=KEY_LAYERS)


def test_a_frame_in_two_windows_gets_the_mean_of_their_gradients(tiny_backend, clip) -> None:
    session = _session(tiny_backend, clip, window=16, window_overlap=8, seed=4)
    state, twin = editor.new_state(session=session), editor.new_state(session=session)
    draw = editor.draw_step(session=session, state=twin)
    assert len(draw.starts) >= 2
    weights = session.config.weights()
    separate = []
    for start in draw.starts:
        step = editor.step_losses(session=session, state=twin, draw=draw, start=start)
        total = sum(weights[name] * loss for name, loss in step.losses.items())
        separate.append(torch.autograd.grad(total, twin.latents)[0])
    before = state.latents.detach().clone()
    editor.run_step(session=session, state=state)
    applied = (before - state.latents.detach()) / session.config.learning_rate
    coverage = session.windows.coverage(starts=draw.starts)
    shared = int(torch.nonzero(coverage == 2)[0])
    holders = [i for i, start in enumerate(draw.starts) if start <= shared < start + 16]
    mean_of_two = (separate[holders[0]] + separate[holders[1]])[:, :, shared] / 2
    assert mean_of_two.abs().max() > 1e-4
    assert torch.allclose(applied[:, :, shared], mean_of_two, atol=1e-5 * mean_of_two.abs().max().item() + 1e-7)
    expected = sum(separate) / coverage.view(1, 1, -1, 1, 1)
    assert torch.allclose(applied, expected, atol=1e-5 * expected.abs().max().item() + 1e-7)


def test_a_window_as_long_as_the_clip_is_the_unwindowed_engine(tiny_backend, clip) -> None:
    results = []
    for window in (0, 24, 40):
        session = _session(tiny_backend, clip[:8], window=window, seed=2, steps=2)
        results.append(editor.optimise(session=session).latents)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_resume_mid_clip_equals_an_unbroken_windowed_run(tiny_backend, clip, tmp_path) -> None:
    settings = dict(window=16, window_overlap=8, steps=3, checkpoint_every=10)
    unbroken = editor.optimise(session=_session(tiny_backend, clip, **settings))
    asked = []
    with pytest.raises(Exception, match="--resume"):
        editor.optimise(session=_session(tiny_backend, clip, **settings), checkpoint=tmp_path / "c.pt",
                        stop_requested=lambda: 2 if asked.append(1) or len(asked) >= 2 else 0)
    resumed = editor.optimise(session=_session(tiny_backend, clip, **settings), checkpoint=tmp_path / "c.pt",
                              resume=True)
    assert torch.equal(resumed.latents, unbroken.latents) and resumed.history == unbroken.history


def test_the_seam_measure_finds_a_jump_at_a_window_boundary() -> None:
    plan = WindowPlan(frames=16, length=8, overlap=4)
    source = np.full((16, 8, 8, 3), 100, np.uint8)
    smooth = source + np.arange(16, dtype=np.uint8)[:, None, None, None]
    masks = np.ones((16, 8, 8), np.float32)
    even = seam_measure(source=source, edited=smooth, masks=masks, plan=plan)
    assert even["ratio"] == pytest.approx(1.0)
    jumpy = smooth.copy()
    jumpy[8:] += 20  # a step between frames 7 and 8, where a base-grid window ends
    seams = seam_measure(source=source, edited=jumpy, masks=masks, plan=plan)
    assert [7, 8] in seams["boundary_pairs"] and seams["ratio"] > 2


def test_a_whole_64_frame_clip_is_written_with_its_rate_size_and_audio(tmp_path) -> None:
    import json
    from fractions import Fraction

    from clips import make_clip
    from test_cli import streams
    from test_cli_errors import dmedit

    source = make_clip(tmp_path / "long clip.mp4", width=96, height=64, frames=64, fps=Fraction(25), audio=True)
    output = tmp_path / "out.mp4"
    result = dmedit("run", str(source), "--src", "a", "--tgt", "b", "--model", "tiny", "--frames", "all",
                    "--window", "16", "--window-overlap", "8", "--steps", "1", "--mask", "full", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "windows: 7-8 windows of 16 frames (overlap 8) per step over 64 frames" in result.stderr
    facts = streams(output)
    assert facts["frames"] == 64 and facts["rate"] == 25 and (facts["width"], facts["height"]) == (96, 64)
    assert facts["audio"]
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["windows"]["base_grid_starts"] == [0, 8, 16, 24, 32, 40, 48]
    assert report["seams"]["ratio"] is not None and [7, 8] in report["seams"]["boundary_pairs"]
    assert report["span"]["frames"] == 64


def test_window_settings_the_model_cannot_take_are_usage_errors(tmp_path, ntsc_clip) -> None:
    from test_cli_errors import EXIT_USAGE, assert_clean_failure, dmedit

    base = ["run", str(ntsc_clip), "--src", "a", "--tgt", "b", "--model", "tiny", "--mask", "full",
            "-o", str(tmp_path / "out.mp4")]
    too_long = dmedit(*base, "--frames", "all", "--window", "40")
    assert_clean_failure(too_long, code=EXIT_USAGE, mentions="--window 40: model 'tiny' takes at most 32 frames",
                         folder=tmp_path)
    overlap = dmedit(*base, "--frames", "all", "--window", "8", "--window-overlap", "8")
    assert_clean_failure(overlap, code=EXIT_USAGE, mentions="--window-overlap", folder=tmp_path)
    words = dmedit(*base, "--frames", "many")
    assert_clean_failure(words, code=EXIT_USAGE, mentions="--frames must be a number of frames or 'all'",
                         folder=tmp_path)
