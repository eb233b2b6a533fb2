"""The paper's model-based metrics: tiny random CLIP/LPIPS/tracker weights through the real loading and
scoring code, the motion-fidelity score on known tracks, the `[scorers.NAME]` registry table, and the
real entries failing offline with exit 4 and the pull hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch

from clips import shapes_frame
from dmedit.core.errors import EXIT_MODEL, InputError, ModelError, UsageError
from dmedit.models.scorers.choice import DEFAULT_SCORERS, TINY_SCORERS
from dmedit.evaluation.model_metrics import (
    check_scorer_weights,
    model_metric_names,
    motion_fidelity_from_tracks,
    score_with_models,
)
from dmedit.models.registry import load_registry
from dmedit.models.scorers.lpips import ALEXNET_CHANNELS, LpipsScorer
from dmedit.models.scorers.lpips_weights import convert
from dmedit.models.scorers.tracker import _moved, _refine, tiny_config
from test_cli_errors import dmedit

CPU = torch.device("cpu")
FRAMES = 6


def moving_clip(*, frames: int = FRAMES, start: int = 0) -> np.ndarray:
    """(F, 64, 96, 3) uint8: a red square and a blue disc moving over a textured background."""
    return np.stack([shapes_frame(index=start + index, width=96, height=64) for index in range(frames)])


def tiny_scores(source: np.ndarray, edited: np.ndarray, **options) -> dict:
    return score_with_models(source=source, edited=edited, registry=load_registry(), device=CPU,
                             **{"target_text": "a red square", "scorers": TINY_SCORERS, **options})


@pytest.fixture(scope="module")
def identical_and_changed() -> tuple[dict, dict]:
    """Tiny-model scores of a moving clip against itself and against an edit that changes the square."""
    source = moving_clip()
    edited = source.copy()
    edited[:, 10:30, :, :] = (30, 200, 30)
    return tiny_scores(source, source.copy()), tiny_scores(source, edited)


def test_identical_clips_score_best_and_every_metric_has_its_shape(identical_and_changed: tuple[dict, dict]) -> None:
    identical, changed = identical_and_changed
    assert tuple(identical) == model_metric_names() == tuple(changed)
    assert identical["frame_lpips"].value == 0.0 < changed["frame_lpips"].value
    assert identical["motion_fidelity"].value == pytest.approx(1.0)
    assert changed["motion_fidelity"].value <= identical["motion_fidelity"].value
    for name, steps in (("text_align", FRAMES), ("frame_lpips", FRAMES), ("frame_con", FRAMES - 1),
                        ("motion_fidelity", FRAMES - 1)):
        assert len(identical[name].per_frame) == steps, name
        assert identical[name].model == TINY_SCORERS[{"frame_lpips": "lpips", "motion_fidelity": "tracker"}.get(
            name, "clip")]
    for scores in (identical, changed):
        text = scores["text_align"]
        assert 0.0 <= text.value <= 2.5 and -1.0 <= text.extra["cosine"] <= 1.0
        assert text.extra["clip_s"] == text.value
        assert -1.0 <= scores["frame_con"].value <= 1.0 and -1.0 <= scores["motion_fidelity"].value <= 1.0
        assert scores["frame_lpips"].value >= 0.0 and not scores["frame_lpips"].higher_is_better


def test_a_static_clip_is_perfectly_consistent_and_text_align_needs_a_text() -> None:
    static = np.repeat(moving_clip(frames=1), 4, axis=0)
    scores = tiny_scores(static, static.copy(), target_text=None)
    assert "text_align" not in scores
    assert scores["frame_con"].value == pytest.approx(1.0, abs=1e-5)
    assert scores["motion_fidelity"].value == pytest.approx(1.0)


def test_one_frame_has_no_pair_metrics_and_a_subset_loads_only_its_models() -> None:
    one = moving_clip(frames=1)
    scores = score_with_models(source=one, edited=one.copy(), target_text="a red square", registry=load_registry(),
                               device=CPU, scorers={"lpips": "tiny-lpips"}, metrics=["frame_lpips", "frame_con"])
    assert list(scores) == ["frame_lpips"]  # the real CLIP (absent here) was never needed


def test_bad_arguments_fail_with_one_line() -> None:
    clip = moving_clip(frames=2)
    with pytest.raises(InputError, match="differ"):
        tiny_scores(clip, clip[:, :32])
    with pytest.raises(UsageError, match="unknown model metric 'psnr'"):
        tiny_scores(clip, clip, metrics=["psnr"])
    with pytest.raises(UsageError, match="the tracker role"):
        tiny_scores(clip, clip, scorers={"tracker": "tiny-clip"}, metrics=["motion_fidelity"])
    with pytest.raises(UsageError, match="did you mean 'tiny-lpips'"):
        tiny_scores(clip, clip, scorers={"lpips": "tiny-lpip"}, metrics=["frame_lpips"])


@pytest.mark.parametrize(("metric", "role"), [("text_align", "clip"), ("motion_fidelity", "tracker")])
def test_real_hub_scorers_fail_offline_with_the_pull_hint(
    metric: str, role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    clip = moving_clip(frames=2)
    with pytest.raises(ModelError) as caught:
        score_with_models(source=clip, edited=clip, target_text="a car", registry=load_registry(), device=CPU,
                          metrics=[metric])
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_MODEL and "\n" not in message
    assert f"scorer '{DEFAULT_SCORERS[role]}'" in message
    assert f"`dmedit models pull {DEFAULT_SCORERS[role]}`" in message and "[scorers." in message


def test_missing_lpips_folder_says_how_to_write_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry_file = tmp_path / "mine.toml"
    registry_file.write_text(f'[scorers.lpips-alex]\npath = "{tmp_path / "nothing-here"}"\n', encoding="utf-8")
    clip = moving_clip(frames=2)
    with pytest.raises(ModelError) as caught:
        score_with_models(source=clip, edited=clip, target_text=None, registry=load_registry(
            registry_file=registry_file), device=CPU, metrics=["frame_lpips"])
    message = str(caught.value)
    assert "\n" not in message and "nothing-here" in message and "python -m dmedit.models.scorers.lpips_weights" in message


def test_models_cli_lists_scorers_and_pull_fails_offline_with_exit_4() -> None:
    listing = dmedit("models")
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert listing.returncode == 0 and {"clip-vit-large-patch14", "lpips-alex", "efficientloftr", "tiny-clip"} <= set(
        rows)
    assert "openai/clip-vit-large-patch14@32bd64288804" in rows["clip-vit-large-patch14"]
    pulled = dmedit("models", "pull", "clip-vit-large-patch14")
    lines = [line for line in pulled.stderr.splitlines() if line.strip()]
    assert pulled.returncode == EXIT_MODEL and len(lines) == 1 and "clip-vit-large-patch14" in lines[0]
    assert "offline" in lines[0]


def test_motion_fidelity_of_known_tracks() -> None:
    steps = np.arange(5, dtype=np.float64)
    right = np.stack([np.stack([10 + 2 * steps, 20 + 0 * steps], axis=-1)])
    left = np.stack([np.stack([10 - 2 * steps, 20 + 0 * steps], axis=-1)])
    down = np.stack([np.stack([10 + 0 * steps, 20 + 3 * steps], axis=-1)])
    still = np.stack([np.stack([10 + 0 * steps, 20 + 0 * steps], axis=-1)])
    assert motion_fidelity_from_tracks(source_tracks=right, edited_tracks=right)[0] == pytest.approx(1.0)
    assert motion_fidelity_from_tracks(source_tracks=right, edited_tracks=left)[0] == pytest.approx(-1.0)
    assert motion_fidelity_from_tracks(source_tracks=right, edited_tracks=down)[0] == pytest.approx(0.0)
    assert motion_fidelity_from_tracks(source_tracks=still, edited_tracks=still)[0] == pytest.approx(1.0)
    assert motion_fidelity_from_tracks(source_tracks=right, edited_tracks=still)[0] == pytest.approx(0.0)
    # Each edited track takes its best source track: a left mover finds the left-moving source one.
    score, per_step = motion_fidelity_from_tracks(source_tracks=np.concatenate([right, left]),
                                                  edited_tracks=np.concatenate([left, left]))
    assert score == pytest.approx(1.0) and per_step.shape == (4,) and np.allclose(per_step, 1.0)


def test_tracks_follow_the_matches_around_them() -> None:
    first = np.array([[10.0, 10.0], [50.0, 50.0]])
    second = np.array([[15.0, 10.0], [50.0, 40.0]])
    moved = _moved(points=np.array([[11.0, 10.0], [49.0, 52.0]]), first=first, second=second, sigma=8.0)
    assert moved == pytest.approx(np.array([[16.0, 10.0], [49.0, 42.0]]), abs=1e-6)
    assert _moved(points=first, first=np.empty((0, 2)), second=np.empty((0, 2)), sigma=8.0) is first


def test_fine_refinement_moves_each_point_to_its_best_window_cell() -> None:
    """One-hot window features: the first stage must pick image-0 cell (row 1, col 6) and image-1 cell (row 5,
    col 2) of the 8x8 windows, i.e. offsets (2.5, -2.5) and (-1.5, 1.5) from the coarse points."""
    config = tiny_config()
    side, channels = 8, 16
    fine_0 = torch.zeros(1, 1, side * side, channels)
    fine_1 = torch.zeros(1, 1, (side + 2) ** 2, channels)
    fine_0[0, 0, 1 * side + 6, 0] = 10.0
    fine_1[0, 0, (5 + 1) * (side + 2) + (2 + 1), 0] = 10.0
    coarse = torch.tensor([[[[40.0, 24.0]], [[48.0, 24.0]]]])
    point_0, point_1 = _refine(config=config, fine_0=fine_0, fine_1=fine_1, coarse_points=coarse, fine_scale=1.0)
    assert point_0[0, 0].tolist() == pytest.approx([42.5, 21.5])
    assert point_1[0, 0].tolist() == pytest.approx([46.5, 25.5])


def test_lpips_folder_from_published_weight_files(tmp_path: Path) -> None:
    """torchvision's AlexNet state and lpips's head file (random values of the real shapes) convert to a
    folder that loads and scores identical frames 0."""
    generator = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
              10: (256, 256, 3, 3)}
    backbone = {f"features.{index}.weight": torch.randn(shape, generator=generator) * 0.05
                for index, shape in shapes.items()}
    backbone.update({f"features.{index}.bias": torch.zeros(shape[0]) for index, shape in shapes.items()})
    backbone["classifier.1.weight"] = torch.zeros(4, 4)
    heads = {f"lin{index}.model.1.weight": torch.rand(1, width, 1, 1, generator=generator)
             for index, width in enumerate(ALEXNET_CHANNELS)}
    torch.save(backbone, tmp_path / "alexnet-owt.pth")
    torch.save(heads, tmp_path / "alex.pth")
    convert(backbone=tmp_path / "alexnet-owt.pth", heads=tmp_path / "alex.pth", path=tmp_path / "lpips-alex")
    scorer = LpipsScorer.load(path=tmp_path / "lpips-alex", device=CPU)
    clip = moving_clip(frames=2)
    assert scorer.distances(source=clip, edited=clip.copy()).tolist() == [0.0, 0.0]
    assert (scorer.distances(source=clip, edited=255 - clip) > 0).all()
    del heads["lin4.model.1.weight"]
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(ModelError, match="missing .*lins.4.weight"):
        convert(backbone=tmp_path / "alexnet-owt.pth", heads=tmp_path / "alex.pth", path=tmp_path / "other")


@pytest.fixture()
def only_this_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *args, **kwargs: str(tmp_path / "user-config"))
    monkeypatch.delenv("DMEDIT_MODELS", raising=False)
    return tmp_path / "mine.toml"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param('[scorers.foo]\nfamily = "clip"\nbuilder = "tiny-clip"\nrevison = "abc"\n',
                     ["[scorers.foo] unknown key 'revison'", "did you mean 'revision'"], id="unknown-key"),
        pytest.param('[scorers.foo]\nfamily = "cotracker"\nrepo = "a/b"\n',
                     ["[scorers.foo] key 'family' must be one of clip, lpips, efficientloftr"], id="unknown-family"),
        pytest.param('[scorers.foo]\nfamily = "lpips"\n', ["[scorers.foo] needs one of the keys"], id="no-weights"),
        pytest.param('[scorers.foo]\nbase = "tiny-clp"\n', ["[scorers.foo] key 'base'", "did you mean 'tiny-clip'"],
                     id="unknown-base"),
    ],
)
def test_scorer_entry_errors_name_file_entry_and_key(only_this_registry: Path, text: str,
                                                     fragments: list[str]) -> None:
    only_this_registry.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        load_registry(registry_file=only_this_registry)
    message = str(caught.value)
    assert message.startswith(f"{only_this_registry}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_user_scorer_entry_merges_over_the_builtin_one(only_this_registry: Path) -> None:
    only_this_registry.write_text('[scorers.clip-vit-large-patch14]\npath = "clip-l"\n\n'
                                  '[scorers.my-clip]\nbase = "tiny-clip"\n', encoding="utf-8")
    registry = load_registry(registry_file=only_this_registry)
    merged = registry.scorer("clip-vit-large-patch14")
    assert merged.path == str(only_this_registry.parent / "clip-l") and merged.repo == "openai/clip-vit-large-patch14"
    assert registry.scorer("my-clip").builder == "tiny-clip" and registry.scorer("my-clip").family == "clip"
    with pytest.raises(UsageError, match="unknown scorer 'clip-vit'"):
        registry.scorer("clip-vit")


def test_weights_are_checked_before_any_frame_is_scored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    check_scorer_weights(registry=load_registry(), scorers=TINY_SCORERS)
    with pytest.raises(ModelError, match="dmedit models pull efficientloftr"):
        check_scorer_weights(registry=load_registry(), scorers={"clip": "tiny-clip", "lpips": "tiny-lpips"})
