"""The speed levers give the results of the plain code: per-block and per-layer activation
checkpointing, the C x C form of the spatial loss and float32 self-similarity under autocast."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet3DConditionModel

from dmedit.engine import editor
from dmedit.engine.keys import capture_keys
from dmedit.models.backends.tiny import UNET_CONFIG
from dmedit.core.config import EditConfig
from dmedit.engine.losses import spatial_self_similarity, spatial_ssm_loss, temporal_ssm_loss
from dmedit.engine.speed import checkpoint_units, checkpointed_blocks

KEYS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
FRAMES, LATENT = 3, 8


@pytest.fixture(scope="module")
def unet() -> UNet3DConditionModel:
    torch.manual_seed(0)
    return UNet3DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, FRAMES, LATENT, LATENT, generator=generator)
    text = torch.randn(1, 5, 32, generator=generator)
    return latents, torch.full((1,), 500), text


def _keys_loss_and_grad(unet, *, granularity: str | None):
    """Keys, an SSM loss on them and its gradient w.r.t. the input latents, plus saved bytes."""
    latents, timesteps, text = _inputs()
    latents.requires_grad_(True)
    source = [torch.randn(FRAMES, LATENT * LATENT, 32, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    saved_bytes = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with capture_keys(unet=unet, patterns=KEYS) as store:
            if granularity:
                with checkpointed_blocks(unet=unet, granularity=granularity):
                    unet(latents, timesteps, encoder_hidden_states=text)
            else:
                unet(latents, timesteps, encoder_hidden_states=text)
    keys = store.layers()
    loss = spatial_ssm_loss(target_keys=keys, source_keys=source) + temporal_ssm_loss(
        target_keys=keys, source_keys=source)
    gradient, = torch.autograd.grad(loss, latents)
    return keys, loss, gradient, sum(saved_bytes)


@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_checkpointing_gives_the_same_keys_and_gradients_with_less_saved(unet, granularity):
    keys, loss, gradient, saved = _keys_loss_and_grad(unet, granularity=None)
    keys_c, loss_c, gradient_c, saved_c = _keys_loss_and_grad(unet, granularity=granularity)
    for plain, checkpointed in zip(keys, keys_c):
        assert torch.allclose(plain, checkpointed, atol=1e-5)
    assert loss_c.item() == pytest.approx(loss.item(), rel=1e-5)
    assert gradient.abs().max() > 0
    assert torch.allclose(gradient, gradient_c, atol=1e-5 * gradient.abs().max().item())
    assert saved_c < saved / 2
    assert all("forward" not in vars(unit) for unit in checkpoint_units(unet=unet, granularity=granularity))


def test_checkpointing_leaves_no_grad_calls_unchanged(unet):
    latents, timesteps, text = _inputs(3)
    with torch.no_grad():
        plain = unet(latents, timesteps, encoder_hidden_states=text).sample
        with checkpointed_blocks(unet=unet):
            checkpointed = unet(latents, timesteps, encoder_hidden_states=text).sample
    assert torch.equal(plain, checkpointed)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("lever", [dict(checkpointing="block"), dict(checkpointing="layer")])
def test_editor_levers_give_the_same_steps(tiny_backend, frames, lever):
    def two_steps(**levers):
        session = editor.prepare(backend=tiny_backend, frames=frames, masks=None, src_prompt="a grey car",
                                 tgt_prompt="a red car", config=EditConfig(steps=2), key_layers=KEYS, **levers)
        state = editor.new_state(session=session)
        terms = [editor.run_step(session=session, state=state) for _ in range(2)]
        return terms, state.latents.detach()

    plain_terms, plain_latents = two_steps()
    lever_terms, lever_latents = two_steps(**lever)
    for plain, other in zip(plain_terms, lever_terms):
        assert plain.keys() == other.keys() == {"t", "dds", "spatial", "temporal"}
        for name in plain:
            assert other[name] == pytest.approx(plain[name], rel=1e-4, abs=1e-7)
    assert torch.allclose(plain_latents, lever_latents, atol=1e-5)


def _float64_spatial_loss(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    unit = [torch.nn.functional.normalize(keys.double(), dim=-1) for keys in (target, source)]
    return (unit[0] @ unit[0].transpose(1, 2) - unit[1] @ unit[1].transpose(1, 2)).square().mean()


@pytest.mark.parametrize("shape, closeness", [((4, 64, 8), 1.0), ((2, 256, 16), 1e-3), ((3, 6, 8), 1.0)])
def test_spatial_loss_and_gradient_match_float64_for_both_forms(shape, closeness):
    """(4, 64, 8) and (2, 256, 16) take the C x C form (C < HW), (3, 6, 8) the chunked HW x HW form;
    closeness 1e-3: target keys within 0.1 % of the source, where a naive expansion would cancel."""
    generator = torch.Generator().manual_seed(5)
    source = torch.randn(*shape, generator=generator)
    target = (source + closeness * torch.randn(*shape, generator=generator)).requires_grad_(True)
    loss = spatial_ssm_loss(target_keys=[target], source_keys=[source], frame_chunk=2)
    gradient, = torch.autograd.grad(loss, target)
    reference_target = target.detach().double().requires_grad_(True)
    reference = _float64_spatial_loss(reference_target, source)
    reference_gradient, = torch.autograd.grad(reference, reference_target)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4)
    assert (gradient.double() - reference_gradient).abs().max() <= 1e-3 * reference_gradient.abs().max()


def test_self_similarity_stays_float32_under_bf16_autocast():
    keys = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(6))
    expected = spatial_self_similarity(keys=keys)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = spatial_self_similarity(keys=keys)
        loss = spatial_ssm_loss(target_keys=[keys], source_keys=[keys.flip(0)])
    assert inside.dtype == torch.float32 and torch.equal(inside, expected)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(spatial_ssm_loss(target_keys=[keys], source_keys=[keys.flip(0)]).item(),
                                        rel=1e-6)
