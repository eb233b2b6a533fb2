"""torch.compile of the U-Net for one run: the choice, the persistent caches and the counters.

The U-Net module itself is compiled in place (`nn.Module.compile`), so its identity, its weights
and the key hooks that hooks.unet_hooks registered once per run stay as they are; the
compiled forward is dropped again when the run ends. Timesteps are tensors and shapes are fixed
within a run, so a run traces two graphs (the step's no-grad call and its grad call) and never
recompiles; `compile_counters` reads torch._dynamo's graph count to show it.

Modes: "default" (inductor kernels), "reduce-overhead" (inductor kernels replayed as CUDA graphs;
CUDA only), "max-autotune-no-cudagraphs". Inductor's FX-graph and AOT-autograd caches live under
dmedit's cache folder (<cache>/inductor, or $TORCHINDUCTOR_CACHE_DIR when set), so a second run of
the same model and shape loads the compiled kernels instead of compiling again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, get_args

import torch

from dmedit.core.config import CompileMode
from dmedit.core.errors import UsageError

MODES: tuple[str, ...] = get_args(CompileMode)
CUDA_ONLY_MODES = ("reduce-overhead",)
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class CompileChoice:
    """Whether and how the run compiles its U-Net, and why (written to the run report)."""

    enabled: bool
    mode: str
    backend: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "mode": self.mode if self.enabled else None,
                "backend": self.backend if self.enabled else None, "reason": self.reason}


def choose_compile(*, requested: bool | None, mode: str, device: torch.device) -> CompileChoice:
    """requested None (auto) compiles on CUDA only: on the CPU, inductor's first compile of a
    U-Net step takes minutes, longer than the steps it would save on a short run."""
    if mode not in MODES:
        raise UsageError(f"--compile-mode {mode!r}: use one of {', '.join(MODES)}")
    if mode in CUDA_ONLY_MODES and device.type != "cuda" and requested:
        raise UsageError(f"--compile-mode {mode} replays CUDA graphs and needs a CUDA device, not {device.type}")
    if requested is None:
        enabled = device.type == "cuda"
        reason = "auto: on for CUDA" if enabled else f"auto: off on {device.type} (compiling costs minutes there)"
    else:
        enabled, reason = requested, "--compile" if requested else "--no-compile"
    return CompileChoice(enabled=enabled, mode=mode, backend="inductor", reason=reason)


def use_cache_folder(*, folder: Path) -> Path:
    """Point inductor's on-disk caches at `folder` unless the user chose one with $TORCHINDUCTOR_CACHE_DIR."""
    chosen = Path(os.environ.setdefault(CACHE_ENV, str(folder)))
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@contextlib.contextmanager
def compiled_unet(*, unet: torch.nn.Module, choice: CompileChoice) -> Iterator[torch.nn.Module]:
    """While active, calls of `unet` run its compiled forward (fullgraph: a graph break is an
    error, not a silent slowdown). Restored to eager on exit, also after an exception."""
    if not choice.enabled:
        yield unet
        return
    unet.compile(backend=choice.backend, mode=None if choice.mode == "default" else choice.mode,
                 fullgraph=True, dynamic=False)
    try:
        yield unet
    finally:
        unet._compiled_call_impl = None


def step_begins(*, choice: CompileChoice | None) -> None:
    """Tell CUDA-graph trees that a new step starts (the previous step's outputs may be overwritten)."""
    if choice is not None and choice.enabled and choice.mode in CUDA_ONLY_MODES:
        torch.compiler.cudagraph_mark_step_begin()


def compile_counters() -> dict[str, int]:
    """Graphs torch._dynamo traced so far in this process (a run traces 2; a recompile adds one)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0))}
