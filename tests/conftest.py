"""Session set-up: a hermetic cache and offline hub for every test (and the CLI subprocesses they
start), the tiny backend built once, and generated clips."""

from __future__ import annotations

import os

# Before torch loads libgomp (and inherited by the CLI processes the tests start): the suite runs
# beside other busy processes, where passive waiting keeps its time predictable. dmedit's own
# default (threads.py: a short spin, GOMP_SPINCOUNT=1000) steps aside for a value set here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import warm_dmedit  # noqa: E402
from clips import make_clip  # noqa: E402

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "clips" / "carphone.mp4"


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory: pytest.TempPathFactory):
    """DMEDIT_CACHE and the hub cache point at session folders; the hub is offline."""
    root = tmp_path_factory.mktemp("env")
    saved = dict(os.environ)
    os.environ.update(
        DMEDIT_CACHE=str(root / "dmedit-cache"),
        HF_HOME=str(root / "hf-home"),
        HF_HUB_CACHE=str(root / "hf-home" / "hub"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        XDG_CONFIG_HOME=str(root / "config"),
        # Importing torch._dynamo sets it to /tmp/torchinductor_USER otherwise, after this snapshot.
        TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"),
    )
    os.environ.pop("DMEDIT_MODELS", None)
    warm_dmedit.SESSION_ENVIRONMENT.update(os.environ)
    yield root
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(hermetic_environment: Path) -> Path:
    """The registry's `tiny` entry, built (once per session) where the CLI will find it too."""
    from dmedit.models.hub import resolve_weights
    from dmedit.models.registry import load_registry

    return resolve_weights(entry=load_registry().model("tiny"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    """The tiny text-to-video model on the CPU in fp32 (64x64 frames -> 8x8 latents)."""
    from dmedit.models.backends.text_to_video import load_text_to_video
    from dmedit.runs.settings import ModelSettings

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return load_text_to_video(folder=tiny_model_dir, device=torch.device("cpu"), dtype=torch.float32,
                              vae_dtype=torch.float32, vae_chunk=ModelSettings.vae_chunk)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def ntsc_clip(clip_dir: Path) -> Path:
    """24 frames, 96x64, 29.97 fps, no audio."""
    return make_clip(clip_dir / "ntsc.mp4", width=96, height=64, frames=24, fps=Fraction(30000, 1001))


@pytest.fixture(scope="session")
def audio_clip(clip_dir: Path) -> Path:
    """24 frames, 96x64, 25 fps, with an AAC tone."""
    return make_clip(clip_dir / "audio.mp4", width=96, height=64, frames=24, fps=Fraction(25), audio=True)


@pytest.fixture(scope="session")
def real_clip() -> Path:
    if not SHARED_CLIP.exists():
        pytest.skip(f"{SHARED_CLIP} is absent")
    return SHARED_CLIP
