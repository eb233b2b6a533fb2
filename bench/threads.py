"""`python -m bench.threads [--repeats N] [--label NAME]`: the README's tiny smoke run, idle and
under load, with each OpenMP thread setting; writes bench/results/threads/*.json and regenerates
BENCHMARKS.md ("CPU threads under load").

Each setting is a set of environment variables given to a fresh `dmedit run` process (all thread
variables are removed from the inherited environment first), so nothing here imports torch. Every
setting but "one thread" (a team of one never waits) names its wait policy, so a CLI that fills in
unset variables with `configure_threads` measures the same. Load
is one busy Python loop per available CPU (`python -c "while True: pass"`), started before and
stopped after the loaded runs. Settings take turns within each repeat, so drifting load hits all
alike; one untimed run first builds the tiny model and detector into a fresh DMEDIT_CACHE.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from dmedit.core.threads import available_cpus, configure_threads

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
MARKDOWN = ROOT / "BENCHMARKS.md"
CLIP = ROOT.parent / "shared" / "clips" / "carphone.mp4"
CLEARED_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
                     "OMP_PROC_BIND", "OMP_PLACES")
LOAD_COMMAND = (sys.executable, "-c", "while True: pass")
SPIN_COUNTS = (300, 1_000, 10_000)
LIBGOMP_DEFAULT_SPIN_COUNT = 300_000
"""What libgomp spins with when no variable is set; given explicitly so that a CLI which calls
`configure_threads` (and so fills in unset variables) still runs with libgomp's default."""
OPTIMISE_STAGE = "optimise"
"""The run report's stage of the 20 optimisation steps, where OpenMP waits matter most."""
log = logging.getLogger("bench.threads")


def settings(*, spin_counts: tuple[int, ...] = SPIN_COUNTS) -> dict[str, dict[str, str]]:
    """Setting name -> the variables its runs get. `configure_threads` is what dmedit chooses."""
    table: dict[str, dict[str, str]] = {
        "libgomp default": {"GOMP_SPINCOUNT": str(LIBGOMP_DEFAULT_SPIN_COUNT)},
        "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    }
    for spins in sorted(spin_counts):
        table[f"spin {spins}"] = {"GOMP_SPINCOUNT": str(spins)}
    table["configure_threads()"] = configure_threads(environ={})
    table["one thread"] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return table


def smoke_command(*, output: Path) -> list[str]:
    """The README's smoke run (through the `dmedit` script beside this interpreter when there is one)."""
    script = Path(sys.executable).with_name("dmedit")
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "dmedit"]
    return [*program, "run", str(CLIP), "--src", "a man", "--tgt", "a robot", "--model", "tiny", "--steps", "20",
            "-o", str(output), "--overwrite", "-q"]


def base_environment(*, cache: Path) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if name not in CLEARED_VARIABLES}
    environ.update(DMEDIT_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return environ


def timed_run(*, command: list[str], environ: dict[str, str], timeout_s: float) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run and the stage times of its run report (OUT.json); a failed run raises."""
    report_path = Path(command[command.index("-o") + 1]).with_suffix(".json")
    report_path.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()}")
    try:
        stages = json.loads(report_path.read_text(encoding="utf-8")).get("timings_s", {})
    except (OSError, ValueError):
        stages = {}
    return seconds, {name: value for name, value in stages.items() if isinstance(value, (int, float))}


def busy_processes(*, count: int) -> list[subprocess.Popen]:
    processes = [subprocess.Popen(LOAD_COMMAND, stdin=subprocess.DEVNULL) for _ in range(count)]
    time.sleep(1.0)
    return processes


def stop(*, processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


def measure_condition(
    *, condition: str, table: dict[str, dict[str, str]], command: list[str], environ: dict[str, str],
    repeats: int, timeout_s: float,
) -> list[dict]:
    """`repeats` rounds over every setting; one record per setting with its samples."""
    samples: dict[str, list[float]] = {name: [] for name in table}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in table}
    load_before = list(os.getloadavg())
    load = busy_processes(count=available_cpus()) if condition == "loaded" else []
    try:
        for repeat in range(repeats):
            for name, variables in table.items():
                seconds, times = timed_run(command=command, environ={**environ, **variables}, timeout_s=timeout_s)
                samples[name].append(seconds)
                for stage, value in times.items():
                    stages[name].setdefault(stage, []).append(value)
                log.info("%s, %s, run %d: %.2f s (optimise %.2f s)", condition, name, repeat + 1, seconds,
                         times.get(OPTIMISE_STAGE, float("nan")))
    finally:
        stop(processes=load)
    load_average = dict(before=load_before, after=list(os.getloadavg()))
    return [dict(condition=condition, setting=name, variables=table[name], load_average=load_average,
                 seconds=samples[name], median_s=statistics.median(samples[name]), min_s=min(samples[name]),
                 max_s=max(samples[name]), stages_s=stages[name],
                 stage_medians_s={stage: statistics.median(values) for stage, values in stages[name].items()})
            for name in table]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting and condition (median taken)")
    parser.add_argument("--conditions", default="idle,loaded", help="comma-separated: idle, loaded")
    parser.add_argument("--only", default=None,
                        help="comma-separated: measure only settings whose name contains one of these")
    parser.add_argument("--spin-counts", default=",".join(map(str, SPIN_COUNTS)),
                        help="comma-separated GOMP_SPINCOUNT values to measure")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="limit for one run")
    parser.add_argument("--label", default=None, help="suffix of the results file")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    spin_counts = tuple(int(value) for value in args.spin_counts.split(",") if value.strip())
    wanted = [part for part in (args.only or "").split(",") if part]
    table = {name: env for name, env in settings(spin_counts=spin_counts).items()
             if not wanted or any(part in name for part in wanted)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dmedit-bench-threads-") as scratch:
        command = smoke_command(output=Path(scratch) / "smoke.mp4")
        environ = base_environment(cache=Path(scratch) / "cache")
        timed_run(command=command, environ=environ, timeout_s=args.timeout_s)  # builds the tiny models
        records = []
        for condition in args.conditions.split(","):
            records += measure_condition(condition=condition, table=table, command=command, environ=environ,
                                         repeats=args.repeats, timeout_s=args.timeout_s)
    now = datetime.datetime.now(datetime.UTC)
    shown = [Path(command[0]).name if command[0].endswith("dmedit") else "python -m dmedit", *command[1:]]
    shown[shown.index("-o") + 1] = "OUT.mp4"
    result = dict(
        kind="threads", label=args.label, date=now.isoformat(timespec="seconds"),
        command="python -m bench.threads " + " ".join(sys.argv[1:] if argv is None else argv),
        smoke_command=shlex.join(shown), seconds=time.perf_counter() - started,
        machine=dict(cpu=report_cpu_name(), cpu_count=os.cpu_count(), available_cpus=available_cpus(),
                     platform=platform.platform(), python=platform.python_version(), commit=report.git_commit(root=ROOT),
                     slug=f"cpu-{os.cpu_count()}c"),
        load=dict(busy_processes=available_cpus(), command=shlex.join(["python", *LOAD_COMMAND[1:]])),
        repeats=args.repeats, chosen=configure_threads(environ={}), records=records)
    folder = args.results_dir / report.THREADS_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = "-".join(part for part in (result["machine"]["slug"], now.strftime("%Y-%m-%d"), args.label) if part)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    report.write_markdown(results_dir=args.results_dir, path=args.markdown)
    log.info("wrote %s and %s in %.0f s", path, args.markdown, result["seconds"])
    return 0


def report_cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
