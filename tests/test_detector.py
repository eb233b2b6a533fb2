"""backends/grounding_dino.py: the offline tiny detector, its hub layout and the detection contracts.

Random weights give arbitrary boxes: these tests check coordinates, thresholds and labels, not positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clips import shapes_frame
from dmedit.models.backends.grounding_dino import (
    TINY_SIZE,
    GroundingDinoDetector,
    _frame_detections,
    build_tiny_detector,
    normalise_prompt,
)
from dmedit.core.errors import InputError, ModelError, UsageError
from dmedit.masks.regions import detect_masks

SOURCE_WIDTH, SOURCE_HEIGHT = 301, 203
PROMPT = "A red Parrot. dog"


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grounding-dino-tiny")
    build_tiny_detector(path=folder)
    return folder


@pytest.fixture(scope="module")
def detector(detector_dir: Path) -> GroundingDinoDetector:
    return GroundingDinoDetector.load(path=detector_dir, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """5 frames of the generated shapes clip at a source size far from the detector's input size."""
    return np.stack([shapes_frame(index=index, width=SOURCE_WIDTH, height=SOURCE_HEIGHT) for index in range(5)])


def test_build_writes_the_hub_layout(detector_dir: Path) -> None:
    names = {path.name for path in detector_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt", "tokenizer_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)


def test_build_is_reproducible_and_every_prompt_word_tokenizes(
    detector_dir: Path, detector: GroundingDinoDetector, tmp_path: Path
) -> None:
    build_tiny_detector(path=tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (detector_dir / "model.safetensors").read_bytes()
    assert detector.model.config.num_queries == 10
    assert "[UNK]" not in detector.processor.tokenizer.tokenize("a robot. zebra xylophone quokka.")


def test_loading_a_missing_or_broken_folder_raises_model_error(tmp_path: Path, detector_dir: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        GroundingDinoDetector.load(path=tmp_path / "absent", device=torch.device("cpu"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((detector_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelError, match=str(broken)):
        GroundingDinoDetector.load(path=broken, device=torch.device("cpu"))


def test_prompts_are_lower_cased_and_dot_terminated() -> None:
    assert normalise_prompt(prompt="  A Red   Parrot. dog") == ("a red parrot. dog.", ["a red parrot", "dog"])
    with pytest.raises(UsageError):
        normalise_prompt(prompt=" . ")


def test_boxes_are_clipped_to_the_frame_and_labelled_by_their_best_phrase() -> None:
    token_phrase = [-1, 0, 0, -1, 1, -1, -1]  # [CLS] a man . dog . [SEP]
    probabilities = torch.zeros(3, 32)
    probabilities[0, [1, 4]] = torch.tensor([0.3, 0.7])
    probabilities[1, 2] = 0.9
    probabilities[2, [0, 3, 6]] = 0.95
    result = {
        "scores": torch.tensor([0.7, 0.9, 0.95]),
        "boxes": torch.tensor([[-5.0, -3.0, 50.0, 70.0], [120.0, 10.0, 130.0, 20.0], [1.0, 1.0, 9.0, 9.0]]),
    }
    found = _frame_detections(
        frame=4,
        result=result,
        token_probabilities=probabilities,
        token_phrase=token_phrase,
        phrases=["a man", "dog"],
        text_threshold=0.25,
        size=(100, 60),
    )
    assert [(d.frame, d.box, d.label) for d in found] == [(4, (0.0, 0.0, 50.0, 60.0), "dog")]


def test_boxes_are_in_source_pixels_with_labels_from_the_prompt(
    detector: GroundingDinoDetector, frames: np.ndarray
) -> None:
    found = detector.run(frames=frames, prompt=PROMPT, box_threshold=0.0, text_threshold=0.0, batch_size=2).detections
    assert len(found) == len(frames)
    boxes = np.array([d.box for frame in found for d in frame])
    assert all(d.frame == index for index, frame in enumerate(found) for d in frame)
    assert len(boxes) > 0 and all(len(frame) <= detector.model.config.num_queries for frame in found)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= SOURCE_WIDTH).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= SOURCE_HEIGHT).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, 2].max() > TINY_SIZE["longest_edge"] or boxes[:, 3].max() > TINY_SIZE["shortest_edge"]
    assert {d.label for frame in found for d in frame} <= {"a red parrot", "dog"}


def test_batch_size_does_not_change_the_detections(detector: GroundingDinoDetector, frames: np.ndarray) -> None:
    batched = detector.run(frames=frames, prompt=PROMPT, box_threshold=0.3, text_threshold=0.2, batch_size=8).detections
    single = detector.run(frames=frames, prompt=PROMPT, box_threshold=0.3, text_threshold=0.2, batch_size=1).detections
    assert [[d.label for d in frame] for frame in batched] == [[d.label for d in frame] for frame in single]
    for frame_batched, frame_single in zip(batched, single):
        for one, other in zip(frame_batched, frame_single):
            np.testing.assert_allclose(one.box, other.box, atol=1e-3)


def test_box_threshold_filters_scores(detector: GroundingDinoDetector, frames: np.ndarray) -> None:
    everything = detector.run(frames=frames, prompt=PROMPT, box_threshold=0.0, text_threshold=0.0)
    scores = np.array([d.score for frame in everything.detections for d in frame])
    assert all(len(frame) > 0 for frame in everything.detections)
    assert everything.best_score == pytest.approx(scores.max(), abs=1e-6)
    middle = float(np.median(scores))
    some = detector.run(frames=frames, prompt=PROMPT, box_threshold=middle, text_threshold=0.0).detections
    kept = [d.score for frame in some for d in frame]
    assert kept and all(score > middle for score in kept) and len(kept) < len(scores)
    nothing = detector.run(frames=frames, prompt=PROMPT, box_threshold=1.0, text_threshold=0.0)
    assert nothing.detections == [[] for _ in frames]
    assert nothing.best_score == pytest.approx(everything.best_score)


def test_text_threshold_one_keeps_no_box(detector: GroundingDinoDetector, frames: np.ndarray) -> None:
    found = detector.run(frames=frames[:2], prompt=PROMPT, box_threshold=0.0, text_threshold=1.0).detections
    assert found == [[], []]


def test_detect_masks_without_a_passing_box_names_prompt_score_and_threshold(
    detector: GroundingDinoDetector, frames: np.ndarray
) -> None:
    best = detector.run(frames=frames, prompt="a parrot", box_threshold=1.0, text_threshold=0.25).best_score
    with pytest.raises(InputError) as caught:
        detect_masks(
            detector=detector,
            frames=frames,
            prompt="a parrot",
            box_threshold=1.0,
            text_threshold=0.25,
            smooth=3,
            dilate=None,
        )
    message = str(caught.value)
    assert "'a parrot'" in message and f"{best:.3f}" in message and "--box-threshold 1" in message


def test_detect_masks_gives_source_size_masks_covering_every_frame(
    detector: GroundingDinoDetector, frames: np.ndarray
) -> None:
    result = detect_masks(
        detector=detector, frames=frames, prompt=PROMPT, box_threshold=0.0, text_threshold=0.0, smooth=3, dilate=2
    )
    assert result.masks.shape == (len(frames), SOURCE_HEIGHT, SOURCE_WIDTH)
    assert set(np.unique(result.masks)) <= {0.0, 1.0}
    assert all(mask.sum() > 0 for mask in result.masks)
