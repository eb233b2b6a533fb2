"""A DreamMotion run's session: what is fixed for the run, computed once (the source latents x̂,
the mask on the latent grid, the prompt embeddings of each U-Net call, the key layers, the windows,
the levers and the fingerprint), the state the loop changes (x(θ), its SGD, the generator) and the
result; `run_hooks` installs what every U-Net call of the run shares (engine.hooks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers.models.attention_processor import Attention

from dmedit.core.config import EditConfig
from dmedit.engine.branches import BRANCHES, BranchPlan, branch_plan
from dmedit.engine.checkpoints import fingerprint
from dmedit.engine.compilation import CompileChoice
from dmedit.engine.hooks import unet_hooks
from dmedit.engine.keys import KeyRecorder, select_key_layers
from dmedit.engine.speed import GRANULARITIES, Stopwatch
from dmedit.engine.windows import WindowPlan
from dmedit.models.backends.base import VideoBackend


@dataclass(frozen=True)
class EditSession:
    """Everything fixed for a run, computed once. source_latents x̂: (1,C,F,h,w) float32 on the device;
    mask: (1,1,F,h,w) float32 on the device or None (full frame); branch_embeddings: the
    (B,L,D) text embeddings of each U-Net call's branches (plan.no_grad, and (plan.grad,)) in
    the backend's dtype, gathered once from ("", y_src, y_tgt). key_modules: the attention
    modules key_layers selects (empty when no SSM term is on); checkpointing: None, or the
    granularity ("block" or "layer") of activation checkpointing in the grad call. windows: the
    temporal windows a step visits (one window of every frame unless config.window is set).
    compile: how the run's hooks (`run_hooks`) compile the U-Net (None: eager). timings: seconds
    spent encoding the video and the prompts."""

    backend: VideoBackend
    config: EditConfig
    key_layers: tuple[str, ...]
    source_latents: torch.Tensor
    mask: torch.Tensor | None
    branch_embeddings: dict[tuple[str, ...], torch.Tensor]
    plan: BranchPlan
    fingerprint: str
    windows: WindowPlan
    key_modules: dict[str, Attention] = field(default_factory=dict)
    checkpointing: str | None = None
    compile: CompileChoice | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def frame_count(self) -> int:
        return int(self.source_latents.shape[2])


@dataclass
class EditState:
    """The optimised latents x(θ) (1,C,F,h,w float32 leaf), its SGD, the noise generator,
    steps done and the per-step history of logged terms ("t", "dds", "spatial", "temporal")."""

    latents: torch.nn.Parameter
    optimizer: torch.optim.SGD
    generator: torch.Generator
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EditResult:
    """frames: (F,3,H,W) float32 CPU in [-1,1]; latents: final x(θ), (1,C,F,h,w) float32 CPU;
    windows: the temporal windows the steps visited; compile_fallback: why a compiled U-Net went
    back to eager on the first step (None: it did not)."""

    frames: torch.Tensor
    latents: torch.Tensor
    history: dict[str, list[float]]
    steps_done: int
    windows: WindowPlan
    timings: dict[str, float] = field(default_factory=dict)
    compile_fallback: str | None = None


def prepare(
    *, backend: VideoBackend, frames: torch.Tensor, masks: torch.Tensor | None, src_prompt: str,
    tgt_prompt: str, config: EditConfig, key_layers: Sequence[str], checkpointing: str | None = None,
    compile: CompileChoice | None = None,
) -> EditSession:
    """Encode frames (F,3,H,W in [-1,1]) and prompts once; masks (1,1,F,h,w) on the latent grid.

    Freezes the backend's unet / vae / text_encoder (requires_grad False) and checks key_layers
    (UsageError) before any work when an SSM term is on. checkpointing ("block" / "layer") turns
    on activation checkpointing of the grad call (dmedit.engine.speed; same results up to rounding);
    compile: torch.compile of the U-Net while `run_hooks` is active (dmedit.engine.compilation).
    """
    if checkpointing not in (None, *GRANULARITIES):
        raise ValueError(f"checkpointing must be None or one of {GRANULARITIES}, got {checkpointing!r}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F,3,H,W), got {tuple(frames.shape)}")
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(backend, name, None)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    plan = branch_plan(config=config)
    key_modules = {} if plan.grad is None else select_key_layers(unet=backend.unet, patterns=key_layers)
    clock = Stopwatch(device=backend.device)
    source = backend.encode_video(frames=frames).float()
    timings = {"vae encode": clock.lap()}
    mask = None
    if masks is not None and config.use_mask:
        if tuple(masks.shape) != (1, 1, *source.shape[2:]):
            raise ValueError(f"masks must be (1,1,F,h,w) = {(1, 1, *source.shape[2:])}, got {tuple(masks.shape)}")
        mask = masks.to(source.device, torch.float32)
    prompts = ["", src_prompt, tgt_prompt]
    embeddings = backend.encode_prompts(prompts=prompts)
    timings["text encode"] = clock.lap()
    calls = [plan.no_grad] + ([(plan.grad,)] if plan.grad is not None else [])
    count = int(source.shape[2])
    windowed = 0 < config.window < count
    windows = WindowPlan(frames=count, length=config.window if windowed else count,
                         overlap=config.window_overlap if windowed else 0, per_step=config.windows_per_step)
    return EditSession(
        backend=backend, config=config, key_layers=tuple(key_layers), source_latents=source, mask=mask,
        branch_embeddings={call: embeddings[[BRANCHES[name][1] for name in call]] for call in calls},
        plan=plan, key_modules=key_modules, checkpointing=checkpointing, windows=windows, compile=compile,
        timings=timings,
        fingerprint=fingerprint(frames=frames, masks=masks, prompts=prompts, config=config, key_layers=key_layers,
                                unet_class=type(backend.unet).__name__, dtype=str(backend.dtype)),
    )


def new_state(*, session: EditSession) -> EditState:
    """x(θ) = x̂ (a copy), plain SGD at the configured learning rate, generator seeded."""
    latents = torch.nn.Parameter(session.source_latents.clone())
    generator = torch.Generator(device=session.source_latents.device)
    generator.manual_seed(session.config.seed)
    optimizer = torch.optim.SGD([latents], lr=session.config.learning_rate)
    return EditState(latents=latents, optimizer=optimizer, generator=generator)


def run_hooks(*, session: EditSession) -> contextlib.AbstractContextManager[KeyRecorder]:
    """The session's key hooks, checkpointing and compiled U-Net (hooks.unet_hooks) for a block of steps."""
    return unet_hooks(unet=session.backend.unet, key_modules=session.key_modules,
                      checkpointing=session.checkpointing, compile=session.compile)
