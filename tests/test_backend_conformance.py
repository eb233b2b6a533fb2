"""Every video backend keeps the protocol of dmedit.models.backends.base.VideoBackend, and the engine runs
a step on it: the tiny model through the real loading path, and the benchmark's random-latent
backend (ZeroScope's U-Net class without VAE or text encoder). A new family joins BACKENDS."""

from __future__ import annotations

import pytest
import torch

from bench.setups import RandomLatentBackend, _alphas_cumprod
from dmedit.engine import editor
from dmedit.models.backends.tiny import UNET_CONFIG
from dmedit.core.config import EditConfig

FRAMES, SIZE = 3, 64
KEY_LAYERS = ("up_blocks.*.attentions.*.transformer_blocks.*.attn1",)


def _random_latent_backend() -> RandomLatentBackend:
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    return RandomLatentBackend(unet=unet, device=torch.device("cpu"), dtype=torch.float32,
                               alphas_cumprod=_alphas_cumprod(torch.device("cpu")), text_shape=(7, 32))


@pytest.fixture(params=["tiny", "random-latent"])
def backend(request, tiny_backend):
    return tiny_backend if request.param == "tiny" else _random_latent_backend()


def test_encoding_gives_latents_and_embeddings_of_the_protocol(backend):
    frames = torch.rand(FRAMES, 3, SIZE, SIZE) * 2 - 1
    latents = backend.encode_video(frames=frames)
    assert latents.shape == (1, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert latents.dtype == backend.dtype and latents.device.type == backend.device.type
    embeddings = backend.encode_prompts(prompts=["", "a red car"])
    assert embeddings.ndim == 3 and embeddings.shape[0] == 2 and embeddings.dtype == backend.dtype
    assert not torch.equal(embeddings[0], embeddings[1]), "each prompt has its own embedding"


def test_noise_prediction_and_forward_diffusion_keep_shapes_and_the_schedule(backend):
    latents = backend.encode_video(frames=torch.zeros(FRAMES, 3, SIZE, SIZE)).float().repeat(2, 1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0, 999])
    noisy = backend.add_noise(latents=latents, noise=noise, timesteps=timesteps)
    alpha_bar = backend.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    assert torch.allclose(noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise, atol=1e-6)
    eps = backend.predict_noise(latents=noisy.to(backend.dtype), timesteps=timesteps,
                                text_embeddings=backend.encode_prompts(prompts=["", "a car"]))
    assert eps.shape == latents.shape and torch.isfinite(eps).all()


def test_decoding_gives_frames_in_range_on_the_cpu(backend):
    latents = backend.encode_video(frames=torch.rand(FRAMES, 3, SIZE, SIZE) * 2 - 1)
    decoded = backend.decode_latents(latents=latents)
    assert decoded.shape == (FRAMES, 3, SIZE, SIZE) and decoded.dtype == torch.float32
    assert decoded.device.type == "cpu" and decoded.min() >= -1 and decoded.max() <= 1


def test_the_engine_runs_a_step_with_every_term(backend):
    session = editor.prepare(backend=backend, frames=torch.rand(FRAMES, 3, SIZE, SIZE) * 2 - 1, masks=None,
                             src_prompt="a grey car", tgt_prompt="a red car", config=EditConfig(steps=1),
                             key_layers=KEY_LAYERS)
    state = editor.new_state(session=session)
    terms = editor.run_step(session=session, state=state)
    assert set(terms) == {"t", "dds", "spatial", "temporal"}
    assert not torch.equal(state.latents.detach(), session.source_latents), "the step moves x(θ)"
