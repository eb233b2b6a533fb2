"""ZeroScope / ModelScope / tiny: diffusers' UNet3D text-to-video family, loaded as components.

diffusers keeps TextToVideoSDPipeline only under deprecated/, so each component is loaded
directly from the repo's subfolders with `from_pretrained` (safetensors only, no remote code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from dmedit.core.errors import ModelError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class TextToVideoBackend:
    """Implements backends.base.VideoBackend for UNet3DConditionModel-based models.

    vae_dtype may differ from `dtype` (half-precision VAEs overflow to NaN on some inputs).
    vae_chunk: frames per VAE encode/decode call (VAE slicing). offload: keep the text encoder and
    VAE on the CPU except while they work, so the U-Net has the GPU to itself during the loop.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    vae_chunk: int
    offload: bool = False

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def _use(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device) if self.offload else module

    def _park(self, module: torch.nn.Module) -> None:
        if self.offload:
            module.to("cpu")

    @torch.no_grad()
    def encode_video(self, *, frames: torch.Tensor) -> torch.Tensor:
        """(F,3,H,W) in [-1,1] -> (1,C,F,h,w) scaled latents (the posterior's mode, not a sample)."""
        vae = self._use(self.vae)
        chunks = []
        for chunk in frames.split(self.vae_chunk):
            posterior = vae.encode(chunk.to(self.device, self.vae_dtype)).latent_dist
            chunks.append(posterior.mode())
        self._park(vae)
        latents = torch.cat(chunks) * self.scaling_factor
        return latents.permute(1, 0, 2, 3).unsqueeze(0).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, *, latents: torch.Tensor) -> torch.Tensor:
        """(1,C,F,h,w) -> (F,3,H,W) float32 in [-1,1] on the CPU."""
        vae = self._use(self.vae)
        per_frame = latents[0].permute(1, 0, 2, 3) / self.scaling_factor
        frames = [
            vae.decode(chunk.to(self.device, self.vae_dtype)).sample.float().cpu()
            for chunk in per_frame.split(self.vae_chunk)
        ]
        self._park(vae)
        return torch.cat(frames).clamp(-1, 1)

    @torch.no_grad()
    def encode_prompts(self, *, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (P,L,D) last hidden states, padded to the tokenizer's full length like the pipelines."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        encoder = self._use(self.text_encoder)
        hidden = encoder(tokens.input_ids.to(self.device)).last_hidden_state
        self._park(encoder)
        return hidden.to(self.dtype)

    def predict_noise(
        self, *, latents: torch.Tensor, timesteps: torch.Tensor, text_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """(B,C,F,h,w), (B,), (B,L,D) -> epsilon (B,C,F,h,w)."""
        return self.unet(latents, timesteps, encoder_hidden_states=text_embeddings).sample

    def add_noise(
        self, *, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """sqrt(ᾱ_t)·x + sqrt(1−ᾱ_t)·ε with the scheduler's ᾱ (kept on the device)."""
        alpha_bar = self.alphas_cumprod[timesteps].to(latents.dtype).view(-1, 1, 1, 1, 1)
        return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise


def load_text_to_video(
    *,
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    vae_chunk: int,
    variant: str | None = None,
    offload: bool = False,
) -> TextToVideoBackend:
    """Load the five components from a folder in the hub layout; failures become ModelError."""
    folder = Path(folder)
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
    if missing:
        raise ModelError(f"{folder}: not a text-to-video model folder (missing {', '.join(missing)}/)")
    try:
        components = _load_components(folder=folder, dtype=dtype, vae_dtype=vae_dtype, variant=variant)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{folder}: cannot load the model: {first_line}") from error
    unet, vae, text_encoder, tokenizer, scheduler = components
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    resident = "cpu" if offload else device
    return TextToVideoBackend(
        unet=unet.to(device),
        vae=vae.to(resident),
        text_encoder=text_encoder.to(resident),
        tokenizer=tokenizer,
        alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        vae_chunk=vae_chunk,
        offload=offload,
    )


def _load_components(*, folder: Path, dtype: torch.dtype, vae_dtype: torch.dtype, variant: str | None):
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    half = dtype in (torch.float16, torch.bfloat16)
    weights = dict(use_safetensors=True, variant=variant if half else None)
    unet = UNet3DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **weights)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype, **weights)
    text_encoder = CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", dtype=dtype, use_safetensors=True, variant=weights["variant"]
    )
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    return unet, vae, text_encoder, tokenizer, scheduler
