"""Measurements of one live configuration: interleaved step/bare timings, FLOPs, peak memory.

Timings alternate (step, bare, step, bare, ...) so that load from other processes hits both
alike; each figure is the median of the repeats with its quartiles and extremes as the spread.
Memory and FLOPs are measured on untimed calls first, which also serve as warm-up. Peak memory:
on CUDA torch.cuda.max_memory_allocated; on the CPU the peak of live tensor storages created
during the call (a dispatch-mode tracker, the CPU analogue of max_memory_allocated) and the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs), which the allocator's
reuse of freed pages makes coarse.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from bench.setups import LiveConfig

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def spread(*, samples: list[float]) -> dict[str, float]:
    """median, quartiles, extremes and count of `samples`."""
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return dict(median=statistics.median(ordered), p25=quartiles[0], p75=quartiles[2],
                min=ordered[0], max=ordered[-1], n=len(ordered))


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved_times(
    *, step: Callable[[], object], bare: Callable[[], object], warmup: int, repeats: int,
    sync: Callable[[], None],
) -> tuple[list[float], list[float]]:
    """Run `warmup` untimed then `repeats` timed (step, bare) pairs; seconds of each call."""
    for _ in range(warmup):
        step()
        bare()
    step_times, bare_times = [], []
    for _ in range(repeats):
        step_times.append(_timed(step, sync))
        bare_times.append(_timed(bare, sync))
    return step_times, bare_times


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as PyTorch's FlopCounterMode counts them (matmuls, convs, SDPA)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


class TensorMemoryTracker(TorchDispatchMode):
    """Bytes of the tensor storages that ops create inside the mode while they are alive, and
    their peak. Storages an op receives that were not created inside (weights, inputs) are
    never counted, also when an op returns a view of them or writes into them."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._created: weakref.WeakSet = weakref.WeakSet()
        self._external: weakref.WeakSet = weakref.WeakSet()

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor) and leaf.untyped_storage() not in self._created:
                self._external.add(leaf.untyped_storage())
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if not isinstance(leaf, torch.Tensor):
                continue
            storage = leaf.untyped_storage()
            if storage in self._created or storage in self._external:
                continue
            self._created.add(storage)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._release, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict[str, float | str]:
    """Peak memory of one call of `fn`: bytes at the peak and above the level before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return dict(kind="cuda max_memory_allocated", peak_bytes=peak, above_start_bytes=peak - before)
    try:
        PROC_CLEAR_REFS.write_text("5")
        before = _status_kib("VmRSS") * 1024
    except OSError:
        before = math.nan
    with TensorMemoryTracker() as tracker:
        fn()
    peak = _status_kib("VmHWM") * 1024
    return dict(kind="cpu tensor storages (dispatch tracker); peak RSS", above_start_bytes=tracker.peak,
                peak_bytes=peak, rss_above_start_bytes=peak - before)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def measure(*, live: LiveConfig, device: torch.device, peak_tflops: float | None) -> dict:
    """Every figure of one configuration as a JSON-ready dict."""
    config, session = live.config, live.session
    sync = synchronizer(device)
    state = live.fresh_state()
    load_before = load_average()
    first_step_s = _timed(lambda: live.step(state), sync)  # compiles, when the configuration compiles
    bare_first_s = _timed(live.bare, sync)
    # The CPU's storage tracker is a dispatch mode, which compiled code cannot run under: there a
    # compiled configuration's memory is its eager twin's (the same tensors before fusion).
    tracker_stance = "force_eager" if device.type != "cuda" else "default"
    with torch.compiler.set_stance(tracker_stance):
        step_memory = peak_memory(lambda: live.step(state), device)
        bare_memory = peak_memory(live.bare, device)
    with torch.compiler.set_stance("force_eager"):  # the same math, counted op by op
        step_flops = count_flops(lambda: live.step(state))
        bare_flops = count_flops(live.bare)
    step_times, bare_times = interleaved_times(
        step=lambda: live.step(state), bare=live.bare, warmup=config.warmup,
        repeats=config.repeats, sync=sync)
    ratios = [step / bare for step, bare in zip(step_times, bare_times)]
    step_median = statistics.median(step_times)
    scale = getattr(session.backend, "latent_scale", 8)  # pixels per latent cell (1: pixel-space Show-1)
    record = dict(
        name=config.name, series=config.series, model=config.model, width=config.width,
        height=config.height, latent=[config.width // scale, config.height // scale], frames=config.frames,
        dtype=config.dtype, autocast=config.autocast, checkpointing=config.checkpointing, window=config.window,
        compile=config.compile or "eager", first_step_s=first_step_s, bare_first_s=bare_first_s,
        key_layers=list(session.key_layers),
        attention_processors=sorted({type(m.processor).__name__ for m in session.backend.unet.modules()
                                     if hasattr(m, "get_processor")}),
        warmup=config.warmup, repeats=config.repeats,
        step_s=spread(samples=step_times), bare_s=spread(samples=bare_times),
        overhead_ratio=spread(samples=ratios),
        overhead_ratio_of_medians=step_median / statistics.median(bare_times),
        steps_per_s=1.0 / step_median,
        step_flops=step_flops, bare_flops=bare_flops,
        bare_unet_frames=dict(no_grad=live.bare_no_grad_frames, grad=live.bare_grad_frames),
        achieved_tflops=step_flops / step_median / 1e12,
        step_memory=step_memory, bare_memory=bare_memory,
        load_average=dict(before=load_before, after=load_average()),
    )
    if peak_tflops:
        record["fraction_of_peak"] = record["achieved_tflops"] / peak_tflops
    if config.wall_steps:
        record["wall"] = wall_time(live=live, steps=config.wall_steps, sync=sync)
        record["wall"]["seconds_per_200_steps"] = record["wall"]["seconds"] / config.wall_steps * 200
    return record


def wall_time(*, live: LiveConfig, steps: int, sync: Callable[[], None]) -> dict[str, float]:
    """Seconds for `steps` consecutive steps from a fresh state (the optimisation loop's wall time)."""
    state = live.fresh_state()
    seconds = _timed(lambda: [live.step(state) for _ in range(steps)], sync)
    return dict(steps=steps, seconds=seconds)
