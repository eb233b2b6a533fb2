"""Show-1's pixel U-Net: hub-layout loading, strict key names, learned variance, the temporal head
split, dropout in eval(), and key capture for the S-SSM / T-SSM losses."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dmedit.engine.keys import capture_keys, select_key_layers
from dmedit.models.backends.show1_unet import (
    BASE_CONFIG,
    KEY_LAYER_PATTERN,
    SR1_CONFIG,
    TINY_BASE_CONFIG,
    TINY_INTERPOLATION_CONFIG,
    TINY_SR1_CONFIG,
    TINY_TEXT_DIM,
    Show1UNet3DConditionModel,
    load_strict,
    split_learned_variance,
)
from dmedit.core.errors import ModelError

BATCH, FRAMES, SIZE = 2, 4, 16
TINY_CONFIGS = {"base": TINY_BASE_CONFIG, "interpolation": TINY_INTERPOLATION_CONFIG, "sr1": TINY_SR1_CONFIG}


def _build(config: dict, seed: int = 0) -> Show1UNet3DConditionModel:
    torch.manual_seed(seed)
    return Show1UNet3DConditionModel(**config).eval()


def _inputs(config: dict, *, batch: int = BATCH, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(
        sample=torch.randn(batch, config["in_channels"], FRAMES, SIZE, SIZE, generator=generator),
        timestep=torch.tensor([999, 250][:batch]),
        encoder_hidden_states=torch.randn(batch, 5, TINY_TEXT_DIM, generator=generator),
    )
    if config.get("class_embed_type") == "timestep":
        inputs["class_labels"] = torch.tensor(250)
    return inputs


def _run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def _fill_zero_parameters(model: torch.nn.Module) -> None:
    """Give zero-initialised weights (the last temporal conv of every layer) random values, as
    trained weights have, so the layers behind them take part in the output."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def tiny_base() -> Show1UNet3DConditionModel:
    model = _build(TINY_BASE_CONFIG)
    _fill_zero_parameters(model)
    return model


@pytest.mark.parametrize("stage", sorted(TINY_CONFIGS))
def test_hub_layout_round_trip_under_the_hub_class_name(stage, tmp_path):
    config = TINY_CONFIGS[stage]
    model = _build(config)
    _fill_zero_parameters(model)
    model.save_pretrained(tmp_path / "unet")
    config_file = tmp_path / "unet" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["_class_name"] = "UNet3DConditionModel"  # what the showlab/show-1-* repositories name
    config_file.write_text(json.dumps(saved))
    loaded = Show1UNet3DConditionModel.from_pretrained(tmp_path / "unet").eval()
    inputs = _inputs(config)
    expected = _run(model, inputs)
    assert expected.shape == (BATCH, config["out_channels"], FRAMES, SIZE, SIZE)
    assert torch.equal(_run(loaded, inputs), expected)


RESNET = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2")
TEMPORAL_CONV = tuple(f"conv{n}.{i}" for n, i in ((1, 0), (1, 2), (2, 0), (2, 3), (3, 0), (3, 3), (4, 0), (4, 3)))
SPATIAL_ATTENTION = ("group_norm", "to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "to_out.0", "norm_cross")
TEMPORAL_BIASED = ("norm", "proj_in", "proj_out") + tuple(
    f"transformer_blocks.0.{name}" for name in
    ("norm1", "norm2", "norm3", "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"))
TEMPORAL_UNBIASED = tuple(f"transformer_blocks.0.attn{a}.to_{p}" for a in (1, 2) for p in "qkv")


def _weights(prefix: str, names: tuple[str, ...], bias: bool = True) -> set[str]:
    return {f"{prefix}.{name}.{kind}" for name in names for kind in (("weight", "bias") if bias else ("weight",))}


def _layer(prefix: str, index: int, shortcut: bool, attention: bool) -> set[str]:
    keys = _weights(f"{prefix}.resnets.{index}", RESNET + (("conv_shortcut",) if shortcut else ()))
    keys |= _weights(f"{prefix}.temp_convs.{index}", TEMPORAL_CONV)
    if attention:
        keys |= _weights(f"{prefix}.attentions.{index}", SPATIAL_ATTENTION)
        keys |= _weights(f"{prefix}.temp_attentions.{index}", TEMPORAL_BIASED)
        keys |= _weights(f"{prefix}.temp_attentions.{index}", TEMPORAL_UNBIASED, bias=False)
    return keys


def _expected_keys(config: dict) -> set[str]:
    """The state-dict names the reference layout implies: per block, layers of resnet + temporal
    conv (+ added-KV attention + temporal transformer in SimpleCrossAttn blocks); a resampling
    resnet between levels; up blocks have one layer more, each fed a skip (so a 1x1 shortcut)."""
    channels, count = config["block_out_channels"], len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * count
    keys = _weights("", ("conv_in", "conv_out", "conv_norm_out", "encoder_hid_proj",
                         "time_embedding.linear_1", "time_embedding.linear_2",
                         "add_embedding.norm1", "add_embedding.norm2", "add_embedding.proj",
                         "add_embedding.pool.k_proj", "add_embedding.pool.q_proj", "add_embedding.pool.v_proj"))
    keys = {key[1:] for key in keys} | {"add_embedding.pool.positional_embedding"}
    if config.get("class_embed_type") == "timestep":
        keys |= {key[1:] for key in _weights("", ("class_embedding.linear_1", "class_embedding.linear_2"))}
    for i, kind in enumerate(config["down_block_types"]):
        attention = kind.startswith("SimpleCrossAttn")
        for j in range(layers[i]):
            in_channels = channels[max(i - 1, 0)] if j == 0 else channels[i]
            keys |= _layer(f"down_blocks.{i}", j, in_channels != channels[i], attention)
        if i < count - 1:
            keys |= _weights(f"down_blocks.{i}.downsamplers.0", RESNET)
    keys |= _layer("mid_block", 0, False, True) | _layer("mid_block", 1, False, False)
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(layers[count - 1 - i] + 1):
            keys |= _layer(f"up_blocks.{i}", j, True, kind.startswith("SimpleCrossAttn"))
        if i < count - 1:
            keys |= _weights(f"up_blocks.{i}.upsamplers.0", RESNET)
    return keys


@pytest.mark.parametrize("config", [BASE_CONFIG, SR1_CONFIG], ids=["show-1-base", "show-1-sr1"])
def test_full_size_state_dict_names_follow_the_reference_layout(config):
    with torch.device("meta"):
        model = Show1UNet3DConditionModel(**config)
    actual = set(model.state_dict())
    expected = _expected_keys(config)
    assert not expected - actual, f"missing: {sorted(expected - actual)[:5]}"
    assert not actual - expected, f"unexpected: {sorted(actual - expected)[:5]}"


def test_keyframe_output_is_epsilon_then_variance(tiny_base):
    prediction = _run(tiny_base, _inputs(TINY_BASE_CONFIG))
    assert prediction.shape[1] == 6
    epsilon, variance = split_learned_variance(prediction=prediction)
    assert torch.equal(epsilon, prediction[:, :3]) and torch.equal(variance, prediction[:, 3:])
    with pytest.raises(ModelError, match="6 channels"):
        split_learned_variance(prediction=epsilon)


def _temporal_attentions(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules()
            if ".temp_attentions." in name and name.endswith((".attn1", ".attn2"))}


def test_temporal_attention_has_head_dim_many_heads_and_a_wrong_split_changes_the_output(tiny_base):
    head_setting = TINY_BASE_CONFIG["attention_head_dim"]
    temporal = _temporal_attentions(tiny_base)
    assert temporal
    for name, attention in temporal.items():
        channels = attention.to_q.in_features
        assert (attention.heads, channels // attention.heads) == (head_setting, channels // head_setting), name
    planted = copy.deepcopy(tiny_base)
    for attention in _temporal_attentions(planted).values():
        attention.heads = attention.to_q.in_features // head_setting  # C/16 heads of 16: same weights
    inputs = _inputs(TINY_BASE_CONFIG)
    assert not torch.allclose(_run(planted, inputs), _run(tiny_base, inputs), atol=1e-4)


def test_eval_switches_every_dropout_off(tiny_base):
    model = copy.deepcopy(tiny_base)
    inputs = _inputs(TINY_BASE_CONFIG)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    model.train()
    torch.manual_seed(0)
    first = _run(model, inputs)
    assert not torch.equal(_run(model, inputs), first)  # the temporal convolutions' dropout is live
    model.eval()
    assert torch.equal(_run(model, inputs), _run(model, inputs))


def test_decoder_spatial_keys_are_frames_folded_branch_major_with_gradient(tiny_base):
    layers = select_key_layers(unet=tiny_base, patterns=[KEY_LAYER_PATTERN])
    assert list(layers) == ["up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    inputs = _inputs(TINY_BASE_CONFIG)
    inputs["sample"].requires_grad_(True)
    with capture_keys(unet=tiny_base, patterns=[KEY_LAYER_PATTERN]) as store:
        output = tiny_base(**inputs).sample
    grid, channels = (SIZE // 2) ** 2, TINY_BASE_CONFIG["block_out_channels"][-1]
    for keys in store.layers():
        assert keys.shape == (BATCH * FRAMES, grid, channels)
    (output.square().mean() + sum(keys.square().mean() for keys in store.layers())).backward()
    assert inputs["sample"].grad is not None and inputs["sample"].grad.abs().sum() > 0
    second = {name: value[1:] for name, value in _inputs(TINY_BASE_CONFIG).items()}
    with torch.no_grad(), capture_keys(unet=tiny_base, patterns=[KEY_LAYER_PATTERN]) as alone:
        tiny_base(**second)
    for batched, single in zip(store.layers(), alone.layers()):
        assert torch.allclose(batched[FRAMES:].detach(), single, atol=1e-5)


def test_sr1_needs_and_uses_the_noise_level():
    model = _build(TINY_SR1_CONFIG)
    inputs = _inputs(TINY_SR1_CONFIG)
    with pytest.raises(ModelError, match="class_labels"):
        _run(model, {**inputs, "class_labels": None})
    assert not torch.allclose(_run(model, inputs), _run(model, {**inputs, "class_labels": torch.tensor(0)}))


@pytest.mark.parametrize("tamper", ["missing", "unexpected", "reshaped"])
def test_strict_loading_refuses_a_checkpoint_with_other_tensor_names(tamper, tmp_path):
    from safetensors.torch import load_file, save_file

    _build(TINY_BASE_CONFIG).save_pretrained(tmp_path / "unet")
    assert isinstance(load_strict(path=tmp_path, subfolder="unet"), Show1UNet3DConditionModel)
    weights_file = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    name = "up_blocks.0.temp_attentions.0.proj_in.weight"
    if tamper == "missing":
        del weights[name]
    elif tamper == "unexpected":
        weights["up_blocks.0.temp_attentions.0.proj_extra.weight"] = weights[name].clone()
    else:
        weights[name] = weights[name][:, :-1].contiguous()
    save_file(weights, weights_file)
    with pytest.raises(ModelError, match="proj_extra" if tamper == "unexpected" else "proj_in"):
        load_strict(path=tmp_path, subfolder="unet")
