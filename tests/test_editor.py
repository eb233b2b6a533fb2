"""DreamMotion's optimisation loop on the tiny backend: the math of each term, the update rule,
masking, ablations, call counts, frozen models, seeds, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import signal

import pytest
import torch

from dmedit.engine import editor
from dmedit.core.config import EditConfig
from dmedit.core.errors import InterruptedRun, ModelError, UsageError
from dmedit.engine.keys import capture_keys
from dmedit.engine.losses import cfg_noise, spatial_ssm_loss, temporal_ssm_loss

KEY_LAYERS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
SRC, TGT = "a grey car on a road", "a red car on a road"
FRAMES, SIZE, LATENT = 4, 64, 8


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def half_mask() -> torch.Tensor:
    """(1,1,F,h,w): the left half of every frame is editable."""
    mask = torch.zeros(1, 1, FRAMES, LATENT, LATENT)
    mask[..., : LATENT // 2] = 1.0
    return mask


def _session(backend, frames, masks=None, *, src=SRC, tgt=TGT, **settings) -> editor.EditSession:
    return editor.prepare(backend=backend, frames=frames, masks=masks, src_prompt=src, tgt_prompt=tgt,
                          config=EditConfig(**settings), key_layers=KEY_LAYERS)


def _edit(backend, frames, masks=None, *, src=SRC, tgt=TGT, checkpointing=None, **options) -> editor.EditResult:
    """prepare() with the EditConfig fields among `options`, then optimise() with the rest."""
    settings = {k: options.pop(k) for k in list(options) if k in {f.name for f in dataclasses.fields(EditConfig)}}
    session = editor.prepare(backend=backend, frames=frames, masks=masks, src_prompt=src, tgt_prompt=tgt,
                             config=EditConfig(**settings), key_layers=KEY_LAYERS, checkpointing=checkpointing)
    return editor.optimise(session=session, **options)


def _perturb(state: editor.EditState, scale: float = 0.5) -> None:
    with torch.no_grad():
        state.latents.add_(scale * torch.randn(state.latents.shape, generator=torch.Generator().manual_seed(7)))


def _twin(session: editor.EditSession, state: editor.EditState) -> editor.EditState:
    """A fresh state with the same latents and generator position."""
    twin = editor.new_state(session=session)
    with torch.no_grad():
        twin.latents.copy_(state.latents)
    twin.generator.set_state(state.generator.get_state())
    return twin


def test_equal_prompts_at_the_source_give_zero_gradient_and_losses(tiny_backend, frames):
    session = _session(tiny_backend, frames, src=SRC, tgt=SRC)
    step = editor.step_losses(session=session, state=editor.new_state(session=session))
    assert step.dds_grad.abs().max().item() < 1e-4
    assert set(step.losses) == {"dds", "spatial", "temporal"}
    assert step.losses["spatial"].item() < 1e-6 and step.losses["temporal"].item() < 1e-6


@pytest.mark.parametrize("ssm_keys, ssm_weight", [("conditional", 1.0), ("unconditional", 1.0), ("conditional", 0.0)])
def test_dds_grad_equals_masked_guidance_difference_of_four_single_calls(
        tiny_backend, frames, half_mask, ssm_keys, ssm_weight):
    session = _session(tiny_backend, frames, half_mask, ssm_keys=ssm_keys, guidance_scale=7.0,
                       lambda_spatial=ssm_weight, lambda_temporal=ssm_weight)
    state = editor.new_state(session=session)
    _perturb(state)
    step = editor.step_losses(session=session, state=state)

    timesteps = step.t.cpu()
    null, src, tgt = tiny_backend.encode_prompts(prompts=["", SRC, TGT]).split(1)
    with torch.no_grad():
        x_t = tiny_backend.add_noise(latents=state.latents, noise=step.noise, timesteps=timesteps)
        source_t = tiny_backend.add_noise(latents=tiny_backend.encode_video(frames=frames), noise=step.noise,
                                          timesteps=timesteps)

        def eps(latents, text):
            return tiny_backend.predict_noise(latents=latents, timesteps=timesteps, text_embeddings=text)

        target = cfg_noise(uncond=eps(x_t, null), cond=eps(x_t, tgt), guidance_scale=7.0)
        source = cfg_noise(uncond=eps(source_t, null), cond=eps(source_t, src), guidance_scale=7.0)
    expected = (target - source) * half_mask
    assert expected.abs().max() > 1e-2
    assert torch.allclose(step.dds_grad, expected, atol=1e-4)


def test_update_is_sgd_on_weighted_gradient_sum(tiny_backend, frames):
    session = _session(tiny_backend, frames, learning_rate=0.1, dds_scale=2.0, lambda_spatial=0.5,
                       lambda_temporal=3.0)
    state = editor.new_state(session=session)
    _perturb(state)
    twin = _twin(session, state)
    step = editor.step_losses(session=session, state=twin)
    ssm = 0.5 * step.losses["spatial"] + 3.0 * step.losses["temporal"]
    expected = twin.latents.detach() - 0.1 * (2.0 * step.dds_grad + torch.autograd.grad(ssm, twin.latents)[0])
    terms = editor.run_step(session=session, state=state)
    assert torch.allclose(state.latents.detach(), expected, atol=1e-6)
    assert terms["t"] == float(step.t)
    assert terms["dds"] == pytest.approx(step.dds_grad.square().mean().item(), rel=1e-5)
    assert state.step == 1 and state.history["spatial"] == [terms["spatial"]]


def _eq_12_and_15(target_keys, source_keys) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's S-SSM (Eq. 12, (1/N)·Σ_n ‖SS^n(x_t) − SS^n(x̂_t)‖²) and T-SSM (Eq. 15,
    ‖TS(x_t) − TS(x̂_t)‖²) of each key layer, summed over the layers, written out frame by frame
    with cosine similarities and without the engine's losses."""
    spatial = temporal = torch.zeros(())
    for target, source in zip(target_keys, source_keys, strict=True):
        count = target.shape[0]
        for n in range(count):
            similarity = [torch.cosine_similarity(keys[n][:, None], keys[n][None], dim=-1) for keys in (target, source)]
            spatial = spatial + (similarity[0] - similarity[1]).square().sum() / count
        means = [keys.mean(dim=1) for keys in (target, source)]
        similarity = [torch.cosine_similarity(mean[:, None], mean[None], dim=-1) for mean in means]
        temporal = temporal + (similarity[0] - similarity[1]).square().sum()
    return spatial, temporal


def _independent_step(backend, frames, mask, latents, config: EditConfig) -> torch.Tensor:
    """x(θ) after one SGD step, computed without the editor: the same draws of t and ε, six single
    (unbatched) U-Net calls, keys captured per call, the gradient dds_scale·g + ∇(λ_S·L_S + λ_T·L_T);
    with ssm_reduction "sum", L_S and L_T are Eq. 12 and Eq. 15 written out (_eq_12_and_15)."""
    generator = torch.Generator().manual_seed(config.seed)
    t = torch.randint(config.t_min, config.t_max + 1, (1,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    null, src, tgt = backend.encode_prompts(prompts=["", SRC, TGT]).split(1)
    x = latents.clone().requires_grad_(True)
    x_t = backend.add_noise(latents=x, noise=noise, timesteps=t)
    source_t = backend.add_noise(latents=backend.encode_video(frames=frames).float(), noise=noise, timesteps=t)

    def eps(latents_t, text, grad=False):
        with torch.set_grad_enabled(grad), capture_keys(unet=backend.unet, patterns=KEY_LAYERS) as store:
            prediction = backend.predict_noise(latents=latents_t, timesteps=t, text_embeddings=text)
        return prediction, store.layers()

    target_cond, target_keys = eps(x_t, tgt, grad=True)
    source_cond, source_keys = eps(source_t, src)
    target = cfg_noise(uncond=eps(x_t.detach(), null)[0], cond=target_cond.detach(), guidance_scale=config.guidance_scale)
    source = cfg_noise(uncond=eps(source_t, null)[0], cond=source_cond, guidance_scale=config.guidance_scale)
    g = (target - source) * mask
    if config.ssm_reduction == "sum":
        spatial, temporal = _eq_12_and_15(target_keys, source_keys)
    else:
        spatial = spatial_ssm_loss(target_keys=target_keys, source_keys=source_keys)
        temporal = temporal_ssm_loss(target_keys=target_keys, source_keys=source_keys)
    ssm = config.lambda_spatial * spatial + config.lambda_temporal * temporal
    gradient = config.dds_scale * g + torch.autograd.grad(ssm, x)[0]
    return latents - config.learning_rate * gradient


def test_one_step_equals_an_independent_unbatched_computation(tiny_backend, frames, half_mask):
    config = EditConfig(learning_rate=0.2, dds_scale=3.0, lambda_spatial=40.0, lambda_temporal=70.0, seed=3)
    session = editor.prepare(backend=tiny_backend, frames=frames, masks=half_mask, src_prompt=SRC, tgt_prompt=TGT,
                             config=config, key_layers=KEY_LAYERS)
    state = editor.new_state(session=session)
    start = state.latents.detach().clone()
    editor.run_step(session=session, state=state)
    expected = _independent_step(tiny_backend, frames, half_mask, start, config)
    moved = (expected - start).abs().max()
    assert moved > 1e-3, "the step moves the latents"
    assert torch.allclose(state.latents.detach(), expected, atol=1e-5 * max(1.0, moved.item()))


def test_one_step_with_the_sum_reduction_is_eq_12_and_15_per_layer_summed(tiny_backend, frames, half_mask):
    """The paper's letter, checked so that a stray factor of N (frames) on either term fails."""
    session = _session(tiny_backend, frames, half_mask, learning_rate=0.2, dds_scale=3.0, lambda_spatial=0.02,
                       lambda_temporal=2.0, seed=3, ssm_reduction="sum")
    config, state = session.config, editor.new_state(session=session)
    start = state.latents.detach().clone()
    editor.run_step(session=session, state=state)
    expected = _independent_step(tiny_backend, frames, half_mask, start, config)
    tolerance = 1e-5 * max(1.0, (expected - start).abs().max().item())
    assert torch.allclose(state.latents.detach(), expected, atol=tolerance)
    for stray in ({"lambda_spatial": 0.02 * FRAMES}, {"lambda_temporal": 2.0 * FRAMES}):
        off_by_n = _independent_step(tiny_backend, frames, half_mask, start, dataclasses.replace(config, **stray))
        assert not torch.allclose(off_by_n, expected, atol=tolerance), stray


def test_sum_reduction_sums_what_mean_averages(tiny_backend, frames):
    summed = _session(tiny_backend, frames, ssm_reduction="sum")
    averaged = _session(tiny_backend, frames)
    twins = [editor.new_state(session=session) for session in (summed, averaged)]
    for state in twins:
        _perturb(state)
    by_sum, by_mean = (editor.step_losses(session=s, state=st).losses for s, st in zip((summed, averaged), twins))
    # two key layers on the full 8x8 latent grid (64 positions) over 4 frames: S-SSM sums 64*64 entries a
    # frame and averages over the frames (Eq. 12), T-SSM sums the 4*4 entries (Eq. 15); layers are summed
    assert by_sum["spatial"].item() == pytest.approx(by_mean["spatial"].item() * 2 * 64 * 64, rel=1e-4)
    assert by_sum["temporal"].item() == pytest.approx(by_mean["temporal"].item() * 2 * FRAMES * FRAMES, rel=1e-4)


def test_mask_keeps_latents_outside_bit_identical_without_ssm(tiny_backend, frames, half_mask):
    result = _edit(tiny_backend, frames, half_mask, steps=20, lambda_spatial=0.0, lambda_temporal=0.0)
    source = tiny_backend.encode_video(frames=frames).float()
    outside = half_mask.expand_as(source) == 0
    assert torch.equal(result.latents[outside], source[outside])
    assert (result.latents[~outside] - source[~outside]).abs().max() > 1e-2
    assert result.frames.shape == (FRAMES, 3, SIZE, SIZE)
    assert result.frames.dtype == torch.float32 and result.frames.abs().max() <= 1.0
    assert result.steps_done == 20 and len(result.history["dds"]) == 20


def test_use_mask_false_edits_the_whole_frame(tiny_backend, frames, half_mask):
    result = _edit(tiny_backend, frames, half_mask, steps=3, use_mask=False, lambda_spatial=0.0,
                   lambda_temporal=0.0)
    source = tiny_backend.encode_video(frames=frames).float()
    outside = half_mask.expand_as(source) == 0
    assert (result.latents[outside] - source[outside]).abs().max() > 1e-2


@pytest.mark.parametrize("ssm_keys, tgt", [("unconditional", TGT), ("conditional", SRC)])
def test_ssm_losses_start_at_zero_and_their_gradients_reach_the_latents(tiny_backend, frames, ssm_keys, tgt):
    session = _session(tiny_backend, frames, tgt=tgt, ssm_keys=ssm_keys)
    state = editor.new_state(session=session)
    start = editor.step_losses(session=session, state=state)
    assert start.losses["spatial"].item() < 1e-6 and start.losses["temporal"].item() < 1e-6
    _perturb(state)
    step = editor.step_losses(session=session, state=state)
    for name in ("spatial", "temporal"):
        assert step.losses[name].item() > 1e-6
        (gradient,) = torch.autograd.grad(step.losses[name], state.latents, retain_graph=True)
        assert torch.isfinite(gradient).all() and gradient.abs().max() > 0


@pytest.fixture(scope="module")
def full_first_step(tiny_backend, frames) -> dict[str, list[float]]:
    return _edit(tiny_backend, frames, steps=1).history


@pytest.mark.parametrize("weights, logged", [
    ((1.0, 1.0), {"t", "dds", "spatial", "temporal"}),
    ((0.0, 1.0), {"t", "dds", "temporal"}),
    ((1.0, 0.0), {"t", "dds", "spatial"}),
    ((0.0, 0.0), {"t", "dds"}),
])
def test_zero_weight_drops_exactly_its_term(tiny_backend, frames, full_first_step, weights, logged):
    ablated = _edit(tiny_backend, frames, steps=1, lambda_spatial=weights[0], lambda_temporal=weights[1])
    assert set(ablated.history) == logged
    for name in logged:
        assert ablated.history[name] == pytest.approx(full_first_step[name], rel=1e-5)


@pytest.mark.parametrize("ssm_weight, expected_calls", [(1.0, [(False, 3), (True, 1)]), (0.0, [(False, 4)])])
def test_one_step_makes_the_minimum_unet_calls(tiny_backend, frames, monkeypatch, ssm_weight, expected_calls):
    session = _session(tiny_backend, frames, lambda_spatial=ssm_weight, lambda_temporal=ssm_weight)
    state = editor.new_state(session=session)
    calls = []
    original = tiny_backend.unet.forward

    def counting_forward(sample, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), sample.shape[0]))
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(tiny_backend.unet, "forward", counting_forward)
    editor.run_step(session=session, state=state)
    assert calls == expected_calls


def test_models_are_frozen_and_collect_no_gradients(tiny_backend, frames):
    models = (tiny_backend.unet, tiny_backend.vae, tiny_backend.text_encoder)
    try:
        for model in models:
            model.requires_grad_(True)
        _edit(tiny_backend, frames, steps=2)
        for model in models:
            assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        for model in models:
            model.requires_grad_(False)
            model.zero_grad(set_to_none=True)


def test_same_seed_reproduces_bit_identical_frames(tiny_backend, frames):
    first = _edit(tiny_backend, frames, steps=3, seed=5)
    second = _edit(tiny_backend, frames, steps=3, seed=5)
    other = _edit(tiny_backend, frames, steps=3, seed=6)
    assert torch.equal(first.frames, second.frames) and torch.equal(first.latents, second.latents)
    assert not torch.equal(first.latents, other.latents)


def test_resume_after_a_stop_equals_an_unbroken_run(tiny_backend, frames, half_mask, tmp_path):
    options = dict(steps=4, checkpoint_every=3)
    unbroken = _edit(tiny_backend, frames, half_mask, **options)
    asked = []

    def stop_after_two() -> int:
        asked.append(True)
        return signal.SIGTERM if len(asked) >= 2 else 0

    with pytest.raises(InterruptedRun, match="--resume") as error:
        _edit(tiny_backend, frames, half_mask, checkpoint=tmp_path / "checkpoint.pt", stop_requested=stop_after_two,
              **options)
    assert "terminated after step 2/4" in str(error.value) and error.value.exit_code == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    steps_seen = []
    resumed = _edit(tiny_backend, frames, half_mask, checkpoint=tmp_path / "checkpoint.pt", resume=True,
                    on_step=lambda index, terms: steps_seen.append(index), **options)
    assert steps_seen == [2, 3]
    assert torch.equal(resumed.latents, unbroken.latents)
    assert torch.equal(resumed.frames, unbroken.frames)
    assert resumed.history == unbroken.history and resumed.steps_done == 4


def test_resume_may_extend_the_step_count(tiny_backend, frames, tmp_path):
    unbroken = _edit(tiny_backend, frames, steps=3)
    _edit(tiny_backend, frames, steps=2, checkpoint=tmp_path / "checkpoint.pt")
    extended = _edit(tiny_backend, frames, steps=3, checkpoint=tmp_path / "checkpoint.pt", resume=True)
    assert torch.equal(extended.latents, unbroken.latents)


@pytest.mark.parametrize("change", [dict(tgt="a blue car"), dict(learning_rate=0.3), dict(seed=1)])
def test_resume_refuses_a_checkpoint_from_another_run(tiny_backend, frames, tmp_path, change):
    _edit(tiny_backend, frames, steps=1, checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(UsageError, match="different run"):
        _edit(tiny_backend, frames, steps=2, checkpoint=tmp_path / "checkpoint.pt", resume=True, **change)


def test_resume_without_checkpoint_is_a_usage_error(tiny_backend, frames, tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        _edit(tiny_backend, frames, steps=1, checkpoint=tmp_path / "checkpoint.pt", resume=True)


def test_nan_from_the_model_is_a_model_error(tiny_backend, frames, monkeypatch):
    original = tiny_backend.unet.forward

    def nan_forward(*args, **kwargs):
        output = original(*args, **kwargs)
        output.sample = output.sample * float("nan")
        return output

    monkeypatch.setattr(tiny_backend.unet, "forward", nan_forward)
    with pytest.raises(ModelError, match=r"NaN/inf latents at step 1; nothing was written \(lower --lr"):
        _edit(tiny_backend, frames, steps=2)


def test_key_layers_matching_nothing_fail_before_any_step(tiny_backend, frames):
    with pytest.raises(UsageError, match="match no attention module"):
        editor.prepare(backend=tiny_backend, frames=frames, masks=None, src_prompt=SRC, tgt_prompt=TGT,
                       config=EditConfig(steps=1), key_layers=("mid_block.nothing",))


@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_activation_checkpointing_changes_memory_not_the_edit(tiny_backend, frames, half_mask, granularity):
    plain = _edit(tiny_backend, frames, half_mask, steps=3, dds_scale=1.0, lambda_spatial=50.0, lambda_temporal=50.0)
    lean = _edit(tiny_backend, frames, half_mask, steps=3, dds_scale=1.0, lambda_spatial=50.0, lambda_temporal=50.0,
                 checkpointing=granularity)
    assert plain.history["t"] == lean.history["t"]
    assert torch.allclose(lean.latents, plain.latents, atol=1e-5)
    assert not torch.equal(plain.latents[..., : LATENT // 2], editor.prepare(
        backend=tiny_backend, frames=frames, masks=half_mask, src_prompt=SRC, tgt_prompt=TGT,
        config=EditConfig(), key_layers=KEY_LAYERS).source_latents[..., : LATENT // 2])


def test_resume_refuses_a_checkpoint_past_the_requested_steps(tiny_backend, frames, tmp_path):
    _edit(tiny_backend, frames, steps=3, checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(UsageError, match="past --steps 2"):
        _edit(tiny_backend, frames, steps=2, checkpoint=tmp_path / "checkpoint.pt", resume=True)


def test_the_registry_defaults_move_the_masked_latents(tiny_backend, frames, half_mask):
    from dmedit.models.registry import load_registry

    defaults = dict(load_registry().model("tiny").defaults)
    result = _edit(tiny_backend, frames, half_mask, **defaults)
    source = _session(tiny_backend, frames).source_latents
    change = (result.latents - source).abs()
    assert change[..., : LATENT // 2].mean() > 0.5 * source.std(), "a default run visibly edits the masked region"
