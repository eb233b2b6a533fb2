"""The DreamMotion loss formulas against values worked out by hand and against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from dmedit.engine import losses
from dmedit.engine.losses import (
    cfg_noise,
    dds_grad,
    dds_surrogate,
    spatial_self_similarity,
    spatial_ssm_loss,
    temporal_self_similarity,
    temporal_ssm_loss,
)

# Two frames, two positions, two channels (F, HW, C).
TARGET_KEYS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                            [[1.0, 0.0], [1.0, 1.0]]])
SOURCE_KEYS = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                            [[0.0, 1.0], [0.0, 2.0]]])
HALF_SQRT2 = math.sqrt(0.5)


def test_spatial_self_similarity_matches_hand_computed_cosines():
    expected = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                             [[1.0, HALF_SQRT2], [HALF_SQRT2, 1.0]]])
    assert torch.allclose(spatial_self_similarity(keys=TARGET_KEYS), expected, atol=1e-6)


def test_temporal_self_similarity_matches_hand_computed_cosines():
    # Frame means (0.5, 0.5) and (1, 0.5): cos = 0.75 / sqrt(0.5 * 1.25) = sqrt(0.9).
    off = math.sqrt(0.9)
    expected = torch.tensor([[1.0, off], [off, 1.0]])
    assert torch.allclose(temporal_self_similarity(keys=TARGET_KEYS), expected, atol=1e-6)


def test_ssm_losses_match_hand_computed_means():
    # Source maps are all ones per frame; squared errors: frame 0 two entries of 1, frame 1 two
    # of (1 - 1/sqrt2)^2; mean over 2 frames x 4 entries.
    spatial_expected = (2.0 + 2.0 * (1.0 - HALF_SQRT2) ** 2) / 8.0
    # Source frame means (1, 0) and (0, 1.5) are orthogonal: two off-diagonal errors of 0.9.
    temporal_expected = 2.0 * 0.9 / 4.0
    spatial = spatial_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[SOURCE_KEYS], frame_chunk=1)
    temporal = temporal_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[SOURCE_KEYS])
    assert spatial.item() == pytest.approx(spatial_expected, abs=1e-6)
    assert temporal.item() == pytest.approx(temporal_expected, abs=1e-6)


def test_sum_reduction_is_eq_12_and_15_by_hand_summed_over_layers():
    # Eq. 12: (1/N) Σ_n ‖SS^n − SŜ^n‖², N = 2 frames: frame 0 differs by 2, frame 1 by 2·(1 − √½)²
    spatial_expected = (2.0 + 2.0 * (1.0 - HALF_SQRT2) ** 2) / 2
    temporal_expected = 2.0 * 0.9  # Eq. 15: ‖TS − TŜ‖² over the 2 x 2 entries
    two = dict(target_keys=[TARGET_KEYS, TARGET_KEYS], source_keys=[SOURCE_KEYS, SOURCE_KEYS], reduction="sum")
    assert spatial_ssm_loss(**two).item() == pytest.approx(2 * spatial_expected, abs=1e-5)
    assert temporal_ssm_loss(**two).item() == pytest.approx(2 * temporal_expected, abs=1e-5)
    with pytest.raises(ValueError):
        spatial_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[SOURCE_KEYS], reduction="max")


def test_dds_surrogate_has_the_dds_gradient():
    generator = torch.Generator().manual_seed(4)
    grad = torch.randn(1, 4, 2, 3, 3, generator=generator)
    latents = torch.randn(1, 4, 2, 3, 3, generator=generator, requires_grad=True)
    (gradient,) = torch.autograd.grad(dds_surrogate(grad=grad, latents=latents), latents)
    assert torch.equal(gradient, grad)


def test_losses_average_over_layers():
    same = [TARGET_KEYS, TARGET_KEYS]
    mixed = [SOURCE_KEYS, TARGET_KEYS]
    single = spatial_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[SOURCE_KEYS])
    assert spatial_ssm_loss(target_keys=same, source_keys=mixed).item() == pytest.approx(single.item() / 2)
    single_t = temporal_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[SOURCE_KEYS])
    assert temporal_ssm_loss(target_keys=same, source_keys=mixed).item() == pytest.approx(single_t.item() / 2)


def test_losses_are_zero_for_equal_keys_and_ignore_key_length():
    keys = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    scaled = keys * torch.rand(3, 16, 1, generator=torch.Generator().manual_seed(1)).add(0.5)
    assert spatial_ssm_loss(target_keys=[scaled], source_keys=[keys]).item() < 1e-10
    assert temporal_ssm_loss(target_keys=[keys * 3.0], source_keys=[keys]).item() < 1e-10


@pytest.mark.parametrize("frame_chunk", [1, 2, 5])
def test_chunked_spatial_loss_and_gradient_equal_the_unchunked_formula(frame_chunk, monkeypatch):
    generator = torch.Generator().manual_seed(2)
    # 6 positions of 12 channels: C >= HW, so the chunked HW x HW path runs (not the Gram form).
    layers_target = [torch.randn(5, 6, 12, generator=generator) for _ in range(2)]
    layers_source = [torch.randn(5, 6, 12, generator=generator) for _ in range(2)]
    leaves = [layer.clone().requires_grad_(True) for layer in layers_target]
    chunk_sizes = []
    real_chunk = losses._spatial_squared_error_sum

    def counted_chunk(target, source):
        chunk_sizes.append(target.shape[0])
        return real_chunk(target, source)

    monkeypatch.setattr(losses, "_spatial_squared_error_sum", counted_chunk)
    chunked = spatial_ssm_loss(target_keys=leaves, source_keys=layers_source, frame_chunk=frame_chunk)
    chunked_grads = torch.autograd.grad(chunked, leaves)
    forward_chunks = [min(frame_chunk, 5 - start) for start in range(0, 5, frame_chunk)]
    assert chunk_sizes[: 2 * len(forward_chunks)] == forward_chunks * 2, "each layer runs chunk by chunk"
    monkeypatch.undo()

    reference_leaves = [layer.clone().requires_grad_(True) for layer in layers_target]
    reference = torch.stack([
        (spatial_self_similarity(keys=t) - spatial_self_similarity(keys=s)).square().mean()
        for t, s in zip(reference_leaves, layers_source)
    ]).mean()
    reference_grads = torch.autograd.grad(reference, reference_leaves)
    assert chunked.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, expected in zip(chunked_grads, reference_grads):
        assert got.abs().max() > 0
        assert torch.allclose(got, expected, atol=1e-7)


def test_mismatched_layers_are_rejected():
    with pytest.raises(ValueError):
        spatial_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[])
    with pytest.raises(ValueError):
        temporal_ssm_loss(target_keys=[TARGET_KEYS], source_keys=[TARGET_KEYS[:1]])


def test_cfg_noise_extrapolates_from_the_null_prediction():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
    assert torch.equal(cfg_noise(uncond=uncond, cond=cond, guidance_scale=3.0), torch.tensor([4.0, -4.0]))


def test_dds_grad_is_the_masked_difference_of_guided_predictions():
    generator = torch.Generator().manual_seed(3)
    tu, tc, su, sc = (torch.randn(1, 4, 2, 3, 3, generator=generator) for _ in range(4))
    mask = torch.zeros(1, 1, 2, 3, 3)
    mask[..., :, 1:] = 1.0
    g = dds_grad(eps_target_uncond=tu, eps_target_cond=tc, eps_source_uncond=su, eps_source_cond=sc,
                 guidance_scale=7.5, mask=mask)
    unmasked = (tu + 7.5 * (tc - tu)) - (su + 7.5 * (sc - su))
    assert torch.allclose(g, unmasked * mask, atol=1e-5)
    assert torch.all(g[..., :, :1] == 0)
    full = dds_grad(eps_target_uncond=tu, eps_target_cond=tc, eps_source_uncond=su, eps_source_cond=sc,
                    guidance_scale=7.5, mask=None)
    assert torch.allclose(full, unmasked, atol=1e-5)
