"""Show-1's pixel stages after the keyframes: temporal interpolation and super-resolution 1.

Both follow the reference pipelines (showlab/Show-1: run_inference.py,
pipeline_t2v_interp_pixel.py, pipeline_t2v_sr_pixel*.py) with classifier-free guidance over
[null prompt, prompt] T5 embeddings, which the keyframe stage already holds (no T5 here):

- Interpolation (show-1-interpolation): each pair of neighbouring keyframes is the first and
  last frame of a window of 5; the U-Net sees the noisy window, the trilinear blend of the pair
  and a mask marking the two ends (7 channels) and fills in the 3 frames between. 8 keyframes ->
  29 frames; every window starts from the same noise; 75 steps, guidance 4.
- SR1 (show-1-sr1): windows of 8 frames, stride 7, upscaled bilinearly to 160x256 and noised to
  level 250 (its image-noising scheduler), are the condition (6 channels, class label = 250);
  a window's first frame is the previous window's clean output; 125 steps, guidance 7. The
  reference runs the very first frame through DeepFloyd IF-II-L (gated, licence to accept); this
  path does not: the first window's first frame is conditioned like the others (the reference's
  non-conditioned SR pipeline, pipeline_t2v_sr_pixel.py).

Steps and guidance come from the stage entry's `defaults` (steps, guidance_scale) and its window
from `window`/`window_overlap`, the reference's values where the entry leaves them out.
Frames in and out: (F, 3, H, W) float32 in [-1, 1] on the CPU.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dmedit.models.backends.show1 import check_folder, load_scheduler, load_show1_unet

if TYPE_CHECKING:
    from dmedit.core.config import ModelEntry


@dataclass(frozen=True)
class StagePrompt:
    """What a stage is conditioned on: the prompt and its T5 embeddings (2, L, D) = [null, prompt]."""

    text: str
    embeddings: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplerSettings:
    """Denoising steps and guidance w (eps_u + w (eps_c - eps_u)) of one stage."""

    steps: int
    guidance_scale: float


def stage_settings(*, entry: "ModelEntry", steps: int, guidance_scale: float) -> SamplerSettings:
    """The entry's `defaults.steps` / `defaults.guidance_scale` over the reference's values."""
    return SamplerSettings(steps=int(entry.defaults.get("steps", steps)),
                           guidance_scale=float(entry.defaults.get("guidance_scale", guidance_scale)))


def seeded_noise(*, shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """N(0, I) drawn on the CPU from `seed` (the same numbers on every device), then moved."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device, dtype)


def window_starts(*, frames: int, window: int, stride: int) -> list[int]:
    """Starts of windows of `window` frames every `stride`, the last one ending at the last frame."""
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, stride))
    return starts if starts[-1] + window == frames else starts + [frames - window]


def scheduler_step(*, scheduler, output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """One scheduler step on (1,C,F,H,W), frames folded into the batch as the reference does."""
    _, channels, frames, height, width = sample.shape
    flat = sample.permute(0, 2, 1, 3, 4).reshape(frames, channels, height, width)
    flat_out = output.permute(0, 2, 1, 3, 4).reshape(frames, -1, height, width)
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    stepped = scheduler.step(flat_out, t, flat, **extra).prev_sample
    return stepped.reshape(1, frames, channels, height, width).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def denoise(*, unet, scheduler, noise: torch.Tensor, condition: torch.Tensor | None, text: torch.Tensor,
            settings: SamplerSettings, seed: int, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Sample (1,3,F,H,W) frames from `noise` with guidance; `condition` (1,Cc,F,H,W) joins the
    input channels at every step; the U-Net's 6 channels are ε and the learned variance. `seed`
    seeds the noise of stochastic schedulers' steps (a CPU generator: the same on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scheduler.set_timesteps(settings.steps, device=noise.device)
    learned = scheduler.config.get("variance_type") in ("learned", "learned_range")
    sample = noise * scheduler.init_noise_sigma
    labels = None if class_labels is None else torch.cat([class_labels] * 2)
    for t in scheduler.timesteps:
        model_input = sample if condition is None else torch.cat([sample, condition], dim=1)
        model_input = scheduler.scale_model_input(torch.cat([model_input] * 2), t)
        prediction = unet(model_input, t, encoder_hidden_states=text, class_labels=labels).sample
        uncond, cond = prediction.chunk(2)
        channels = sample.shape[1]
        eps = uncond[:, :channels] + settings.guidance_scale * (cond[:, :channels] - uncond[:, :channels])
        output = torch.cat([eps, cond[:, channels:]], dim=1) if learned else eps
        sample = scheduler_step(scheduler=scheduler, output=output, t=t, sample=sample, generator=generator)
    return sample


def _video(frames: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(F,3,H,W) -> (1,3,F,H,W) on `device` in `dtype`."""
    return frames.permute(1, 0, 2, 3).unsqueeze(0).to(device, dtype)


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(1,3,F,H,W) -> (F,3,H,W) float32 in [-1,1] on the CPU."""
    return video[0].permute(1, 0, 2, 3).float().cpu().clamp(-1, 1)


@dataclass
class Show1Interpolation:
    """show-1-interpolation: F keyframes -> (F-1)·(window-1)+1 frames at the keyframe size."""

    unet: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    window: int
    settings: SamplerSettings
    name: str = "interpolation"

    REFERENCE = {"steps": 75, "guidance_scale": 4.0, "window": 5}

    @classmethod
    def load(cls, *, entry: "ModelEntry", folder: Path, device: torch.device,
             dtype: torch.dtype) -> "Show1Interpolation":
        check_folder(folder=folder, components=("unet", "scheduler"), what="Show-1 interpolation model")
        return cls(unet=load_show1_unet(folder=folder, dtype=dtype, variant=entry.variant, device=device),
                   scheduler=load_scheduler(folder=folder), device=device, dtype=dtype,
                   window=entry.window or cls.REFERENCE["window"],
                   settings=stage_settings(entry=entry, steps=cls.REFERENCE["steps"],
                                           guidance_scale=cls.REFERENCE["guidance_scale"]))

    def output_frames(self, *, frames: int) -> int:
        return (frames - 1) * (self.window - 1) + 1

    def run(self, *, frames: torch.Tensor, prompt: StagePrompt, seed: int) -> torch.Tensor:
        """(F,3,h,w) keyframes -> (output_frames(F),3,h,w), keyframe i at position i·(window-1)."""
        keys = _video(frames, device=self.device, dtype=self.dtype)
        _, channels, count, height, width = keys.shape
        step, window = self.window - 1, self.window
        out = torch.zeros((1, channels, self.output_frames(frames=count), height, width),
                          device=self.device, dtype=self.dtype)
        out[:, :, ::step] = keys
        noise = seeded_noise(shape=(1, channels, window, height, width), seed=seed,
                             device=self.device, dtype=self.dtype)
        mask = torch.zeros((1, 1, window, height, width), device=self.device, dtype=self.dtype)
        mask[:, :, [0, -1]] = 1
        text = prompt.embeddings.to(self.device, self.dtype)
        for index in range(count - 1):
            ends = keys[:, :, [index, index + 1]]
            blend = F.interpolate(ends, size=(window, height, width), mode="trilinear", align_corners=True)
            condition = torch.cat([blend, mask], dim=1)
            out[:, :, index * step: index * step + window] = denoise(
                unet=self.unet, scheduler=self.scheduler, noise=noise, condition=condition, text=text,
                settings=self.settings, seed=seed)
        return _frames(out)


@dataclass
class Show1PixelSuperResolution:
    """show-1-sr1: frames -> frames at the entry's size, in windows; no IF-II-L (module docstring)."""

    unet: torch.nn.Module
    scheduler: object
    noising: object
    device: torch.device
    dtype: torch.dtype
    size: tuple[int, int]
    window: int
    overlap: int
    settings: SamplerSettings
    noise_level: int = 250
    name: str = "sr1"

    REFERENCE = {"steps": 125, "guidance_scale": 7.0, "window": 8, "overlap": 1}

    @classmethod
    def load(cls, *, entry: "ModelEntry", folder: Path, device: torch.device,
             dtype: torch.dtype) -> "Show1PixelSuperResolution":
        check_folder(folder=folder, components=("unet", "scheduler", "image_noising_scheduler"),
                     what="Show-1 super-resolution model")
        overlap = entry.window_overlap if entry.window_overlap is not None else cls.REFERENCE["overlap"]
        return cls(unet=load_show1_unet(folder=folder, dtype=dtype, variant=entry.variant, device=device),
                   scheduler=load_scheduler(folder=folder),
                   noising=load_scheduler(folder=folder, subfolder="image_noising_scheduler"),
                   device=device, dtype=dtype, size=(entry.height, entry.width),
                   window=entry.window or cls.REFERENCE["window"], overlap=overlap,
                   settings=stage_settings(entry=entry, steps=cls.REFERENCE["steps"],
                                           guidance_scale=cls.REFERENCE["guidance_scale"]))

    def run(self, *, frames: torch.Tensor, prompt: StagePrompt, seed: int) -> torch.Tensor:
        """(F,3,h,w) -> (F,3,H,W) at the entry's size."""
        video = _video(frames, device=self.device, dtype=self.dtype)
        count, (height, width) = video.shape[2], self.size
        out = torch.zeros((1, 3, count, height, width), device=self.device, dtype=self.dtype)
        text = prompt.embeddings.to(self.device, self.dtype)
        level = torch.tensor([self.noise_level], device=self.device)
        for number, start in enumerate(window_starts(frames=count, window=self.window,
                                                     stride=self.window - self.overlap)):
            part = video[:, :, start: start + self.window]
            length = part.shape[2]
            flat = part.permute(0, 2, 1, 3, 4).reshape(length, 3, *part.shape[3:])
            upscaled = F.interpolate(flat.float(), size=(height, width), mode="bilinear", align_corners=True)
            upscaled = upscaled.reshape(1, length, 3, height, width).permute(0, 2, 1, 3, 4).to(self.dtype)
            noise = seeded_noise(shape=upscaled.shape, seed=seed + 1, device=self.device,
                                 dtype=self.dtype)
            condition = self.noising.add_noise(upscaled, noise, level)
            if number > 0:
                condition[:, :, :1] = out[:, :, start: start + 1]
            start_noise = seeded_noise(shape=upscaled.shape, seed=seed, device=self.device,
                                       dtype=self.dtype)
            out[:, :, start: start + length] = denoise(
                unet=self.unet, scheduler=self.scheduler, noise=start_noise, condition=condition, text=text,
                settings=self.settings, seed=seed, class_labels=level)
        return _frames(out)
