"""`python -m bench.run [--quick] [--label NAME] [--only TEXT]`: measure, write JSON, regenerate
BENCHMARKS.md.

CPU: the tiny model at its native 64x64 (8x8 latents) and at 256x256 (32x32 latents) over 4, 8,
16 and 24 frames, and ZeroScope's U-Net architecture at a small size (2 frames, 8x8 latents) with
each speed lever, so that the GPU code path is known to work. CUDA (when present): ZeroScope's
architecture at 576x320 (72x40 latents) with 8, 16, 24 and 48 frames in fp16 and bf16, the wall
time of 200 steps at 8 and 16 frames, and the levers. Both: a meta-device estimate of ZeroScope's
U-Net memory at 576x320 (bench.memory_model).
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
import time
from pathlib import Path

from dmedit.threads import available_cpus, configure_threads

configure_threads()  # before torch loads its OpenMP runtime: the benchmark measures dmedit's own defaults
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging

from bench import memory_model, report
from bench.measure import load_average, measure
from bench.setups import BackendCache, BenchConfig, prepare_live
from dmedit.errors import ModelError, OutOfMemoryError

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
MARKDOWN = ROOT / "BENCHMARKS.md"
SCALING_FRAMES = (4, 8, 16, 24)
WINDOWED_FRAMES = (32, 64, 128, 256)  # whole clips in windows of 16 frames (issue 12)
GPU_FRAMES = (8, 16, 24, 48)
# Dense fp16/bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s (no sparsity).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                   "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}
# No configuration starts after this many seconds: `make bench` must finish within 10 minutes on
# a 2-core CPU; the GPU set has no such limit.
BUDGET_S = {"cpu": 480.0, "cuda": 3600.0}
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
UP_BLOCK_1_KEYS = ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
log = logging.getLogger("bench")


def cpu_configs(*, quick: bool) -> list[BenchConfig]:
    """The tiny model's scaling series at two sizes and the small ZeroScope-architecture checks."""
    configs = []
    native_frames = (4, 8) if quick else SCALING_FRAMES
    large_frames = (4,) if quick else SCALING_FRAMES
    for frames in native_frames:
        configs.append(BenchConfig(name=f"tiny-64-f{frames}", series="tiny-64", model="tiny", width=64,
                                   height=64, frames=frames, repeats=5 if quick else 15, warmup=2))
    for frames in large_frames:
        configs.append(BenchConfig(name=f"tiny-256-f{frames}", series="tiny-256", model="tiny", width=256,
                                   height=256, frames=frames, repeats=2 if quick else 4, warmup=0))
    for frames in (32, 64) if quick else WINDOWED_FRAMES:
        configs.append(BenchConfig(name=f"tiny-64-window16-f{frames}", series="tiny-64-window16", model="tiny",
                                   width=64, height=64, frames=frames, window=16, repeats=2 if quick else 5,
                                   warmup=1))
    small = dict(series="zeroscope-arch-small", model="zeroscope-arch", width=64, height=64, frames=2,
                 repeats=1, warmup=0)
    configs.append(BenchConfig(name="zeroscope-arch-small", wall_steps=2, **{**small, "repeats": 1 if quick else 2}))
    if not quick:
        configs += [
            BenchConfig(name="zeroscope-arch-small-block-checkpointed", checkpointing="block", **small),
            BenchConfig(name="zeroscope-arch-small-layer-checkpointed", checkpointing="layer", **small),
            BenchConfig(name="zeroscope-arch-small-up1-keys", key_layers=UP_BLOCK_1_KEYS, **small),
            BenchConfig(name="zeroscope-arch-small-fp32-autocast-bf16", autocast="bf16", **small),
            BenchConfig(name="zeroscope-arch-small-bf16", **{**small, "dtype": "bf16"}),
        ]
    return configs


def gpu_configs(*, quick: bool) -> list[BenchConfig]:
    """ZeroScope's architecture at 576x320 over GPU_FRAMES in fp16 and bf16 (200-step wall time at
    8 and 16 frames), then the levers: 48 frames checkpointed per block and per layer (the plain
    48-frame run may run out of memory, which is recorded), and 16 frames with each lever."""
    full = dict(model="zeroscope-arch", width=576, height=320, repeats=3 if quick else 10, warmup=2)
    configs = []
    for dtype in ("fp16",) if quick else ("fp16", "bf16"):
        for frames in (8,) if quick else GPU_FRAMES:
            configs.append(BenchConfig(
                name=f"zeroscope-arch-{dtype}-f{frames}", series=f"zeroscope-arch-{dtype}", frames=frames,
                dtype=dtype, wall_steps=200 if frames in (8, 16) and not quick else 0, **full))
    if quick:
        return configs
    levers = dict(series="levers", dtype="fp16", **full)
    for frames, granularity in ((48, "block"), (48, "layer"), (16, "block"), (16, "layer")):
        configs.append(BenchConfig(name=f"zeroscope-arch-fp16-f{frames}-{granularity}-checkpointed",
                                   frames=frames, checkpointing=granularity, **levers))
    configs += [
        BenchConfig(name="zeroscope-arch-fp16-f16-up1-keys", frames=16, key_layers=UP_BLOCK_1_KEYS, **levers),
        BenchConfig(name="zeroscope-arch-fp32-autocast-bf16-f16", frames=16, autocast="bf16",
                    **{**levers, "dtype": "fp32"}),
    ]
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
) -> list[dict]:
    """Measure each configuration in order; once time.perf_counter() passes `deadline` the rest are
    recorded as skipped (the list puts the essential configurations first)."""
    records = []
    with contextlib.ExitStack() as stack:
        backends = BackendCache(device=device, stack=stack)
        for config in configs:
            started = time.perf_counter()
            if started > deadline:
                records.append(dict(name=config.name, series=config.series, frames=config.frames,
                                    error="skipped: the run's time budget was spent"))
                log.info("%s: skipped (time budget)", config.name)
                continue
            try:
                live = prepare_live(config=config, backends=backends)
                record = measure(live=live, device=device, peak_tflops=peak_tflops)
            except (torch.OutOfMemoryError, OutOfMemoryError) as error:
                record = dict(name=config.name, series=config.series, frames=config.frames,
                              error=f"out of memory: {str(error).splitlines()[0]}")
            except ModelError as error:
                record = dict(name=config.name, series=config.series, frames=config.frames, error=str(error))
            live = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            record["seconds_spent"] = time.perf_counter() - started
            log.info("%s: %s", config.name, _summary(record))
            records.append(record)
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
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no configuration after this many seconds (default {BUDGET_S})")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(available_cpus())
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    info = machine_info(device=device)
    configs = cpu_configs(quick=args.quick) if device.type == "cpu" else gpu_configs(quick=args.quick)
    if args.only:
        configs = [c for c in configs if args.only in c.name]
    started = time.perf_counter()
    load_before = load_average()
    estimate = None if args.only else memory_model.estimate(frames=(16,) if args.quick else GPU_FRAMES)
    records = run_configs(configs=configs, device=device, peak_tflops=info["peak_tflops"],
                          deadline=started + (args.budget_s or BUDGET_S[device.type]))
    label = args.label or ("quick" if args.quick else None)
    now = datetime.datetime.now(datetime.timezone.utc)
    result = dict(machine=info, label=label, quick=args.quick, only=args.only, date=now.isoformat(timespec="seconds"),
                  command="python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
                  seconds=time.perf_counter() - started,
                  load_average=dict(before=load_before, after=load_average()),
                  configs=records, scaling=scaling(records=records), memory_model=estimate)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "-".join(part for part in (info["slug"], now.strftime("%Y-%m-%d"), label) if part)
    path = args.results_dir / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    report.write_markdown(results_dir=args.results_dir, path=args.markdown)
    log.info("wrote %s and %s in %.0f s", path, args.markdown, result["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
