"""`python -m bench.run [--quick] [--label NAME] [--only TEXT] [--set cpu|gpu] [--small] [--end-to-end]`:
measure, write JSON (rewritten after every configuration), regenerate BENCHMARKS.md.

CPU set: the tiny model at its native 64x64 (8x8 latents) over 4, 8, 16 and 24 frames and compiled
(inductor) at 8, ZeroScope's U-Net architecture at a small size (2 frames, 8x8 latents) eager and
compiled, the tiny model at 256x256 (32x32 latents) over 4, 8 and 16 frames, whole clips of 32 to
128 frames in windows, then ZeroScope's architecture with each other speed lever; a meta-device
estimate of ZeroScope's U-Net memory at 576x320 (bench.memory_model). GPU set (`make
bench-gpu`): ZeroScope's architecture at 576x320 in fp16 at 8, 16 and 48 frames, eager, compiled
and graphed, and Show-1's keyframe U-Net; `--small` runs it at 64x64 on a CPU; `--end-to-end` adds
one `dmedit run --model zeroscope-random` with its stage times (bench.end_to_end).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from dmedit.core.threads import available_cpus, configure_threads

configure_threads()  # before torch loads its OpenMP runtime: the benchmark measures dmedit's own defaults
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging

from bench import memory_model, report
from bench.measure import load_average, measure
from bench.setups import BackendCache, BenchConfig, prepare_live
from dmedit.engine.compilation import CACHE_ENV, use_cache_folder
from dmedit.core.errors import ModelError, OutOfMemoryError
from dmedit.models.hub import cache_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
MARKDOWN = ROOT / "BENCHMARKS.md"
SCALING_FRAMES = (4, 8, 16, 24)
WINDOWED_FRAMES = (32, 64, 128, 256)  # whole clips in windows of 16 frames (issue 12)
GPU_FRAMES = (8, 16, 48)
COMPILE_MODES = (None, "default", "reduce-overhead")  # eager, compiled, graphed
# Dense fp16/bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s (no sparsity).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                   "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}
# No configuration starts after this many seconds: `make bench` must finish within 10 minutes on
# a 2-core CPU, `make bench-gpu` (this set and one end-to-end run) within 8 minutes on one GPU.
BUDGET_S = {"cpu": 480.0, "cuda": 300.0}
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
UP_BLOCK_1_KEYS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
log = logging.getLogger("bench")


def cpu_configs(*, quick: bool) -> list[BenchConfig]:
    """The tiny model's scaling series, each U-Net eager and compiled, the small ZeroScope-architecture
    checks, then the 256x256 series and whole clips in windows; essential ones first, as the budget
    skips the rest. A compiled configuration's first step compiles: minutes on a cold inductor
    cache (the first `make bench` on a machine), seconds on a warm one."""
    native_frames = (4, 8) if quick else SCALING_FRAMES
    configs = [BenchConfig(name=f"tiny-64-f{frames}", series="tiny-64", model="tiny", width=64, height=64,
                           frames=frames, repeats=5 if quick else 15, warmup=2) for frames in native_frames]
    configs.append(BenchConfig(name="tiny-64-f8-compiled", series="tiny-64-compiled", model="tiny", width=64,
                               height=64, frames=8, compile="default", repeats=5 if quick else 15, warmup=2))
    small = dict(series="zeroscope-arch-small", model="zeroscope-arch", width=64, height=64, frames=2,
                 repeats=1, warmup=0)
    configs.append(BenchConfig(name="zeroscope-arch-small", wall_steps=2, **{**small, "repeats": 1 if quick else 2}))
    configs.append(BenchConfig(name="zeroscope-arch-small-compiled", compile="default", wall_steps=2,
                               **{**small, "series": "zeroscope-arch-small-compiled", "repeats": 1 if quick else 2}))
    for frames in (4,) if quick else SCALING_FRAMES[:3]:
        configs.append(BenchConfig(name=f"tiny-256-f{frames}", series="tiny-256", model="tiny", width=256,
                                   height=256, frames=frames, repeats=2 if quick else 4, warmup=0))
    for frames in (32, 64) if quick else WINDOWED_FRAMES[:3]:
        configs.append(BenchConfig(name=f"tiny-64-window16-f{frames}", series="tiny-64-window16", model="tiny",
                                   width=64, height=64, frames=frames, window=16, repeats=2 if quick else 5,
                                   warmup=1))
    if not quick:
        configs += [
            BenchConfig(name="zeroscope-arch-small-block-checkpointed", checkpointing="block", **small),
            BenchConfig(name="zeroscope-arch-small-layer-checkpointed", checkpointing="layer", **small),
            BenchConfig(name="zeroscope-arch-small-up1-keys", key_layers=UP_BLOCK_1_KEYS, **small),
            BenchConfig(name="zeroscope-arch-small-fp32-autocast-bf16", autocast="bf16", **small),
            BenchConfig(name="zeroscope-arch-small-bf16", **{**small, "dtype": "bf16"}),
        ]
    return configs


def gpu_configs(*, quick: bool, small: bool = False) -> list[BenchConfig]:
    """ZeroScope's architecture at 576x320 in fp16 at 8, 16 and 48 frames, each eager, compiled
    (inductor) and graphed (inductor replayed as CUDA graphs), essential ones first (the budget
    skips the rest); wall time of 50 steps, extrapolated to the 200 of a run; then Show-1's keyframe
    U-Net. small: the same list at 64x64 and 2 frames in fp32, so that it runs on a CPU (graphed
    ones are skipped there with their reason)."""
    size = dict(width=64, height=64) if small else dict(width=576, height=320)
    dtype = "fp32" if small else "fp16"
    configs = []
    for frames in (2,) if small else (8,) if quick else GPU_FRAMES:
        for mode in COMPILE_MODES:
            label = mode or "eager"
            configs.append(BenchConfig(
                name=f"zeroscope-arch-{dtype}-f{frames}-{label}", series=f"zeroscope-arch-{dtype}-{label}",
                model="zeroscope-arch", frames=frames, dtype=dtype, compile=mode,
                repeats=3 if quick or small else 5, warmup=1, wall_steps=0 if quick or small else 50 if frames < 48 else 20,
                **size))
    # DreamMotion's Show-1 setup: the keyframe U-Net, 8 keyframes at the paper's 80x128 (pixel space).
    configs.append(BenchConfig(name=f"show1-keyframes-arch-{dtype}-f{2 if small else 8}",
                               series="show1-keyframes-arch",
                               model="show1-keyframes-arch", width=64 if small else 128, height=64 if small else 80,
                               frames=2 if small else 8, dtype=dtype, repeats=3, warmup=1,
                               wall_steps=0 if quick or small else 50))
    return configs


def _cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def machine_info(*, device: torch.device) -> dict:
    """Hardware and software of this run; `slug` names the results file."""
    import diffusers
    import transformers

    info = dict(cpu=_cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                thread_environment={name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
                platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                diffusers=diffusers.__version__, transformers=transformers.__version__,
                commit=report.git_commit(root=ROOT))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((value for key, value in GPU_PEAK_TFLOPS.items() if key in name), None)
        info.update(device=name, gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory,
                    peak_tflops=peak, slug=re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    else:
        info.update(device="cpu", peak_tflops=None, slug=f"cpu-{os.cpu_count()}c")
    return info


def fit_exponent(*, frames: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(frames)."""
    xs, ys = [math.log(f) for f in frames], [math.log(s) for s in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return covariance / sum((x - mean_x) ** 2 for x in xs)


def scaling(*, records: list[dict]) -> dict[str, dict]:
    """Per series with 3+ frame counts: the fitted exponents of step and bare time vs frames."""
    fits = {}
    for series in dict.fromkeys(r["series"] for r in records if "step_s" in r):
        rows = sorted((r for r in records if r["series"] == series and "step_s" in r), key=lambda r: r["frames"])
        frames = [r["frames"] for r in rows]
        if len(set(frames)) < 3:
            continue
        fits[series] = dict(
            frames=frames,
            step_exponent=fit_exponent(frames=frames, seconds=[r["step_s"]["median"] for r in rows]),
            bare_exponent=fit_exponent(frames=frames, seconds=[r["bare_s"]["median"] for r in rows]))
    return fits


def run_configs(
    *, configs: list[BenchConfig], device: torch.device, peak_tflops: float | None, deadline: float,
    on_record: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Measure each configuration in order; once time.perf_counter() passes `deadline` the rest are
    recorded as skipped (the list puts the essential configurations first). on_record(records so
    far) runs after each one (the results file is rewritten, so a run cut short keeps its figures)."""
    records = []
    with contextlib.ExitStack() as stack:
        backends = BackendCache(device=device, stack=stack)
        for config in configs:
            started = time.perf_counter()
            skip = ("the run's time budget was spent" if started > deadline else
                    "CUDA graphs need a CUDA device" if config.compile == "reduce-overhead" and device.type != "cuda"
                    else None)
            if skip:
                records.append(dict(name=config.name, series=config.series, frames=config.frames,
                                    error=f"skipped: {skip}"))
                log.info("%s: skipped (%s)", config.name, skip)
                continue
            live = None
            try:
                live = prepare_live(config=config, backends=backends)
                record = measure(live=live, device=device, peak_tflops=peak_tflops)
            except (torch.OutOfMemoryError, OutOfMemoryError) as error:
                record = dict(name=config.name, series=config.series, frames=config.frames,
                              error=f"out of memory: {str(error).splitlines()[0]}")
            except ModelError as error:
                record = dict(name=config.name, series=config.series, frames=config.frames, error=str(error))
            except RuntimeError as error:  # e.g. a compiler failure: recorded, and the next configuration runs
                record = dict(name=config.name, series=config.series, frames=config.frames,
                              error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            if live is not None:
                live.close()
            live = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            record["seconds_spent"] = time.perf_counter() - started
            log.info("%s: %s", config.name, _summary(record))
            records.append(record)
            if on_record is not None:
                on_record(records)
    return records


def _summary(record: dict) -> str:
    if "error" in record:
        return record["error"]
    return (f"step {record['step_s']['median']:.4f} s, bare {record['bare_s']['median']:.4f} s, "
            f"overhead {record['overhead_ratio']['median']:.3f} ({record['seconds_spent']:.0f} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke subset (about a minute)")
    parser.add_argument("--label", default=None, help="suffix of the results file (default: quick or none)")
    parser.add_argument("--only", default=None, help="run only configurations whose name contains this")
    parser.add_argument("--skip", action="append", default=[], help="leave out configurations whose name contains this")
    parser.add_argument("--set", choices=("auto", "cpu", "gpu"), default="auto",
                        help="the configuration set (auto: gpu on CUDA, else cpu)")
    parser.add_argument("--small", action="store_true",
                        help="the gpu set at 64x64, 2 frames, fp32: runs on a CPU (to check it)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="then one `dmedit run --model zeroscope-random --frames 8 --steps 200` (bench.end_to_end)")
    parser.add_argument("--end-to-end-args", default="", help="extra arguments of that run, e.g. '--steps 2 --model tiny'")
    parser.add_argument("--end-to-end-compiled", action="store_true",
                        help="then the same run with --compile on a cold inductor cache (is compiling worth it?)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no configuration after this many seconds (default {BUDGET_S})")
    parser.add_argument("--end-to-end-timeout-s", type=float, default=240.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    return parser.parse_args(argv)


def _cold_compiled_run(*, args: argparse.Namespace) -> dict:
    """The end-to-end run with --compile, its inductor cache empty: what a user's first run pays."""
    from bench.end_to_end import run_end_to_end

    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as folder:
        saved = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = folder
        try:
            record = run_end_to_end(model="zeroscope-random", frames=8, steps=200, clip=None,
                                    timeout_s=args.end_to_end_timeout_s,
                                    extra=[*args.end_to_end_args.split(), "--compile"])
        finally:
            if saved is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = saved
    log.info("end to end, compiled on a cold cache: %s", record.get("error") or record["timings_s"])
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(available_cpus())
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    use_cache_folder(folder=cache_dir() / "inductor")  # compiled kernels persist as in `dmedit run`
    info = machine_info(device=device)
    gpu_set = args.set == "gpu" or (args.set == "auto" and device.type == "cuda")
    configs = gpu_configs(quick=args.quick, small=args.small) if gpu_set else cpu_configs(quick=args.quick)
    if args.only:
        configs = [c for c in configs if args.only in c.name]
    configs = [c for c in configs if not any(text in c.name for text in args.skip)]
    started = time.perf_counter()
    label = args.label or ("quick" if args.quick else None)
    now = datetime.datetime.now(datetime.timezone.utc)
    stem = "-".join(part for part in (info["slug"], now.strftime("%Y-%m-%d"), label) if part)
    path = args.results_dir / f"{stem}.json"
    result = dict(machine=info, label=label, quick=args.quick, only=args.only, date=now.isoformat(timespec="seconds"),
                  command="python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
                  seconds=0.0, load_average=dict(before=load_average(), after=None), configs=[], scaling={},
                  memory_model=None)

    def save(records: list[dict]) -> None:
        result.update(configs=records, scaling=scaling(records=records), seconds=time.perf_counter() - started,
                      load_average=result["load_average"] | dict(after=load_average()))
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n", encoding="utf-8")

    budget = args.budget_s or BUDGET_S["cuda" if gpu_set else "cpu"]
    records = run_configs(configs=configs, device=device, peak_tflops=info["peak_tflops"],
                          deadline=started + budget, on_record=save)
    if not args.only and not gpu_set:
        result["memory_model"] = memory_model.estimate(frames=(16,) if args.quick else GPU_FRAMES)
    if args.end_to_end:
        from bench.end_to_end import run_end_to_end

        result["end_to_end"] = run_end_to_end(model="zeroscope-random", frames=8, steps=200, clip=None,
                                              timeout_s=args.end_to_end_timeout_s, extra=args.end_to_end_args.split())
        log.info("end to end: %s", result["end_to_end"].get("error") or result["end_to_end"]["timings_s"])
        if args.end_to_end_compiled:
            result["end_to_end_compiled"] = _cold_compiled_run(args=args)
    save(records)
    report.write_markdown(results_dir=args.results_dir, path=args.markdown)
    log.info("wrote %s and %s in %.0f s", path, args.markdown, result["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
