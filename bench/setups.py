"""Benchmark configurations turned into live edit sessions.

Three models: the `tiny` registry model, built offline and loaded through the real loading path
(dmedit.models.backends.text_to_video), a U-Net with ZeroScope's exact architecture and random
weights behind `RandomLatentBackend`, which replaces the VAE and text encoder by seeded random
source latents and text embeddings of the right shapes (speed does not depend on their values),
and Show-1's keyframe U-Net (show1_unet.BASE_CONFIG, random weights; pixel space, so masks and
"latents" are at the frame size) behind `RandomTextPixelBackend`, random T5-XXL-shaped text.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from dmedit.engine import editor
from dmedit.models.backends.show1 import Show1Backend
from dmedit.models.backends.text_to_video import TextToVideoBackend, load_text_to_video
from dmedit.models.backends.tiny import SCHEDULER_CONFIG, build_tiny_video_model
from dmedit.models.backends.zeroscope_random import ZEROSCOPE_UNET_CONFIG
from dmedit.engine.compilation import CompileChoice
from dmedit.engine.keys import KeyRecorder
from dmedit.core.config import EditConfig
from dmedit.models.registry import load_registry
from dmedit.runs.settings import ModelSettings

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ZEROSCOPE_TEXT_SHAPE = (77, 1024)
LATENT_CHANNELS = 4
SHOW1_TEXT_SHAPE = (77, 4096)
REGISTRY_NAMES = {"tiny": "tiny", "zeroscope-arch": "zeroscope", "show1-keyframes-arch": "show1"}
SRC_PROMPT, TGT_PROMPT = "a grey car on a road", "a red car on a road"


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration. `series` groups configurations for the time-vs-frames fit.

    model: "tiny" or "zeroscope-arch"; width/height: frame size in pixels (latents are 1/8);
    repeats: timed (step, bare) pairs after the untimed memory and FLOP calls and `warmup` more
    untimed pairs; wall_steps > 0 also times that many consecutive steps from a fresh state.
    checkpointing ("block" / "layer") selects the engine's memory lever (dmedit.engine.speed);
    key_layers None means the registry's; window: temporal windows of that many frames sharing half
    of them (the whole clip in one window when None); autocast ("bf16" / "fp16") runs step and
    bare compute inside torch.autocast (with fp32 weights: dtype "fp32"). compile: None (eager),
    "default" (torch.compile) or "reduce-overhead" (replayed as CUDA graphs), with compile_backend
    (a torch.compile backend: inductor by default).
    """

    name: str
    series: str
    model: str
    width: int
    height: int
    frames: int
    dtype: str = "fp32"
    repeats: int = 5
    warmup: int = 0
    wall_steps: int = 0
    checkpointing: str | None = None
    window: int | None = None
    key_layers: tuple[str, ...] | None = None
    autocast: str | None = None
    compile: str | None = None
    compile_backend: str = "inductor"


@dataclass
class RandomLatentBackend:
    """VideoBackend without VAE or text encoder: seeded random latents (1,C,F,H/8,W/8) and text
    embeddings (P,L,D); noise prediction and forward diffusion are TextToVideoBackend's own code."""

    unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: torch.Tensor
    text_shape: tuple[int, int]
    seed: int = 0

    predict_noise = TextToVideoBackend.predict_noise
    add_noise = TextToVideoBackend.add_noise

    def encode_video(self, *, frames: torch.Tensor) -> torch.Tensor:
        """(F,3,H,W) -> random (1,C,F,H/8,W/8) in `dtype` on `device`."""
        count, _, height, width = frames.shape
        generator = torch.Generator().manual_seed(self.seed)
        latents = torch.randn(1, LATENT_CHANNELS, count, height // 8, width // 8, generator=generator)
        return latents.to(self.device, self.dtype)

    def encode_prompts(self, *, prompts: Sequence[str]) -> torch.Tensor:
        """P prompts -> random (P,L,D), one fixed draw per position in the list."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        embeddings = torch.randn(len(prompts), *self.text_shape, generator=generator)
        return embeddings.to(self.device, self.dtype)

    def decode_latents(self, *, latents: torch.Tensor) -> torch.Tensor:
        """No VAE: (1,C,F,h,w) -> (F,3,8h,8w) float32 CPU in [-1,1], tanh of the first three latent
        channels repeated over each 8x8 pixel block (a fixed stand-in with the protocol's shapes)."""
        first = latents[0, :3].permute(1, 0, 2, 3).float()
        return torch.tanh(first.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)).cpu()


@dataclass
class RandomTextPixelBackend:
    """Show-1's keyframe U-Net without T5: seeded random text embeddings (P,77,4096); the frames are
    the latents (pixel space, masks at the frame size); everything else is Show1Backend's own code."""

    unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: torch.Tensor
    text_shape: tuple[int, int] = SHOW1_TEXT_SHAPE
    seed: int = 0
    latent_scale: int = 1

    encode_video = Show1Backend.encode_video
    decode_latents = Show1Backend.decode_latents
    predict_noise = Show1Backend.predict_noise
    add_noise = Show1Backend.add_noise
    encode_prompts = RandomLatentBackend.encode_prompts


def show1_keyframe_unet(*, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Show-1's keyframe U-Net (show-1-base's config), seeded random weights, frozen, eval."""
    from dmedit.models.backends.show1_unet import BASE_CONFIG, Show1UNet3DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = Show1UNet3DConditionModel(**BASE_CONFIG)
    return unet.to(dtype).eval().requires_grad_(False)


def zeroscope_unet(*, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A UNet3DConditionModel with ZeroScope's architecture, seeded random weights, frozen, eval."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG)
    return unet.to(dtype).eval().requires_grad_(False)


def _alphas_cumprod(device: torch.device) -> torch.Tensor:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.to(device=device, dtype=torch.float32)


class BackendCache:
    """Holds one backend at a time, rebuilt when the (model, dtype) changes (the configuration
    lists keep equal ones together); the tiny model folder lives in a temporary directory."""

    def __init__(self, *, device: torch.device, stack: contextlib.ExitStack) -> None:
        self.device = device
        self._stack = stack
        self._backends: dict[tuple[str, str], object] = {}
        self._tiny_folder: Path | None = None

    def get(self, *, model: str, dtype: str):
        key = (model, dtype)
        if key not in self._backends:
            self._backends.clear()
            self._backends[key] = self._build(model=model, dtype=dtype)
        return self._backends[key]

    def _build(self, *, model: str, dtype: str):
        if model == "tiny":
            if self._tiny_folder is None:
                self._tiny_folder = Path(self._stack.enter_context(tempfile.TemporaryDirectory())) / "tiny"
                build_tiny_video_model(path=self._tiny_folder)
            return load_text_to_video(folder=self._tiny_folder, device=self.device, dtype=DTYPES[dtype],
                                      vae_dtype=torch.float32, vae_chunk=ModelSettings.vae_chunk)
        if model == "zeroscope-arch":
            return RandomLatentBackend(unet=zeroscope_unet(device=self.device, dtype=DTYPES[dtype]),
                                       device=self.device, dtype=DTYPES[dtype],
                                       alphas_cumprod=_alphas_cumprod(self.device),
                                       text_shape=ZEROSCOPE_TEXT_SHAPE)
        if model == "show1-keyframes-arch":
            from diffusers import DPMSolverMultistepScheduler

            from dmedit.models.backends.show1_tiny import BASE_SCHEDULER_CONFIG

            alphas = DPMSolverMultistepScheduler(**BASE_SCHEDULER_CONFIG).alphas_cumprod
            return RandomTextPixelBackend(unet=show1_keyframe_unet(device=self.device, dtype=DTYPES[dtype]),
                                          device=self.device, dtype=DTYPES[dtype],
                                          alphas_cumprod=alphas.to(device=self.device, dtype=torch.float32))
        raise ValueError(f"unknown benchmark model {model!r}")


def registry_name(model: str) -> str:
    return REGISTRY_NAMES[model]


@dataclass
class LiveConfig:
    """A prepared session plus the bare-compute inputs: the same latents, embeddings, timesteps."""

    config: BenchConfig
    session: editor.EditSession
    bare_compute: Callable[[], None]
    bare_no_grad_frames: int
    bare_grad_frames: int
    recorder: KeyRecorder
    installed: contextlib.ExitStack

    def close(self) -> None:
        """Remove the run-wide hooks and the compiled forward (editor.run_hooks)."""
        self.installed.close()

    def fresh_state(self) -> editor.EditState:
        return editor.new_state(session=self.session)

    def step(self, state: editor.EditState) -> dict[str, float]:
        """The engine's real step function, under the configuration's autocast if any."""
        with self.precision():
            return editor.run_step(session=self.session, state=state, recorder=self.recorder)

    def bare(self) -> None:
        with self.precision():
            self.bare_compute()
        self.recorder.clear()  # the run-wide hooks recorded the bare calls' keys too

    def precision(self) -> contextlib.AbstractContextManager:
        if self.config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.session.backend.device.type, dtype=DTYPES[self.config.autocast])


def _half_mask(*, frames: int, height: int, width: int, device: torch.device, scale: int = 8) -> torch.Tensor:
    """(1,1,F,h,w): the left half of the latent grid (pixels per cell: `scale`) is editable."""
    mask = torch.zeros(1, 1, frames, height // scale, width // scale, device=device)
    mask[..., : width // (2 * scale)] = 1.0
    return mask


def prepare_live(*, config: BenchConfig, backends: BackendCache) -> LiveConfig:
    """Prepare the real edit session for `config` (registry hyperparameters, half mask)."""
    backend = backends.get(model=config.model, dtype=config.dtype)
    entry = load_registry().model(registry_name(config.model))
    edit_config = EditConfig().merged(dict(entry.defaults))
    if config.window is not None:
        edit_config = edit_config.merged(dict(window=config.window, window_overlap=config.window // 2))
    frames = torch.zeros(config.frames, 3, config.height, config.width)
    session = editor.prepare(
        backend=backend, frames=frames,
        masks=_half_mask(frames=config.frames, height=config.height, width=config.width, device=backend.device,
                         scale=getattr(backend, "latent_scale", 8)),
        src_prompt=SRC_PROMPT, tgt_prompt=TGT_PROMPT, config=edit_config,
        key_layers=config.key_layers or entry.key_layers, checkpointing=config.checkpointing,
        compile=None if config.compile is None else CompileChoice(enabled=True, mode=config.compile,
                                                                  backend=config.compile_backend, reason="bench"),
    )
    bare, no_grad_frames, grad_frames = bare_compute(session=session)
    stack = contextlib.ExitStack()
    recorder = stack.enter_context(editor.run_hooks(session=session))  # as editor.optimise runs its steps
    return LiveConfig(config=config, session=session, bare_compute=bare, bare_no_grad_frames=no_grad_frames,
                      bare_grad_frames=grad_frames, recorder=recorder, installed=stack)


def bare_compute(*, session: editor.EditSession) -> tuple[Callable[[], None], int, int]:
    """The step's U-Net work alone, window by window on the base grid (one window of every frame
    unless the session is windowed): per window of N frames one no-grad call over the three
    no-grad branches (3N frames) and one grad call on the SSM branch (N frames) with a full backward
    to its input latents, on the session's latents, embeddings and a fixed timestep.
    Returns (fn, 3N summed over windows, N summed over windows)."""
    backend, plan, config = session.backend, session.plan, session.config
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(session.source_latents.shape, generator=generator).to(backend.device)
    t = (config.t_min + config.t_max) // 2
    noised = backend.add_noise(latents=session.source_latents, noise=noise,
                               timesteps=torch.full((1,), t, device=backend.device)).to(backend.dtype)
    no_grad_branches = tuple(name for name in editor.BRANCHES if name != plan.grad)
    no_grad_embeddings = backend.encode_prompts(
        prompts=["", SRC_PROMPT, TGT_PROMPT])[[editor.BRANCHES[name][1] for name in no_grad_branches]]
    grad_embeddings = session.branch_embeddings[(plan.grad,)]
    cotangent = torch.randn(noised.shape, generator=generator).to(backend.device, backend.dtype)
    length, starts = session.windows.length, session.windows.starts(offset=0)
    timesteps = {count: torch.full((count,), t, device=backend.device) for count in (1, len(no_grad_branches))}

    def run() -> None:
        for start in starts:
            window = noised[:, :, start : start + length]
            with torch.no_grad():
                backend.predict_noise(latents=torch.cat([window] * len(no_grad_branches)),
                                      timesteps=timesteps[len(no_grad_branches)], text_embeddings=no_grad_embeddings)
            latents = window.detach().requires_grad_(True)
            eps = backend.predict_noise(latents=latents, timesteps=timesteps[1], text_embeddings=grad_embeddings)
            torch.autograd.backward(eps, grad_tensors=cotangent[:, :, start : start + length], inputs=[latents])

    frames = length * len(starts)
    return run, len(no_grad_branches) * frames, frames
