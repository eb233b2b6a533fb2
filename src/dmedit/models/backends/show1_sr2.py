"""Show-1's last stage (show-1-sr2): latent video-to-video super-resolution to 576x320.

The repository has ZeroScope's layout (UNet3DConditionModel, VAE, CLIP text encoder), so it loads
through text_to_video.load_text_to_video. As in the reference (run_inference.py, diffusers'
VideoToVideoSDPipeline): frames resized to the entry's size (bicubic), encoded by the VAE
(posterior mode, as the editor encodes), noised to the first of the last 80% of 50 scheduler steps
(strength 0.8), then denoised with guidance 15 against the negative prompt "low resolution, blur".
Steps and guidance come from the entry's `defaults` where given. Frames in and out:
(F, 3, H, W) float32 in [-1, 1] on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dmedit.models.backends.show1 import load_scheduler
from dmedit.models.backends.show1_stages import (
    SamplerSettings, StagePrompt, scheduler_step, seeded_noise, stage_settings,
)
from dmedit.models.backends.text_to_video import TextToVideoBackend, load_text_to_video

if TYPE_CHECKING:
    from dmedit.core.config import ModelEntry

NEGATIVE_PROMPT = "low resolution, blur"
STRENGTH = 0.8
VAE_CHUNK = 8


@dataclass
class Show1LatentSuperResolution:
    """show-1-sr2: frames -> frames at the entry's size (576x320 for the real entry)."""

    backend: TextToVideoBackend
    scheduler: object
    size: tuple[int, int]
    settings: SamplerSettings
    strength: float = STRENGTH
    name: str = "sr2"

    REFERENCE = {"steps": 50, "guidance_scale": 15.0}

    @classmethod
    def load(cls, *, entry: "ModelEntry", folder: Path, device: torch.device,
             dtype: torch.dtype) -> "Show1LatentSuperResolution":
        vae_dtype = torch.float32 if entry.vae_fp32 else dtype
        backend = load_text_to_video(folder=Path(folder), device=device, dtype=dtype, vae_dtype=vae_dtype,
                                     vae_chunk=VAE_CHUNK, variant=entry.variant)
        return cls(backend=backend, scheduler=load_scheduler(folder=Path(folder)), size=(entry.height, entry.width),
                   settings=stage_settings(entry=entry, steps=cls.REFERENCE["steps"],
                                           guidance_scale=cls.REFERENCE["guidance_scale"]))

    def timesteps(self) -> torch.Tensor:
        """The scheduler's last `strength` share of its `steps` timesteps (img2img's get_timesteps)."""
        self.scheduler.set_timesteps(self.settings.steps, device=self.backend.device)
        kept = min(int(self.settings.steps * self.strength), self.settings.steps)
        return self.scheduler.timesteps[(self.settings.steps - kept) * self.scheduler.order:]

    @torch.no_grad()
    def run(self, *, frames: torch.Tensor, prompt: StagePrompt, seed: int) -> torch.Tensor:
        """(F,3,h,w) -> (F,3,H,W): resized, then refined in the VAE's latent space."""
        backend, (height, width) = self.backend, self.size
        resized = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False)
        latents = backend.encode_video(frames=resized.clamp(-1, 1))
        text = backend.encode_prompts(prompts=[NEGATIVE_PROMPT, prompt.text])
        timesteps = self.timesteps()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        if len(timesteps):
            noise = seeded_noise(shape=tuple(latents.shape), seed=seed, device=backend.device, dtype=latents.dtype)
            latents = self.scheduler.add_noise(latents, noise, timesteps[:1])
        for t in timesteps:
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            prediction = backend.unet(model_input, t, encoder_hidden_states=text).sample
            uncond, cond = prediction.chunk(2)
            eps = uncond + self.settings.guidance_scale * (cond - uncond)
            latents = scheduler_step(scheduler=self.scheduler, output=eps, t=t, sample=latents, generator=generator)
        return backend.decode_latents(latents=latents)
