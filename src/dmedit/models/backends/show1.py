"""Show-1's keyframe stage (showlab/show-1-base) behind backends.base.VideoBackend, in pixel space.

There is no VAE: the editor's "latents" are the keyframes themselves at the keyframe size, in
[-1, 1], (1, 3, F, h, w), and its masks live on that same pixel grid (`latent_scale` 1). The U-Net
predicts 6 channels (learned variance): ε is the first 3. Text comes from T5-XXL (4096 wide, about
9.5 GB in fp16), which is loaded only while new prompts are encoded and freed right after: the
embeddings are kept per prompt (`PromptEncoder`), so neither the loop nor the later stages of the
cascade (which condition on the same embeddings) ever need the encoder again. Forward noising uses
the base scheduler's own ᾱ (cosine betas, "squaredcos_cap_v2", in the hub's scheduler config).
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from dmedit.models.backends.show1_unet import Show1UNet3DConditionModel, load_strict, split_learned_variance
from dmedit.core.errors import ModelError

COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
T5_MAX_LENGTH = 77
"""Tokens per prompt: the reference pipelines pad and truncate T5 input to 77 (DeepFloyd IF's length)."""


def first_line(error: BaseException) -> str:
    """An exception as one line: its first non-empty line, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def free_memory(*, device: torch.device) -> None:
    """Return freed tensors' memory: a garbage collection, and the CUDA cache when on a GPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def half_variant(*, dtype: torch.dtype, variant: str | None) -> str | None:
    """The weights variant to load: `variant` (e.g. "fp16") in half precision, else the full weights."""
    return variant if dtype in (torch.float16, torch.bfloat16) else None


def check_folder(*, folder: Path, components: Sequence[str], what: str) -> None:
    """ModelError unless `folder` holds every component subfolder."""
    missing = [name for name in components if not (folder / name).is_dir()]
    if missing:
        raise ModelError(f"{folder}: not a {what} folder (missing {', '.join(missing)}/)")


def load_scheduler(*, folder: Path, subfolder: str = "scheduler"):
    """The diffusers scheduler class named in `subfolder`/scheduler_config.json, from that config."""
    import diffusers
    from diffusers import SchedulerMixin

    config_file = folder / subfolder / "scheduler_config.json"
    try:
        name = json.loads(config_file.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"{config_file}: unreadable scheduler config: {first_line(error)}") from error
    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ModelError(f"{config_file}: {name!r} is not a diffusers scheduler")
    return scheduler_class.from_pretrained(folder, subfolder=subfolder)


def load_show1_unet(*, folder: Path, dtype: torch.dtype, variant: str | None,
                    device: torch.device) -> Show1UNet3DConditionModel:
    """A Show-1 pixel U-Net from `folder`/unet (safetensors, strict keys), frozen, in eval(), on `device`."""
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    try:
        unet = load_strict(path=folder, subfolder="unet", torch_dtype=dtype, use_safetensors=True,
                           variant=half_variant(dtype=dtype, variant=variant))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"{folder}: cannot load the Show-1 U-Net: {first_line(error)}") from error
    unet.requires_grad_(False)
    return unet.eval().to(device)


@dataclass
class PromptEncoder:
    """T5 text embeddings per prompt, the encoder loaded only while a new prompt is encoded.

    folder: the keyframe model's folder (text_encoder/, tokenizer/). cache: prompt -> (L, D)
    float32 on the CPU. Prompts are lower-cased and stripped, as the reference's encode_prompt does.
    """

    folder: Path
    device: torch.device
    dtype: torch.dtype
    variant: str | None = None
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    loads: int = 0

    def encode(self, *, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (P, 77, D) last hidden states in `dtype` on `device`."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            self._encode_new(prompts=missing)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device, self.dtype)

    @torch.no_grad()
    def _encode_new(self, *, prompts: list[str]) -> None:
        tokenizer, encoder = self._load()
        try:
            tokens = tokenizer([p.lower().strip() for p in prompts], padding="max_length",
                               max_length=T5_MAX_LENGTH, truncation=True, add_special_tokens=True,
                               return_tensors="pt")
            hidden = encoder(tokens.input_ids.to(self.device),
                             attention_mask=tokens.attention_mask.to(self.device)).last_hidden_state
            for prompt, states in zip(prompts, hidden.float().cpu()):
                self.cache[prompt] = states
        finally:
            del encoder
            free_memory(device=self.device)

    def _load(self):
        import transformers
        from transformers import T5EncoderModel, T5Tokenizer

        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = T5Tokenizer.from_pretrained(self.folder, subfolder="tokenizer")
        except ImportError as error:
            raise ModelError(f"{self.folder}/tokenizer: the T5 tokenizer (spiece.model) needs the sentencepiece "
                             "and protobuf packages: pip install 'dmedit[show1]'") from error
        except (OSError, ValueError) as error:
            raise ModelError(f"{self.folder}: cannot load the T5 tokenizer: {first_line(error)}") from error
        try:
            encoder = T5EncoderModel.from_pretrained(
                self.folder, subfolder="text_encoder", dtype=self.dtype, use_safetensors=True,
                variant=half_variant(dtype=self.dtype, variant=self.variant))
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelError(f"{self.folder}: cannot load the T5 text encoder: {first_line(error)}") from error
        self.loads += 1
        return tokenizer, encoder.eval().requires_grad_(False).to(self.device)


@dataclass
class Show1Backend:
    """Implements backends.base.VideoBackend for Show-1's keyframe U-Net (pixel space, no VAE).

    Latents are frames: (1, 3, F, h, w) in [-1, 1]. latent_scale: pixels per mask cell (1: masks at
    the keyframe resolution). text: the T5 embeddings, encoded once per prompt.
    """

    unet: Show1UNet3DConditionModel
    text: PromptEncoder
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    latent_scale: int = 1

    @torch.no_grad()
    def encode_video(self, *, frames: torch.Tensor) -> torch.Tensor:
        """(F,3,h,w) in [-1,1], already at the keyframe size -> (1,3,F,h,w) in `dtype` on `device`."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (F,3,h,w), got {tuple(frames.shape)}")
        return frames.permute(1, 0, 2, 3).unsqueeze(0).to(self.device, self.dtype)

    @torch.no_grad()
    def decode_latents(self, *, latents: torch.Tensor) -> torch.Tensor:
        """(1,3,F,h,w) -> (F,3,h,w) float32 in [-1,1] on the CPU (the identity of pixel space)."""
        return latents[0].permute(1, 0, 2, 3).float().cpu().clamp(-1, 1)

    def encode_prompts(self, *, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (P,77,4096) T5 states; the encoder is loaded for new prompts only, then freed."""
        return self.text.encode(prompts=prompts)

    def predict_noise(
        self, *, latents: torch.Tensor, timesteps: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """(B,3,F,h,w), (B,), (B,L,D) -> ε (B,3,F,h,w): the first 3 of the U-Net's 6 channels."""
        prediction = self.unet(latents, timesteps, encoder_hidden_states=text_embeddings).sample
        return split_learned_variance(prediction=prediction)[0]

    def add_noise(
        self, *, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """sqrt(ᾱ_t)·x + sqrt(1−ᾱ_t)·ε with the base scheduler's ᾱ."""
        alpha_bar = self.alphas_cumprod[timesteps].to(latents.dtype).view(-1, 1, 1, 1, 1)
        return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise


def load_show1(
    *, folder: Path, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype, vae_chunk: int,
    variant: str | None = None, offload: bool = False,
) -> Show1Backend:
    """The keyframe stage from a folder in the hub layout (unet/, text_encoder/, tokenizer/, scheduler/).

    vae_dtype, vae_chunk and offload have nothing to act on (no VAE; T5 is only ever resident
    while it encodes); they are accepted for the family-loader signature (backends.FAMILIES).
    """
    folder = Path(folder)
    check_folder(folder=folder, components=COMPONENTS, what="Show-1 keyframe model")
    unet = load_show1_unet(folder=folder, dtype=dtype, variant=variant, device=device)
    try:
        scheduler = load_scheduler(folder=folder)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the scheduler: {first_line(error)}") from error
    return Show1Backend(
        unet=unet, text=PromptEncoder(folder=folder, device=device, dtype=dtype, variant=variant),
        alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
        device=device, dtype=dtype,
    )
