"""Grounding-DINO text-prompted box detection through transformers, plus an offline tiny builder.

A detector folder has the layout of the hub repository IDEA-Research/grounding-dino-tiny:
config.json, model.safetensors, preprocessor_config.json and the BERT tokenizer files
(vocab.txt, tokenizer.json, tokenizer_config.json). Images go through
`GroundingDinoImageProcessorPil` (the torchvision-free processor).

Prompt convention (Grounding-DINO's): lower case, one phrase per object, each phrase ended by
"." ("a man. a dog."). A detection's label is the prompt phrase holding its best-matching token.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessorPil,
    GroundingDinoProcessor,
    SwinConfig,
)
from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput
from transformers.tokenization_utils_base import BatchEncoding

from dmedit.core.errors import ModelError, UsageError
from dmedit.models.backends.base import Detection, DetectionRun


TINY_SEED = 0
TINY_SIZE = {"shortest_edge": 64, "longest_edge": 96}
TINY_WORDS = (
    "a an the and of on in with man woman person people boy girl child bird parrot dog cat car "
    "bike bicycle robot horse cow sheep bear tiger lion fish duck face head hand tree flower boat "
    "train ball red green blue white black yellow small big"
).split()


def normalise_prompt(*, prompt: str) -> tuple[str, list[str]]:
    """'A Man. dog' -> ('a man. dog.', ['a man', 'dog']); an empty prompt raises UsageError."""
    phrases = [" ".join(part.split()) for part in prompt.lower().split(".")]
    phrases = [phrase for phrase in phrases if phrase]
    if not phrases:
        raise UsageError(f"the detection prompt {prompt!r} names no object")
    return ". ".join(phrases) + ".", phrases


def tiny_vocabulary() -> list[str]:
    """A hand-made BERT WordPiece vocabulary in which every lower-case word tokenizes."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    symbols = [".", ",", *string.ascii_lowercase, *string.digits]
    pieces = [f"##{char}" for char in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(specials + symbols + list(TINY_WORDS) + pieces))


def tiny_config() -> GroundingDinoConfig:
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(tiny_vocabulary()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=10,
        num_feature_levels=4,
        max_text_len=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
    )


def build_tiny_detector(*, path: Path) -> None:
    """Write a random-weight Grounding-DINO (seeded, 0.4M parameters) in the hub layout at `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocabulary = tiny_vocabulary()
    (path / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)})
    tokenizer.save_pretrained(path)
    GroundingDinoImageProcessorPil(size=dict(TINY_SIZE)).save_pretrained(path)
    torch.manual_seed(TINY_SEED)
    model = GroundingDinoForObjectDetection(tiny_config())
    model.save_pretrained(path, safe_serialization=True)


class GroundingDinoDetector:
    """A loaded detector; `run` takes uint8 RGB frames at source size."""

    def __init__(
        self, *, model: GroundingDinoForObjectDetection, processor: GroundingDinoProcessor, device: torch.device
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, *, path: Path, device: torch.device) -> "GroundingDinoDetector":
        """Load from a local folder (safetensors only, never the network); failures raise ModelError."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no Grounding-DINO detector here (config.json is missing)")
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(
                path, use_safetensors=True, local_files_only=True
            )
            image_processor = GroundingDinoImageProcessorPil.from_pretrained(path, local_files_only=True)
            tokenizer = BertTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as error:  # transformers, tokenizers and safetensors each raise their own types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"{path}: cannot load the Grounding-DINO detector: {reason}") from error
        processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return cls(model=model.to(device).eval(), processor=processor, device=device)

    def run(
        self,
        *,
        frames: np.ndarray,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        batch_size: int = 8,
    ) -> DetectionRun:
        """(T,H,W,3) uint8 RGB -> per frame, the boxes (source px) scoring above `box_threshold`,
        and the best box score seen over all frames (passing or not).

        A box is kept when its score (the best token probability) is above `box_threshold` and
        the best token of some prompt phrase is above `text_threshold`; its label is that phrase.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T,H,W,3), got {frames.shape}")
        text, phrases = normalise_prompt(prompt=prompt)
        encoding = self.processor.tokenizer(
            [text], return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True
        )
        token_phrase = _token_phrases(
            offsets=encoding.pop("offset_mapping")[0].tolist(),
            special=encoding.pop("special_tokens_mask")[0].tolist(),
            text=text,
        )
        detections: list[list[Detection]] = []
        best_score = 0.0
        for start in range(0, len(frames), max(1, batch_size)):
            batch = frames[start : start + max(1, batch_size)]
            outputs, input_ids = self._forward(batch=batch, encoding=encoding)
            probabilities = torch.sigmoid(outputs.logits.float()).cpu()
            best_score = max(best_score, float(probabilities.max()))
            height, width = batch.shape[1:3]
            results = self.processor.post_process_grounded_object_detection(
                outputs,
                input_ids,
                threshold=box_threshold,
                text_threshold=text_threshold,
                target_sizes=[(height, width)] * len(batch),
            )
            for offset, (result, frame_probabilities) in enumerate(zip(results, probabilities)):
                kept = frame_probabilities[frame_probabilities.max(dim=-1).values > box_threshold]
                detections.append(
                    _frame_detections(
                        frame=start + offset,
                        result=result,
                        token_probabilities=kept,
                        token_phrase=token_phrase,
                        phrases=phrases,
                        text_threshold=text_threshold,
                        size=(width, height),
                    )
                )
        return DetectionRun(detections=detections, best_score=best_score)

    def _forward(
        self, *, batch: np.ndarray, encoding: BatchEncoding
    ) -> tuple[GroundingDinoObjectDetectionOutput, torch.Tensor]:
        """One batch (B,H,W,3) through the image processor and the model; returns outputs and input ids."""
        pixels = self.processor.image_processor(images=list(batch), return_tensors="pt")
        text = {name: value.repeat(len(batch), 1) for name, value in encoding.items()}
        inputs = {name: value.to(self.device) for name, value in {**pixels, **text}.items()}
        with torch.no_grad():
            outputs = self.model(**inputs)
        return outputs, text["input_ids"]


def _token_phrases(*, offsets: list[list[int]], special: list[int], text: str) -> list[int]:
    """Phrase index of every token of `text`, -1 for special tokens and the '.' separators."""
    phrase_of_char = np.full(len(text) + 1, -1, dtype=np.int64)
    for index, match in enumerate(re.finditer(r"[^.]+", text)):
        if match.group().strip():
            phrase_of_char[match.start() : match.end()] = index
    return [
        -1 if is_special or text[start:end].strip() in ("", ".") else int(phrase_of_char[start])
        for (start, end), is_special in zip(offsets, special)
    ]


def _frame_detections(
    *,
    frame: int,
    result: dict,
    token_probabilities: torch.Tensor,
    token_phrase: list[int],
    phrases: list[str],
    text_threshold: float,
    size: tuple[int, int],
) -> list[Detection]:
    """Label the post-processed boxes of one frame, clip them to the frame, drop empty ones."""
    width, height = size
    length = min(len(token_phrase), token_probabilities.shape[-1])
    phrase_ids = torch.tensor(token_phrase[:length], dtype=torch.long)
    phrase_tokens = phrase_ids >= 0
    found: list[Detection] = []
    for score, box, probabilities in zip(result["scores"], result["boxes"], token_probabilities):
        phrase_probabilities = probabilities[:length][phrase_tokens]
        if phrase_probabilities.numel() == 0 or float(phrase_probabilities.max()) <= text_threshold:
            continue
        label = phrases[int(phrase_ids[phrase_tokens][int(phrase_probabilities.argmax())])]
        x0, y0, x1, y1 = box.tolist()
        clipped = (
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        )
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            found.append(Detection(frame=frame, box=clipped, score=float(score), label=label))
    return found
