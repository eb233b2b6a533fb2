"""torch.compile of the U-Net for one run: the choice, the persistent caches and the counters.

The U-Net module itself is compiled in place (`nn.Module.compile`), so its identity, its weights
and the key hooks that hooks.unet_hooks registered once per run stay as they are; the
compiled forward is dropped again when the run ends. Timesteps are tensors and shapes are fixed
within a run, so a run traces two graphs (the step's no-grad call and its grad call) and never
recompiles; `compile_counters` reads torch._dynamo's graph count to show it. Compiling is off
unless asked (`choose_compile`), and a failure of dynamo, inductor or triton on the first step
sends the run back to eager (`compile_failure`, `drop_compiled`, editor's first step), except a
cache that cannot be written for want of space, which is a system error (`cache_write_failure`).

Modes: "default" (inductor kernels), "reduce-overhead" (inductor kernels replayed as CUDA graphs;
CUDA only), "max-autotune-no-cudagraphs". Inductor's FX-graph and AOT-autograd caches live under
dmedit's cache folder (<cache>/inductor, or $TORCHINDUCTOR_CACHE_DIR when set), so a second run of
the same model and shape loads the compiled kernels instead of compiling again.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, get_args

import torch

from dmedit.core.config import CompileMode
from dmedit.core.errors import UsageError
from dmedit.core.disk import space_error
from dmedit.core.files import write_error

MODES: tuple[str, ...] = get_args(CompileMode)
COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "triton")
"""Where compiling (tracing, lowering, kernel generation) and running compiled code happen."""
COMPILER_FOLDERS = tuple(f"{os.sep}{name.replace('.', os.sep)}{os.sep}" for name in COMPILER_MODULES)
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
    """requested None (auto) runs eager on every device until committed GPU figures show that
    compiling pays over a whole `dmedit run --frames 8 --steps 200`, cold compile included
    (BENCHMARKS.md, "torch.compile"): on the CPU the cold compile of ZeroScope's U-Net took 532 s and
    the compiled step was slower than eager, and on a GPU it has not been measured yet."""
    if mode not in MODES:
        raise UsageError(f"--compile-mode {mode!r}: use one of {', '.join(MODES)}")
    if mode in CUDA_ONLY_MODES and device.type != "cuda" and requested:
        raise UsageError(f"--compile-mode {mode} replays CUDA graphs and needs a CUDA device, not {device.type}")
    if requested is None:
        enabled, reason = False, "auto: eager until GPU figures show compiling pays (BENCHMARKS.md)"
    else:
        enabled, reason = requested, "--compile" if requested else "--no-compile"
    return CompileChoice(enabled=enabled, mode=mode, backend="inductor", reason=reason)


def use_cache_folder(*, folder: Path) -> Path:
    """Point inductor's on-disk caches at `folder` unless the user chose one with $TORCHINDUCTOR_CACHE_DIR.
    Importing torch._dynamo already sets the variable to inductor's default (/tmp/torchinductor_USER),
    so that value counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(CACHE_ENV)
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ[CACHE_ENV] = str(folder)
    chosen = Path(os.environ[CACHE_ENV])
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
        drop_compiled(unet=unet)


def compile_failure(error: BaseException) -> str | None:
    """One line naming `error` when it, or an error it was raised from, comes from dynamo, inductor,
    AOT autograd or triton (its class is theirs, or it was raised in their code); None otherwise,
    and always None for out of memory, which an eager U-Net would not escape."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return None
    seen: BaseException | None = error
    while seen is not None:
        raised_in = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(seen.__traceback__)]
        if type(seen).__module__.startswith(COMPILER_MODULES) or any(
                folder in filename for filename in raised_in for folder in COMPILER_FOLDERS):
            root = error
            while root.__cause__ is not None:
                root = root.__cause__
            named = _first_line(error) if root is error else f"{_first_line(error)} {_first_line(root)}"
            return named[:300]
        seen = seen.__cause__ or seen.__context__
    return None


def cache_write_failure(error: BaseException) -> OSError | None:
    """A compile that failed because inductor could not write its cache or kernels for want of
    space (core.disk.OUT_OF_SPACE_ERRNOS) as an OSError naming the file (or, when the error names
    none, the cache folder) and `--no-compile`: a full disk is a system error, not a reason to run
    eager. None when no such OSError caused `error`."""
    full = space_error(error=error)
    if full is None:
        return None
    named = write_error(error=full, path=Path(full.filename or os.environ.get(CACHE_ENV) or "inductor cache"))
    return OSError(named.errno, f"cannot write inductor's compile cache ({named.strerror}); "
                   "--no-compile runs without it", named.filename)


def remove_partial_cache_files() -> None:
    """Inductor's temporary files of this process in its cache folder (`.PID.THREAD.tmp`, renamed
    over a cache entry when written; left behind when a write failed)."""
    folder = os.environ.get(CACHE_ENV)
    if folder and Path(folder).is_dir():
        for partial in Path(folder).rglob(f".{os.getpid()}.*.tmp"):
            partial.unlink(missing_ok=True)


def _first_line(error: BaseException) -> str:
    """The error's name and its first line (and the next, when the first ends in a colon)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    shown = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{type(error).__name__}: {shown}"


def drop_compiled(*, unet: torch.nn.Module) -> None:
    """Calls of `unet` run its eager forward again (what `compiled_unet` does on exit)."""
    unet._compiled_call_impl = None


def step_begins(*, choice: CompileChoice | None) -> None:
    """Tell CUDA-graph trees that a new step starts (the previous step's outputs may be overwritten)."""
    if choice is not None and choice.enabled and choice.mode in CUDA_ONLY_MODES:
        torch.compiler.cudagraph_mark_step_begin()


def compile_counters() -> dict[str, int]:
    """Graphs torch._dynamo traced so far in this process (a run traces 2; a recompile adds one)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0))}
