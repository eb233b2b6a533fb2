"""Key capture on a bare tiny UNet3D: which layers, what shapes, and nothing left behind."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet3DConditionModel

from dmedit.engine.keys import capture_keys, select_key_layers
from dmedit.core.errors import UsageError

UP_SPATIAL = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
FRAMES, LATENT = 3, 8


@pytest.fixture(scope="module")
def unet() -> UNet3DConditionModel:
    torch.manual_seed(0)
    model = UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=LATENT,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
    )
    return model.eval().requires_grad_(False)


def _inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, FRAMES, LATENT, LATENT, generator=generator)
    text = torch.randn(batch, 5, 32, generator=generator)
    return latents, torch.full((batch,), 500), text


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())


def test_captures_only_spatial_self_attention_keys_per_frame(unet):
    latents, timesteps, text = _inputs(1)
    with capture_keys(unet=unet, patterns=UP_SPATIAL) as store:
        unet(latents, timesteps, encoder_hidden_states=text)
    assert list(store.keys) == ["up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                                "up_blocks.1.attentions.1.transformer_blocks.0.attn1"]
    for keys in store.layers():
        assert keys.shape == (FRAMES, LATENT * LATENT, 32)


def test_captured_keys_are_to_k_of_the_attention_input(unet):
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attention = unet.get_submodule(name)
    inputs = []
    handle = attention.register_forward_pre_hook(lambda _m, args, kwargs: inputs.append(args[0] if args else
                                                 kwargs["hidden_states"]), with_kwargs=True)
    try:
        latents, timesteps, text = _inputs(1)
        with capture_keys(unet=unet, patterns=[name]) as store:
            unet(latents, timesteps, encoder_hidden_states=text)
    finally:
        handle.remove()
    assert torch.allclose(store.keys[name], attention.to_k(inputs[0]), atol=1e-6)


def test_rows_keep_one_branch_of_a_batched_call(unet):
    latents, timesteps, text = _inputs(2, seed=1)
    with capture_keys(unet=unet, patterns=UP_SPATIAL, rows=slice(FRAMES, 2 * FRAMES)) as batched:
        unet(latents, timesteps, encoder_hidden_states=text)
    with capture_keys(unet=unet, patterns=UP_SPATIAL) as single:
        unet(latents[1:], timesteps[1:], encoder_hidden_states=text[1:])
    for got, expected in zip(batched.layers(), single.layers()):
        assert got.shape == (FRAMES, LATENT * LATENT, 32)
        assert torch.allclose(got, expected, atol=1e-5)


def test_calls_accumulate_in_call_order_until_cleared(unet):
    first, timesteps, text = _inputs(1, seed=2)
    second, _, _ = _inputs(1, seed=3)
    with capture_keys(unet=unet, patterns=UP_SPATIAL) as store:
        unet(first, timesteps, encoder_hidden_states=text)
        only_first = store.layers()[0].clone()
        unet(second, timesteps, encoder_hidden_states=text)
        both = store.layers()[0]
        store.clear()
        assert store.keys == {}
    assert both.shape[0] == 2 * FRAMES
    assert torch.equal(both[:FRAMES], only_first)
    assert not torch.allclose(both[FRAMES:], only_first)


def test_hooks_are_removed_after_an_exception(unet):
    before = _hook_count(unet)
    latents, timesteps, text = _inputs(1)
    with pytest.raises(ZeroDivisionError):
        with capture_keys(unet=unet, patterns=UP_SPATIAL) as store:
            assert _hook_count(unet) == before + 2
            unet(latents, timesteps, encoder_hidden_states=text)
            raise ZeroDivisionError
    assert _hook_count(unet) == before
    store.clear()
    unet(latents, timesteps, encoder_hidden_states=text)
    assert store.keys == {}


@pytest.mark.parametrize("pattern, words", [
    ("up_blocks.1.temp_attentions.*.attn1", "temporal"),
    ("transformer_in.*.attn1", "temporal"),
    ("*attentions.*.attn1", "temporal"),
    ("up_blocks.1.attentions.*.attn2", "cross-attention"),
    ("down_blocks.9.*", "match no attention module"),
])
def test_bad_patterns_are_refused_with_the_reason(unet, pattern, words):
    with pytest.raises(UsageError, match=words) as error:
        select_key_layers(unet=unet, patterns=[pattern])
    assert pattern in str(error.value)


def test_a_refused_pattern_leaves_no_hook(unet):
    before = _hook_count(unet)
    with pytest.raises(UsageError):
        with capture_keys(unet=unet, patterns=["up_blocks.1.*attn1"]):
            pass
    assert _hook_count(unet) == before
