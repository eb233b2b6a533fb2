"""The DreamMotion optimisation loop (paper Sec. 3): the only place loss terms are weighted.

Per step, with one t ~ U{t_min..t_max} and one ε ~ N(0, I) shared by every term:
    x_t = add_noise(x(θ), ε, t),  x̂_t = add_noise(x̂, ε, t)
    g   = (ε_w(x_t, y_tgt) − ε_w(x̂_t, y_src)) ⊙ m                      (losses.dds_grad)
    ∇x(θ) = dds_scale · g + ∇[λ_S · L_S + λ_T · L_T]                   (SGD on x(θ) only)
g is written into the gradient directly (DDS skips the chain rule through the noising and the
U-Net); the SSM losses are back-propagated through add_noise and the U-Net with one
`torch.autograd.grad`. The logged "dds" term is mean(g²) before dds_scale; "spatial" and
"temporal" are the unweighted losses; a term whose λ is 0 is neither computed nor logged.

U-Net calls per step: one no-grad call batching three branches and one grad-enabled call on the
branch whose keys feed the SSM losses (its ε, detached, also serves V-DDS); with both SSM terms
off, a single no-grad call batches all four branches. Speed levers (dmedit.speed, chosen in
`prepare`): activation checkpointing per U-Net block or layer in the grad call, and a truncated
grad call that stops after the last key layer (its ε then comes from a four-branch no-grad call).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers.models.attention_processor import Attention

from dmedit.attention import KeyStore, capture_keys, select_key_layers
from dmedit.backends.base import VideoBackend
from dmedit.config import EditConfig
from dmedit.errors import InterruptedRun, ModelError, OutOfMemoryError, UsageError
from dmedit.losses import dds_grad, spatial_ssm_loss, temporal_ssm_loss
from dmedit.speed import GRANULARITIES, checkpointed_blocks, stop_after_layers

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
SSM_FRAME_CHUNK = 4
# branch name -> (which latents, which prompt: 0 = null, 1 = source, 2 = target)
BRANCHES = {
    "target_uncond": ("x_t", 0),
    "target_cond": ("x_t", 2),
    "source_uncond": ("source_t", 0),
    "source_cond": ("source_t", 1),
}
UNFINGERPRINTED_SETTINGS = ("steps", "log_every", "checkpoint_every")


@dataclass(frozen=True)
class BranchPlan:
    """Which branches run in which U-Net call; fixed for a run by the config. truncated: the grad
    call stops after the last key layer, so its branch also runs in the no-grad call."""

    no_grad: tuple[str, ...]
    grad: str | None
    source_keys: str | None
    truncated: bool = False


@dataclass
class EditSession:
    """Everything computed once per run. source_latents x̂: (1,C,F,h,w) float32 on the device;
    mask: (1,1,F,h,w) float32 on the device or None (full frame); branch_embeddings: the
    (B,L,D) text embeddings of each U-Net call's branches (plan.no_grad, and (plan.grad,)) in
    the backend's dtype, gathered once from ("", y_src, y_tgt). key_modules: the attention
    modules key_layers selects (empty when no SSM term is on); checkpointing: None, or the
    granularity ("block" or "layer") of activation checkpointing in the grad call."""

    backend: VideoBackend
    config: EditConfig
    key_layers: tuple[str, ...]
    source_latents: torch.Tensor
    mask: torch.Tensor | None
    branch_embeddings: dict[tuple[str, ...], torch.Tensor]
    plan: BranchPlan
    fingerprint: str
    key_modules: dict[str, Attention] = field(default_factory=dict)
    checkpointing: str | None = None

    @property
    def frame_count(self) -> int:
        return int(self.source_latents.shape[2])


@dataclass
class EditState:
    """The optimised latents x(θ) (1,C,F,h,w float32 leaf), its SGD, the noise generator,
    steps done and the per-step history of terms ("t", "dds", "spatial", "temporal")."""

    latents: torch.nn.Parameter
    optimizer: torch.optim.SGD
    generator: torch.Generator
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EditResult:
    """frames: (F,3,H,W) float32 CPU in [-1,1]; latents: final x(θ), (1,C,F,h,w) float32 CPU."""

    frames: torch.Tensor
    latents: torch.Tensor
    history: dict[str, list[float]]
    steps_done: int
    checkpoint: Path | None


def branch_plan(*, config: EditConfig, truncate_grad_pass: bool = False) -> BranchPlan:
    """Conditional keys: grad on (x_t, y_tgt), source keys from (x̂_t, y_src); unconditional:
    grad on (x_t, ∅), source keys from (x̂_t, ∅). No SSM term: all four branches without grad.
    truncate_grad_pass: all four branches without grad, plus the grad call cut after the keys."""
    if config.lambda_spatial == 0 and config.lambda_temporal == 0:
        return BranchPlan(no_grad=tuple(BRANCHES), grad=None, source_keys=None)
    conditional = config.ssm_keys == "conditional"
    grad = "target_cond" if conditional else "target_uncond"
    no_grad = tuple(name for name in BRANCHES if truncate_grad_pass or name != grad)
    return BranchPlan(no_grad=no_grad, grad=grad, truncated=truncate_grad_pass,
                      source_keys="source_cond" if conditional else "source_uncond")


def _tensor_digest(tensor: torch.Tensor | None) -> str:
    if tensor is None:
        return "none"
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest() + str(tuple(array.shape))


def _fingerprint(
    *, frames: torch.Tensor, masks: torch.Tensor | None, src_prompt: str, tgt_prompt: str,
    config: EditConfig, key_layers: Sequence[str], backend: VideoBackend,
) -> str:
    """Identity of a run's inputs for --resume: everything but steps/log/checkpoint cadence."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in UNFINGERPRINTED_SETTINGS}
    record = dict(frames=_tensor_digest(frames), masks=_tensor_digest(masks), src=src_prompt,
                  tgt=tgt_prompt, config=settings, key_layers=list(key_layers),
                  unet=type(backend.unet).__name__, dtype=str(backend.dtype))
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _branch_embeddings(
    *, backend: VideoBackend, plan: BranchPlan, prompts: list[str]
) -> dict[tuple[str, ...], torch.Tensor]:
    embeddings = backend.encode_prompts(prompts=prompts)
    calls = [plan.no_grad] + ([(plan.grad,)] if plan.grad is not None else [])
    return {branches: embeddings[[BRANCHES[name][1] for name in branches]] for branches in calls}


def prepare(
    *,
    backend: VideoBackend,
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    src_prompt: str,
    tgt_prompt: str,
    config: EditConfig,
    key_layers: Sequence[str],
    checkpointing: str | None = None,
    truncate_grad_pass: bool = False,
) -> EditSession:
    """Encode frames (F,3,H,W in [-1,1]) and prompts once; masks (1,1,F,h,w) on the latent grid.

    Freezes the backend's unet / vae / text_encoder (requires_grad False) and checks key_layers
    (UsageError) before any work when an SSM term is on. checkpointing ("block" / "layer") and
    truncate_grad_pass turn on the speed levers of dmedit.speed (same results up to rounding).
    """
    if checkpointing not in (None, *GRANULARITIES):
        raise ValueError(f"checkpointing must be None or one of {GRANULARITIES}, got {checkpointing!r}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F,3,H,W), got {tuple(frames.shape)}")
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(backend, name, None)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    plan = branch_plan(config=config, truncate_grad_pass=truncate_grad_pass)
    key_modules = {} if plan.grad is None else select_key_layers(unet=backend.unet, patterns=key_layers)
    source = backend.encode_video(frames=frames).float()
    prompts = ["", src_prompt, tgt_prompt]
    mask = None
    if masks is not None and config.use_mask:
        if tuple(masks.shape) != (1, 1, *source.shape[2:]):
            raise ValueError(f"masks must be (1,1,F,h,w) = {(1, 1, *source.shape[2:])}, "
                             f"got {tuple(masks.shape)}")
        mask = masks.to(source.device, torch.float32)
    return EditSession(
        backend=backend, config=config, key_layers=tuple(key_layers), source_latents=source,
        mask=mask, branch_embeddings=_branch_embeddings(backend=backend, plan=plan, prompts=prompts),
        plan=plan,
        fingerprint=_fingerprint(frames=frames, masks=masks, src_prompt=src_prompt,
                                 tgt_prompt=tgt_prompt, config=config, key_layers=key_layers,
                                 backend=backend),
        key_modules=key_modules, checkpointing=checkpointing,
    )


def new_state(*, session: EditSession) -> EditState:
    """x(θ) = x̂ (a copy), plain SGD at the configured learning rate, generator seeded."""
    latents = torch.nn.Parameter(session.source_latents.clone())
    generator = torch.Generator(device=session.source_latents.device)
    generator.manual_seed(session.config.seed)
    optimizer = torch.optim.SGD([latents], lr=session.config.learning_rate)
    return EditState(latents=latents, optimizer=optimizer, generator=generator)


def _unet_call(
    *, session: EditSession, branches: tuple[str, ...], noised: dict[str, torch.Tensor], t: torch.Tensor,
    capture_rows: slice | None | bool, grad_call: bool = False,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None]:
    """One U-Net call over `branches` -> ({branch: ε (1,C,F,h,w)}, captured keys or None).

    capture_rows False: no key capture; None: keep all rows; a slice: keep those rows.
    grad_call: apply the session's levers; a truncated call returns no ε ({}).
    """
    backend = session.backend
    latents = torch.cat([noised[BRANCHES[name][0]] for name in branches]).to(backend.dtype)
    embeddings = session.branch_embeddings[branches]
    timesteps = t.expand(len(branches))
    eps = None
    with contextlib.ExitStack() as stack:
        store = None if capture_rows is False else stack.enter_context(capture_keys(
            unet=backend.unet, patterns=session.key_layers, rows=capture_rows, layers=session.key_modules))
        if grad_call and session.checkpointing is not None:
            stack.enter_context(checkpointed_blocks(unet=backend.unet, granularity=session.checkpointing))
        if grad_call and session.plan.truncated:
            stack.enter_context(stop_after_layers(
                layers={name: module.to_k for name, module in session.key_modules.items()}))
        eps = backend.predict_noise(latents=latents, timesteps=timesteps, text_embeddings=embeddings)
    keys = store.layers() if isinstance(store, KeyStore) else None
    return ({} if eps is None else dict(zip(branches, eps.split(1)))), keys


def _ssm_losses(*, config: EditConfig, target_keys, source_keys) -> dict[str, torch.Tensor]:
    losses = {}
    if config.lambda_spatial > 0:
        losses["spatial"] = spatial_ssm_loss(target_keys=target_keys, source_keys=source_keys,
                                             frame_chunk=SSM_FRAME_CHUNK)
    if config.lambda_temporal > 0:
        losses["temporal"] = temporal_ssm_loss(target_keys=target_keys, source_keys=source_keys)
    return losses


@dataclass
class StepTerms:
    """What one step measured at the current x(θ): the sampled t ((1,) long) and ε (1,C,F,h,w),
    both on the device, g = dds_grad(...) (1,C,F,h,w float32, detached) and the unweighted SSM losses
    (float32 scalars attached to the graph of x(θ); only the terms whose λ > 0)."""

    t: torch.Tensor
    noise: torch.Tensor
    dds_grad: torch.Tensor
    losses: dict[str, torch.Tensor]


def _source_key_rows(session: EditSession) -> slice | bool:
    plan = session.plan
    if plan.source_keys is None:
        return False
    index, frames = plan.no_grad.index(plan.source_keys), session.frame_count
    return slice(index * frames, (index + 1) * frames)


def evaluate_step(*, session: EditSession, state: EditState) -> StepTerms:
    """Sample t then ε from state.generator and run the step's U-Net calls; x(θ) is unchanged.

    The generator lives on the latents' device, so nothing crosses devices to draw t and ε."""
    config, backend, plan = session.config, session.backend, session.plan
    device = session.source_latents.device
    t = torch.randint(config.t_min, config.t_max + 1, (1,), generator=state.generator, device=device)
    noise = torch.randn(session.source_latents.shape, generator=state.generator, device=device)
    timestep = t
    with torch.set_grad_enabled(plan.grad is not None):
        x_t = backend.add_noise(latents=state.latents, noise=noise, timesteps=timestep)
    noised = {"x_t": x_t, "source_t": backend.add_noise(latents=session.source_latents,
                                                          noise=noise, timesteps=timestep)}
    with torch.no_grad():
        eps, source_keys = _unet_call(session=session, branches=plan.no_grad,
                                      noised={k: v.detach() for k, v in noised.items()},
                                      t=t, capture_rows=_source_key_rows(session))
    losses: dict[str, torch.Tensor] = {}
    if plan.grad is not None:
        with torch.enable_grad():
            grad_eps, target_keys = _unet_call(session=session, branches=(plan.grad,),
                                               noised=noised, t=t, capture_rows=None, grad_call=True)
            if not plan.truncated:
                eps[plan.grad] = grad_eps[plan.grad].detach()
            losses = _ssm_losses(config=config, target_keys=target_keys, source_keys=source_keys)
    g = dds_grad(eps_target_uncond=eps["target_uncond"], eps_target_cond=eps["target_cond"],
                 eps_source_uncond=eps["source_uncond"], eps_source_cond=eps["source_cond"],
                 guidance_scale=config.guidance_scale, mask=session.mask)
    return StepTerms(t=t, noise=noise, dds_grad=g, losses=losses)


def run_step(*, session: EditSession, state: EditState) -> dict[str, float]:
    """One SGD step on x(θ) with gradient dds_scale·g + ∇(λ_S·L_S + λ_T·L_T) (one backward).

    Returns the named terms {"t", "dds" = mean(g²), "spatial"?, "temporal"?} (unweighted) and
    appends them to state.history. ModelError when x(θ) stops being finite.
    """
    config = session.config
    step = evaluate_step(session=session, state=state)
    gradient = config.dds_scale * step.dds_grad
    if step.losses:
        weights = {"spatial": config.lambda_spatial, "temporal": config.lambda_temporal}
        total = sum(weights[name] * loss for name, loss in step.losses.items())
        gradient = gradient + torch.autograd.grad(total, state.latents)[0]
    state.optimizer.zero_grad(set_to_none=True)
    state.latents.grad = gradient
    state.optimizer.step()
    state.latents.grad = None
    state.step += 1
    names = list(step.losses)
    finite, t, dds, *losses = torch.stack([  # one device-to-host transfer per step
        torch.isfinite(state.latents).all().float(), step.t[0].float(), step.dds_grad.square().mean(),
        *(step.losses[name].detach().float() for name in names)]).tolist()
    if finite != 1.0:
        raise ModelError(f"the model produced NaN at step {state.step}; try --dtype fp32")
    terms = {"t": t, "dds": dds, **dict(zip(names, losses))}
    for name, value in terms.items():
        state.history.setdefault(name, []).append(value)
    return terms


def save_checkpoint(*, session: EditSession, state: EditState, path: Path) -> None:
    """Write latents, optimizer, generator, step, history and fingerprint atomically to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": session.fingerprint,
        "step": state.step,
        "latents": state.latents.detach().cpu().clone(),
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "history": state.history,
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(*, session: EditSession, state: EditState, path: Path) -> None:
    """Restore `state` from `path`; UsageError if it is missing, unreadable or from another run."""
    if not path.is_file():
        raise UsageError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the checkpoint ({type(error).__name__}); "
                         "delete it to start over") from error
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != session.fingerprint:
        raise UsageError(f"{path}: checkpoint is from a different run (other video, masks, prompts, "
                         "model or settings); delete it or drop --resume")
    with torch.no_grad():
        state.latents.copy_(payload["latents"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["generator"])
    state.step = int(payload["step"])
    state.history = {name: list(values) for name, values in payload["history"].items()}


def edit(
    *,
    backend: VideoBackend,
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    src_prompt: str,
    tgt_prompt: str,
    config: EditConfig,
    key_layers: Sequence[str],
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    stop_requested: Callable[[], bool] = lambda: False,
    checkpointing: str | None = None,
) -> EditResult:
    """Run DreamMotion for config.steps steps and decode x(θ) -> EditResult.

    frames (F,3,H,W) in [-1,1] at model size; masks (1,1,F,h,w) {0,1} (1 = edit) or None.
    on_step(step_index, terms) runs after each step (step_index counts from 0). Checkpoints go to
    checkpoint_dir/checkpoint.pt every config.checkpoint_every steps and when stop_requested()
    turns True before the last step, which then raises InterruptedRun. resume=True continues
    from that checkpoint (steps may be raised) to the same result as an unbroken run.
    checkpointing: None, "block" or "layer" activation checkpointing in the grad call (less
    memory for long clips, about one more forward of that call; dmedit.speed).
    """
    session = prepare(backend=backend, frames=frames, masks=masks, src_prompt=src_prompt,
                      tgt_prompt=tgt_prompt, config=config, key_layers=key_layers,
                      checkpointing=checkpointing)
    state = new_state(session=session)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if resume:
        if path is None:
            raise UsageError("--resume needs a checkpoint folder")
        load_checkpoint(session=session, state=state, path=path)
        if state.step > config.steps:
            raise UsageError(f"{path}: the checkpoint is at step {state.step}, past --steps "
                             f"{config.steps}; raise --steps or drop --resume")
    written = None
    while state.step < config.steps:
        try:
            terms = run_step(session=session, state=state)
        except torch.OutOfMemoryError as error:
            raise OutOfMemoryError(
                f"out of memory on {backend.device} at step {state.step + 1} with "
                f"{session.frame_count} frames; try --checkpointing block, fewer --frames or "
                "--offload") from error
        if on_step is not None:
            on_step(state.step - 1, terms)
        periodic = config.checkpoint_every > 0 and state.step % config.checkpoint_every == 0
        stopping = state.step < config.steps and stop_requested()
        if path is not None and (periodic or stopping):
            save_checkpoint(session=session, state=state, path=path)
            written = path
        if stopping:
            where = (f"checkpoint saved to {path}; run the same command with --resume to continue"
                     if path is not None else "no checkpoint was written")
            raise InterruptedRun(f"interrupted after step {state.step}/{config.steps}; {where}")
    latents = state.latents.detach()
    return EditResult(frames=backend.decode_latents(latents=latents),
                      latents=latents.cpu().clone(), history=state.history,
                      steps_done=state.step, checkpoint=written)
