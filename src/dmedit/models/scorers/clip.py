"""CLIP image and text embeddings for Text-Align and Frame-Con, plus an offline tiny builder.

A CLIP folder has the layout of the hub repository openai/clip-vit-large-patch14: config.json,
model.safetensors, preprocessor_config.json and the BPE tokenizer files (vocab.json,
merges.txt, tokenizer_config.json). Frames go through `CLIPImageProcessorPil` (shortest side
resized, centre crop, CLIP mean/std), the torchvision-free processor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from dmedit.models.backends.tiny import byte_level_vocab
from dmedit.models.scorers import load_failure

TINY_SEED = 0
TINY_TEXT_POSITIONS = 16
TINY_IMAGE_SIZE = 32


class ClipScorer:
    """A loaded CLIP model; embeddings are L2-normalised float32 on the CPU."""

    def __init__(self, *, model: CLIPModel, tokenizer: CLIPTokenizer, processor: CLIPImageProcessorPil,
                 device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, *, path: Path, device: torch.device) -> "ClipScorer":
        """Load from a local folder (safetensors only, never the network); failures raise ModelError."""
        path = Path(path)
        transformers.utils.logging.disable_progress_bar()
        try:
            model = CLIPModel.from_pretrained(path, use_safetensors=True, local_files_only=True, dtype=torch.float32)
            tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
            processor = CLIPImageProcessorPil.from_pretrained(path, local_files_only=True)
        except Exception as error:  # transformers, tokenizers and safetensors each raise their own types
            raise load_failure(path=path, what="CLIP model", error=error) from error
        return cls(model=model.to(device).eval(), tokenizer=tokenizer, processor=processor, device=device)

    @torch.no_grad()
    def image_embeddings(self, *, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """(F, H, W, 3) uint8 RGB -> (F, D) unit-length image embeddings."""
        chunks = []
        for start in range(0, len(frames), batch_size):
            batch = [np.ascontiguousarray(frame) for frame in frames[start:start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            chunks.append(self.model.get_image_features(pixel_values=pixels).pooler_output.float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def text_embedding(self, *, text: str) -> torch.Tensor:
        """One prompt -> (D,) unit-length text embedding (cut at the model's maximum token count)."""
        tokens = self.tokenizer([text], padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                attention_mask=tokens["attention_mask"]).pooler_output
        return torch.nn.functional.normalize(features.float().cpu()[0], dim=-1)


def tiny_config(*, vocab_size: int) -> CLIPConfig:
    """A CLIP of about 60k parameters: 2-layer text and vision towers of width 32, 32x32 images."""
    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TINY_TEXT_POSITIONS, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=8,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)


def build_tiny_clip(*, path: Path) -> None:
    """Write a random-weight CLIP (seeded) in the hub layout at `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    vocab = byte_level_vocab()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": TINY_TEXT_POSITIONS,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "do_lower_case": True,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    ).save_pretrained(path)
    torch.manual_seed(TINY_SEED)
    CLIPModel(tiny_config(vocab_size=len(vocab))).save_pretrained(path, safe_serialization=True)
