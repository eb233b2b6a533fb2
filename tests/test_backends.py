"""The backend protocol on the tiny model, its offline build, device and dtype resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmedit.models.backends import load_backend, resolve_device, resolve_dtype
from dmedit.models.backends.text_to_video import load_text_to_video
from dmedit.models.backends.tiny import build_tiny_video_model
from dmedit.core.config import DtypeByDevice, ModelEntry
from dmedit.core.errors import ModelError, UsageError

TINY_KEYS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
CPU = torch.device("cpu")


def tiny_entry(**fields) -> ModelEntry:
    values = dict(name="local", family="text_to_video", width=64, height=64, frames=4, max_frames=8, key_layers=TINY_KEYS)
    values.update(fields)
    return ModelEntry(**values)


def test_tiny_folder_has_the_real_repositories_layout(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert component in index and (tiny_model_dir / component).is_dir()
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tiny_model_dir / "text_encoder" / "model.safetensors").exists()
    assert not list(tiny_model_dir.rglob("*.bin")), "only safetensors weights are written"


def test_protocol_shapes(tiny_backend) -> None:
    frames = torch.rand(3, 3, 64, 64) * 2 - 1
    latents = tiny_backend.encode_video(frames=frames)
    assert latents.shape == (1, 4, 3, 8, 8)
    embeddings = tiny_backend.encode_prompts(prompts=["a man", ""])
    assert embeddings.shape[0] == 2 and embeddings.ndim == 3
    batch = latents.repeat(2, 1, 1, 1, 1)
    timesteps = torch.tensor([10, 900])
    noise = torch.randn_like(batch)
    noisy = tiny_backend.add_noise(latents=batch, noise=noise, timesteps=timesteps)
    assert noisy.shape == batch.shape
    eps = tiny_backend.predict_noise(latents=noisy, timesteps=timesteps, text_embeddings=embeddings)
    assert eps.shape == batch.shape
    decoded = tiny_backend.decode_latents(latents=latents)
    assert decoded.shape == frames.shape and decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_add_noise_follows_the_schedule(tiny_backend) -> None:
    x = torch.ones(2, 4, 1, 2, 2)
    eps = torch.zeros_like(x)
    t = torch.tensor([0, 999])
    noisy = tiny_backend.add_noise(latents=x, noise=eps, timesteps=t)
    alpha_bar = tiny_backend.alphas_cumprod[t]
    assert torch.allclose(noisy[:, 0, 0, 0, 0], alpha_bar.sqrt())
    assert noisy[0].mean() > 0.99 and noisy[1].mean() < 0.1, "t=0 keeps the signal, t=999 nearly destroys it"


def test_latents_are_the_posterior_mode_scaled(tiny_backend) -> None:
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    first = tiny_backend.encode_video(frames=frames)
    second = tiny_backend.encode_video(frames=frames)
    assert torch.equal(first, second), "distribution mode, not a sample"
    posterior = tiny_backend.vae.encode(frames).latent_dist.mode()
    expected = posterior.permute(1, 0, 2, 3).unsqueeze(0) * tiny_backend.vae.config.scaling_factor
    assert torch.allclose(first, expected, atol=1e-6)


def test_build_is_deterministic_and_loads_identically(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        build_tiny_video_model(path=tmp_path / name)
        backend = load_text_to_video(folder=tmp_path / name, device=CPU, dtype=torch.float32,
                                     vae_dtype=torch.float32, vae_chunk=8)
        torch.manual_seed(3)
        latents = torch.randn(1, 4, 2, 8, 8)
        embeddings = backend.encode_prompts(prompts=["a red car"])
        outputs.append(backend.predict_noise(latents=latents, timesteps=torch.tensor([500]), text_embeddings=embeddings))
    assert torch.equal(outputs[0], outputs[1])


def test_an_entry_with_a_path_loads_through_the_registry_path(tiny_model_dir: Path) -> None:
    backend = load_backend(entry=tiny_entry(path=str(tiny_model_dir)), folder=tiny_model_dir, device=torch.device("cpu"),
                           dtype=torch.float32, vae_chunk=8)
    assert backend.encode_video(frames=torch.zeros(1, 3, 64, 64)).shape == (1, 4, 1, 8, 8)
    assert not any(p.requires_grad for p in backend.unet.parameters())


def test_a_folder_without_the_layout_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelError, match="missing"):
        load_text_to_video(folder=tmp_path, device=CPU, dtype=torch.float32, vae_dtype=torch.float32, vae_chunk=8)


def test_corrupt_weights_are_a_model_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot load"):
        load_text_to_video(folder=broken, device=CPU, dtype=torch.float32, vae_dtype=torch.float32, vae_chunk=8)


def test_device_resolution_on_a_cpu_machine() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator; auto would not pick the CPU")
    assert resolve_device(name="auto") == torch.device("cpu")
    assert resolve_device(name="cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device(name="cuda:0")
    with pytest.raises(UsageError, match="not a device"):
        resolve_device(name="gpu7")


def test_dtype_resolution_follows_the_entry_per_device() -> None:
    entry = tiny_entry(dtype=DtypeByDevice(cuda="bf16", mps="fp16", cpu="fp32"))
    assert resolve_dtype(name="auto", device=torch.device("cpu"), entry=entry) == torch.float32
    assert resolve_dtype(name="auto", device=torch.device("cuda"), entry=entry) == torch.bfloat16
    assert resolve_dtype(name="fp16", device=torch.device("cuda"), entry=entry) == torch.float16
    assert resolve_dtype(name="bf16", device=torch.device("cpu"), entry=entry) == torch.bfloat16
    with pytest.raises(UsageError):
        resolve_dtype(name="fp16", device=torch.device("cpu"), entry=entry)
    with pytest.raises(UsageError):
        resolve_dtype(name="int8", device=torch.device("cpu"), entry=entry)


def _record_moves(module: torch.nn.Module, moves: list) -> None:
    """Record every `module.to(...)` call (its first argument) in `moves`."""
    original = module.to

    def recording_to(*args, **kwargs):
        moves.append(str(args[0]) if args else str(kwargs.get("device")))
        return original(*args, **kwargs)

    module.to = recording_to


def test_offload_and_vae_chunks_change_nothing_but_where_modules_wait(tiny_model_dir: Path) -> None:
    common = dict(folder=tiny_model_dir, device=CPU, dtype=torch.float32, vae_dtype=torch.float32)
    plain = load_text_to_video(vae_chunk=8, **common)
    lean = load_text_to_video(vae_chunk=1, offload=True, **common)
    moves = {name: [] for name in ("plain_vae", "plain_text", "lean_vae", "lean_text")}
    for backend, label in ((plain, "plain"), (lean, "lean")):
        _record_moves(backend.vae, moves[f"{label}_vae"])
        _record_moves(backend.text_encoder, moves[f"{label}_text"])
    frames = torch.rand(3, 3, 64, 64) * 2 - 1
    latents = plain.encode_video(frames=frames)
    assert torch.allclose(lean.encode_video(frames=frames), latents, atol=1e-5)
    # A batch of 1 and of 8 take different conv kernels: float32 rounding (1.5e-5 seen on AVX-512), not a wrong frame.
    assert torch.allclose(lean.decode_latents(latents=latents), plain.decode_latents(latents=latents), atol=1e-4)
    assert torch.equal(lean.encode_prompts(prompts=["a dog"]), plain.encode_prompts(prompts=["a dog"]))
    assert moves["plain_vae"] == [] and moves["plain_text"] == [], "without offload nothing moves"
    assert moves["lean_vae"] == ["cpu", "cpu"] * 2, "the VAE goes to the device for each use and back"
    assert moves["lean_text"] == ["cpu", "cpu"]
