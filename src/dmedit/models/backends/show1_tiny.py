"""The `show1-tiny` cascade, built offline from small configs with a fixed seed.

Each stage is written in the layout of its hub repository (model_index.json and the component
folders the loaders read) and loaded back through the same `from_pretrained` code as the real
Show-1 weights: keyframes (unet/ with show1_unet.TINY_BASE_CONFIG, a 2-layer T5 encoder 32 wide
and its tokenizer, scheduler/), interpolation (unet/, scheduler/), SR1 (unet/, scheduler/,
image_noising_scheduler/). The SR2 stage is the `tiny` text-to-video model (tiny.py), which has
ZeroScope's layout like show-1-sr2.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from dmedit.models.backends.show1 import T5_MAX_LENGTH
from dmedit.models.backends.show1_unet import (
    TINY_BASE_CONFIG, TINY_INTERPOLATION_CONFIG, TINY_SR1_CONFIG, TINY_TEXT_DIM, Show1UNet3DConditionModel,
)

TINY_SEED = 0
BASE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2",
    algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", thresholding=True,
    dynamic_thresholding_ratio=0.95, sample_max_value=1.5, lambda_min_clipped=-5.1, lower_order_final=True,
    prediction_type="epsilon", variance_type="fixed_small", timestep_spacing="linspace", steps_offset=0,
)
"""showlab/show-1-base's scheduler/scheduler_config.json (DPMSolverMultistepScheduler), read from the hub page."""
NOISING_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                variance_type="learned_range", clip_sample=True, clip_sample_range=1.0)
"""The image-noising scheduler of DeepFloyd IF's super-resolution stage, which SR1's pipeline keeps."""


def _tokenizer_vocab() -> list[tuple[str, float]]:
    """T5's special pieces (<pad> 0, </s> 1, <unk> 2), the word boundary, and single characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_lowercase + string.digits + ",.'-!?":
        pieces += [(f"▁{char}", -3.0), (char, -4.0)]
    return pieces


def _write_text_encoder(*, path: Path) -> None:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    tokenizer = T5Tokenizer(vocab=_tokenizer_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)
    tokenizer.save_pretrained(path / "tokenizer")
    config = T5Config(vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(path / "text_encoder", safe_serialization=True)


def _write_unet(*, path: Path, config: dict) -> None:
    Show1UNet3DConditionModel(**config).save_pretrained(path / "unet", safe_serialization=True)


def _write_scheduler(*, path: Path, subfolder: str, scheduler_class: str, config: dict) -> None:
    import diffusers

    getattr(diffusers, scheduler_class)(**config).save_pretrained(path / subfolder)


def _write_index(*, path: Path, pipeline: str, components: dict[str, list[str]]) -> None:
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1", **components}
    (path / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _prepare(path: Path) -> Path:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    path.mkdir(parents=True)
    torch.manual_seed(TINY_SEED)
    return path


def build_tiny_show1_base(*, path: Path) -> None:
    """The keyframe stage: unet/, text_encoder/ (T5), tokenizer/, scheduler/. Deterministic: seed 0."""
    path = _prepare(path)
    _write_unet(path=path, config=TINY_BASE_CONFIG)
    _write_text_encoder(path=path)
    _write_scheduler(path=path, subfolder="scheduler", scheduler_class="DPMSolverMultistepScheduler",
                     config=BASE_SCHEDULER_CONFIG)
    _write_index(path=path, pipeline="TextToVideoIFPipeline", components={
        "unet": ["showone", "UNet3DConditionModel"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]})


def build_tiny_show1_interpolation(*, path: Path) -> None:
    """The interpolation stage: unet/ (7 input channels), scheduler/. Deterministic: seed 0."""
    path = _prepare(path)
    _write_unet(path=path, config=TINY_INTERPOLATION_CONFIG)
    _write_scheduler(path=path, subfolder="scheduler", scheduler_class="DPMSolverMultistepScheduler",
                     config=BASE_SCHEDULER_CONFIG)
    _write_index(path=path, pipeline="TextToVideoIFInterpPipeline", components={
        "unet": ["showone", "UNet3DConditionModel"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]})


def build_tiny_show1_sr1(*, path: Path) -> None:
    """The pixel super-resolution stage: unet/ (6 input channels, noise-level class embedding),
    scheduler/, image_noising_scheduler/. Deterministic: seed 0."""
    path = _prepare(path)
    _write_unet(path=path, config=TINY_SR1_CONFIG)
    _write_scheduler(path=path, subfolder="scheduler", scheduler_class="DPMSolverMultistepScheduler",
                     config=BASE_SCHEDULER_CONFIG)
    _write_scheduler(path=path, subfolder="image_noising_scheduler", scheduler_class="DDPMScheduler",
                     config=NOISING_SCHEDULER_CONFIG)
    _write_index(path=path, pipeline="TextToVideoIFSuperResolutionPipeline_Cond", components={
        "unet": ["showone", "UNet3DConditionModel"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "image_noising_scheduler": ["diffusers", "DDPMScheduler"]})
