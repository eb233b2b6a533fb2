"""The `tiny` text-to-video model, built offline from small configs with a fixed seed.

It is saved in exactly the layout of the real hub repositories (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/) and loaded back through the same `from_pretrained` code as
ZeroScope and ModelScope, so CI exercises the real loading path without a network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_SEED = 0
TINY_RESOLUTION = 64
TINY_TEXT_POSITIONS = 16

UNET_CONFIG = dict(
    sample_size=TINY_RESOLUTION // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=32,
    layers_per_block=1,
    sample_size=TINY_RESOLUTION,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def byte_level_vocab() -> dict[str, int]:
    """CLIP-style byte-level vocabulary: every byte symbol, alone and word-final, plus the specials."""
    symbols = list(_bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({f"{symbol}</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def _write_tokenizer(folder: Path, positions: int = TINY_TEXT_POSITIONS) -> int:
    folder.mkdir(parents=True)
    vocab = byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": positions,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


def _model_index() -> dict:
    return {
        "_class_name": "TextToVideoSDPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def build_tiny_video_model(*, path: Path) -> None:
    """Write the tiny model folder at `path` (which must not exist yet). Deterministic: seed 0."""
    text_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       projection_dim=32)
    save_text_to_video(path=path, unet_config=UNET_CONFIG, vae_config=VAE_CONFIG, text_config=text_config,
                       positions=TINY_TEXT_POSITIONS, dtype=torch.float32)


def save_text_to_video(*, path: Path, unet_config: dict, vae_config: dict, text_config: dict, positions: int,
                       dtype: torch.dtype) -> None:
    """Seeded random weights of the given architecture saved in a text-to-video hub repository's
    layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) at `path` (which
    must not exist yet); the tokenizer is the byte-level CLIP tokenizer of `byte_level_vocab`."""
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    path.mkdir(parents=True)
    vocab_size = _write_tokenizer(path / "tokenizer", positions=positions)
    torch.manual_seed(TINY_SEED)
    # torch's own Module.to: diffusers' override warns on stderr about fp32 modules at every dtype cast
    for module, folder in ((UNet3DConditionModel(**unet_config), "unet"), (AutoencoderKL(**vae_config), "vae")):
        torch.nn.Module.to(module, dtype).save_pretrained(path / folder, safe_serialization=True)
    config = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=positions, bos_token_id=vocab_size - 2,
                            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **text_config)
    CLIPTextModel(config).to(dtype).save_pretrained(path / "text_encoder", safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps(_model_index(), indent=2), encoding="utf-8")
