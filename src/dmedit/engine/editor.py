"""The DreamMotion optimisation loop (paper Sec. 3): the only place loss terms are weighted.

Per step, with one t ~ U{t_min..t_max} and one ε ~ N(0, I) shared by every term:
    x_t = add_noise(x(θ), ε, t),  x̂_t = add_noise(x̂, ε, t)
    g   = (ε_w(x_t, y_tgt) − ε_w(x̂_t, y_src)) ⊙ m                      (losses.dds_grad)
    losses = {"dds": (g.detach() · x(θ)).sum(), "spatial": L_S, "temporal": L_T}
    x(θ) ← x(θ) − lr · ∇ Σ_name weight[name] · losses[name]           (one backward, SGD)
The V-DDS surrogate's gradient is g itself (DDS skips the chain rule through the noising and the
U-Net); the SSM losses back-propagate through add_noise and the U-Net. Weights are EditConfig's
dds_scale, lambda_spatial and lambda_temporal; a term whose weight is 0 is not computed. Logged per
step: "t", "dds" = mean(g²) (the surrogate's value means nothing), "spatial", "temporal".

U-Net calls per step: one no-grad call batching three branches (keeping the source keys) and one
grad-enabled call on the branch whose keys feed the SSM losses (its ε, detached, also serves
V-DDS); with both SSM terms off, a single no-grad call batches all four branches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dmedit.core.config import EditConfig
from dmedit.core.errors import InterruptedRun, ModelError
from dmedit.engine.branches import BRANCHES
from dmedit.engine.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from dmedit.engine.compilation import (
    cache_write_failure, compile_failure, drop_compiled, remove_partial_cache_files, step_begins,
)
from dmedit.engine.keys import KeyRecorder
from dmedit.engine.losses import dds_grad, dds_surrogate, spatial_ssm_loss, temporal_ssm_loss
from dmedit.engine.session import EditResult, EditSession, EditState, new_state, prepare, run_hooks
from dmedit.engine.speed import Stopwatch
from dmedit.engine.windows import draw_starts

__all__ = ["EditResult", "EditSession", "EditState", "StepDraw", "StepTerms", "decode", "draw_step", "new_state",
           "optimise", "prepare", "run_hooks", "run_step", "step_losses"]
"""The engine's front door: a session is prepared (engine.session), then stepped or optimised here."""

SSM_FRAME_CHUNK = 4
SIGNAL_WORDS = {2: "interrupted", 15: "terminated"}


@dataclass
class StepDraw:
    """What one step draws from the generator, in this order: t ((1,) long), ε (the whole clip's
    (1,C,F,h,w)) and the starts of the windows it visits; every window shares t and ε."""

    t: torch.Tensor
    noise: torch.Tensor
    starts: list[int]


@dataclass
class StepTerms:
    """One step at the current x(θ): the sampled t ((1,) long) and ε (1,C,F,h,w) on the device,
    g = dds_grad(...) (1,C,F,h,w float32, detached) and the named losses (float32 scalars attached
    to the graph of x(θ)): "dds" (the surrogate) and the SSM terms whose weight is above 0."""

    t: torch.Tensor
    noise: torch.Tensor
    dds_grad: torch.Tensor
    losses: dict[str, torch.Tensor]


def _unet_call(
    *, session: EditSession, recorder: KeyRecorder, branches: tuple[str, ...], noised: dict[str, torch.Tensor],
    t: torch.Tensor, keys_of: str | None,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None]:
    """One U-Net call over `branches` -> ({branch: ε (1,C,F,h,w)}, the keys of branch `keys_of`
    per key layer, each (F,HW,C), or None when keys_of is None)."""
    backend, frames = session.backend, int(noised["x_t"].shape[2])
    latents = torch.cat([noised[BRANCHES[name][0]] for name in branches]).to(backend.dtype)
    recorder.clear()
    eps = backend.predict_noise(latents=latents, timesteps=t.expand(len(branches)),
                                text_embeddings=session.branch_embeddings[branches])
    if keys_of is None:
        recorder.clear()
        return dict(zip(branches, eps.split(1))), None
    index = branches.index(keys_of)
    rows = slice(index * frames, (index + 1) * frames) if len(branches) > 1 else None
    return dict(zip(branches, eps.split(1))), recorder.take(rows=rows)


def _ssm_losses(*, config: EditConfig, target_keys, source_keys) -> dict[str, torch.Tensor]:
    losses = {}
    if config.lambda_spatial > 0:
        losses["spatial"] = spatial_ssm_loss(target_keys=target_keys, source_keys=source_keys,
                                             frame_chunk=SSM_FRAME_CHUNK, reduction=config.ssm_reduction)
    if config.lambda_temporal > 0:
        losses["temporal"] = temporal_ssm_loss(target_keys=target_keys, source_keys=source_keys,
                                               reduction=config.ssm_reduction)
    return losses


def draw_step(*, session: EditSession, state: EditState) -> StepDraw:
    """Draw t, then ε, then the windows (windows.draw_starts) from state.generator, on the latents' device."""
    config, device = session.config, session.source_latents.device
    t = torch.randint(config.t_min, config.t_max + 1, (1,), generator=state.generator, device=device)
    noise = torch.randn(session.source_latents.shape, generator=state.generator, device=device)
    return StepDraw(t=t, noise=noise, starts=draw_starts(plan=session.windows, generator=state.generator))


def step_losses(
    *, session: EditSession, state: EditState, draw: StepDraw | None = None, start: int = 0,
    recorder: KeyRecorder | None = None,
) -> StepTerms:
    """The named losses of the window starting at frame `start` at the current x(θ), which is left
    unchanged; `draw` (default: drawn now) gives the step's shared t and ε. recorder: the hooks of
    `run_hooks` when the caller holds them; None installs them around this call."""
    if recorder is None:
        with run_hooks(session=session) as recorder:
            return step_losses(session=session, state=state, draw=draw, start=start, recorder=recorder)
    config, backend, plan = session.config, session.backend, session.plan
    draw = draw if draw is not None else draw_step(session=session, state=state)
    frames = slice(start, start + session.windows.length)
    t, noise, x = draw.t, draw.noise[:, :, frames], state.latents[:, :, frames]
    noised = {"x_t": backend.add_noise(latents=x, noise=noise, timesteps=t),
              "source_t": backend.add_noise(latents=session.source_latents[:, :, frames], noise=noise, timesteps=t)}
    with torch.no_grad():
        eps, source_keys = _unet_call(session=session, recorder=recorder, branches=plan.no_grad, noised=noised,
                                      t=t, keys_of=plan.source_keys)
    losses: dict[str, torch.Tensor] = {}
    if plan.grad is not None:
        grad_eps, target_keys = _unet_call(session=session, recorder=recorder, branches=(plan.grad,),
                                           noised=noised, t=t, keys_of=plan.grad)
        eps[plan.grad] = grad_eps[plan.grad].detach()
        losses = _ssm_losses(config=config, target_keys=target_keys, source_keys=source_keys)
    g = dds_grad(eps_target_uncond=eps["target_uncond"], eps_target_cond=eps["target_cond"],
                 eps_source_uncond=eps["source_uncond"], eps_source_cond=eps["source_cond"],
                 guidance_scale=config.guidance_scale, mask=None if session.mask is None else session.mask[:, :, frames])
    losses = {"dds": dds_surrogate(grad=g, latents=x), **losses}
    return StepTerms(t=t, noise=noise, dds_grad=g, losses=losses)


def _require_finite(*, session: EditSession, finite: bool, where: str) -> None:
    """ModelError when the run stopped being finite, with advice that fits its dtype."""
    if finite:
        return
    if session.backend.dtype == torch.float32:
        advice = "lower --lr or --guidance-scale"
    else:
        advice = "try --dtype fp32"
    raise ModelError(f"the model produced NaN/inf {where}; nothing was written ({advice})")


def _step(*, session: EditSession, state: EditState, recorder: KeyRecorder) -> tuple[torch.Tensor, list[str]]:
    """One SGD step, kept on the device: -> ([finite, t, dds, *losses] (float32), the loss names)."""
    step_begins(choice=session.compile)
    draw = draw_step(session=session, state=state)
    weights = session.config.weights()
    state.optimizer.zero_grad(set_to_none=True)
    logged: list[torch.Tensor] = []
    for start in draw.starts:
        step = step_losses(session=session, state=state, draw=draw, start=start, recorder=recorder)
        sum(weights[name] * loss for name, loss in step.losses.items()).backward()
        names = [name for name in step.losses if name != "dds"]
        logged.append(torch.stack([step.dds_grad.square().mean(), *(step.losses[n].detach().float() for n in names)]))
    if len(draw.starts) > 1:
        coverage = session.windows.coverage(starts=draw.starts).clamp(min=1).to(state.latents.device)
        state.latents.grad /= coverage.view(1, 1, -1, 1, 1)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return torch.cat([torch.isfinite(state.latents).all().float().view(1), draw.t.float(),
                      torch.stack(logged).mean(dim=0)]), names


def _read_records(*, session: EditSession, state: EditState, records: list[torch.Tensor], names: list[str],
                  first_step: int) -> list[dict[str, float]]:
    """Steps first_step+1.. as logged terms, in one device-to-host transfer; appended to state.history.
    ModelError naming the first step whose x(θ) was not finite."""
    rows = torch.stack(records).tolist()
    terms = []
    for number, (finite, t, dds, *losses) in enumerate(rows, start=first_step + 1):
        _require_finite(session=session, finite=finite == 1.0, where=f"latents at step {number}")
        terms.append({"t": t, "dds": dds, **dict(zip(names, losses))})
    for step_terms in terms:
        for name, value in step_terms.items():
            state.history.setdefault(name, []).append(value)
    return terms


def run_step(*, session: EditSession, state: EditState, recorder: KeyRecorder | None = None) -> dict[str, float]:
    """One SGD step on x(θ) along ∇ Σ weight[name] · loss[name], one backward per window; a frame
    in several windows gets the mean of their gradients.

    Returns the logged terms {"t", "dds" = mean(g²), "spatial"?, "temporal"?} (unweighted, averaged
    over the step's windows) and appends them to state.history. ModelError when x(θ) stops being finite.
    recorder: the hooks of `run_hooks` when the caller holds them for many steps; None installs
    them around this step.
    """
    if recorder is None:
        with run_hooks(session=session) as recorder:
            return run_step(session=session, state=state, recorder=recorder)
    record, names = _step(session=session, state=state, recorder=recorder)
    return _read_records(session=session, state=state, records=[record], names=names, first_step=state.step - 1)[0]


def decode(*, session: EditSession, state: EditState) -> EditResult:
    """Decode x(θ) -> EditResult; ModelError when the decoded frames are not finite."""
    latents = state.latents.detach()
    frames = session.backend.decode_latents(latents=latents)
    _require_finite(session=session, finite=bool(torch.isfinite(frames).all()), where="frames from the VAE")
    return EditResult(frames=frames, latents=latents.cpu().clone(), history=state.history, steps_done=state.step,
                      windows=session.windows)


def _snapshot(*, session: EditSession, state: EditState) -> Checkpoint:
    return Checkpoint(fingerprint=session.fingerprint, step=state.step, latents=state.latents.detach().cpu().clone(),
                      optimizer=state.optimizer.state_dict(), generator=state.generator.get_state(),
                      history=state.history)


def _restore(*, state: EditState, checkpoint: Checkpoint) -> None:
    with torch.no_grad():
        state.latents.copy_(checkpoint.latents)
    state.optimizer.load_state_dict(checkpoint.optimizer)
    state.generator.set_state(checkpoint.generator)
    state.step = checkpoint.step
    state.history = checkpoint.history


def _first_step(*, session: EditSession, state: EditState, recorder: KeyRecorder,
                on_warning: Callable[[str], None]) -> tuple[torch.Tensor, list[str], str | None]:
    """The run's first step. When the U-Net is compiled and compiling or running it fails in dynamo,
    inductor or triton, the U-Net goes back to eager for the rest of the run and the step is taken
    again from the same x(θ) and generator state -> (record, names, the failure or None). A cache
    inductor cannot write for want of space is an OSError instead (compilation.cache_write_failure)."""
    compiled = session.compile is not None and session.compile.enabled
    generator = state.generator.get_state()
    try:
        return (*_step(session=session, state=state, recorder=recorder), None)
    except Exception as error:
        full = cache_write_failure(error) if compiled else None
        if full is not None:
            remove_partial_cache_files()
            raise full from None
        reason = compile_failure(error) if compiled else None
        if reason is None:
            raise
    drop_compiled(unet=session.backend.unet)
    state.generator.set_state(generator)
    state.optimizer.zero_grad(set_to_none=True)
    on_warning(f"--compile failed, running eager: {reason}")
    return (*_step(session=session, state=state, recorder=recorder), reason)


def optimise(
    *, session: EditSession, on_step: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Path | None = None, resume: bool = False, stop_requested: Callable[[], int] = lambda: 0,
    log_every: int = 1, on_warning: Callable[[str], None] = lambda line: None,
) -> EditResult:
    """Run the session's config.steps steps (inside one `run_hooks`) and decode x(θ) -> EditResult.

    The loss values and the finiteness check are read from the device every `log_every` steps (and
    before a checkpoint, a stop and the last step), so a step never waits for the host;
    on_step(step_index, terms) then runs for each step read (counting from 0). A checkpoint is
    written to `checkpoint` every config.checkpoint_every steps, after the last step, and when
    stop_requested() returns a signal number before the last step, which then raises
    InterruptedRun (exit 128 + that number). resume=True continues from `checkpoint` (steps may
    be raised) to the same result as an unbroken run. A compiled U-Net that fails on the first step
    runs eager instead (`_first_step`; on_warning gets one line, result.compile_fallback the reason).
    """
    config = session.config
    state = new_state(session=session)
    if resume:
        _restore(state=state, checkpoint=load_checkpoint(path=checkpoint, fingerprint=session.fingerprint,
                                                         steps=config.steps))
    pending: list[torch.Tensor] = []
    started, fallback = state.step, None
    clock, timings = Stopwatch(device=state.latents.device), {"first step": 0.0, "steps": 0.0}
    with run_hooks(session=session) as recorder:
        while state.step < config.steps:
            if state.step == started:
                record, names, fallback = _first_step(session=session, state=state, recorder=recorder,
                                                      on_warning=on_warning)
                timings["first step"] = clock.lap()
            else:
                record, names = _step(session=session, state=state, recorder=recorder)
            pending.append(record)
            signum = stop_requested() if state.step < config.steps else 0
            due = state.step % config.checkpoint_every == 0 or state.step == config.steps or signum
            if due or len(pending) >= log_every:
                first = state.step - len(pending)
                for index, terms in enumerate(_read_records(session=session, state=state, records=pending,
                                                            names=names, first_step=first)):
                    if on_step is not None:
                        on_step(first + index, terms)
                pending.clear()
            if checkpoint is not None and due:
                save_checkpoint(checkpoint=_snapshot(session=session, state=state), path=checkpoint)
            if signum:
                where = (f"checkpoint saved to {checkpoint}; run the same command with --resume to continue"
                         if checkpoint is not None else "no checkpoint was written")
                word = SIGNAL_WORDS.get(signum, f"stopped by signal {signum}")
                raise InterruptedRun(f"{word} after step {state.step}/{config.steps}; {where}", signum=signum)
    timings["steps"] = clock.lap()
    result = decode(session=session, state=state)
    result.timings.update(timings, decode=clock.lap())
    return dataclasses.replace(result, compile_fallback=fallback)
