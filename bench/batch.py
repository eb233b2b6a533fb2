"""`python -m bench.batch [--jobs N] [--steps S] [--repeats R] [--label NAME]`: what `dmedit batch`
saves per job against a shell loop of `dmedit run`s, on the README's tiny smoke run.

N copies of the smoke clip (links in a scratch folder) are edited twice per repeat: by N single
`dmedit run` processes one after the other (each starts Python, imports torch and loads the model
and the detector), and by one `dmedit batch FOLDER --force` (one process, one worker, models
loaded once). The two take turns within each repeat, so drifting load hits both alike; one
untimed run first builds the tiny models into a fresh DMEDIT_CACHE. Per job: the wall time of
each way, their difference, the model loads (counted from the batch's JSONL events: the video
model and the detector) and the "load model" stage of the run reports. Writes
bench/results/batch/*.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.threads import CLIP, RESULTS_DIR, ROOT, base_environment, report_cpu_name
from dmedit.core.threads import available_cpus

SMOKE = ("--src", "a man", "--tgt", "a robot", "--model", "tiny")


def program() -> list[str]:
    script = Path(sys.executable).with_name("dmedit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dmedit"]


def timed(*, command: list[str], environ: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one command and its stdout; a failed command raises."""
    started = time.perf_counter()
    done = subprocess.run(command, env=environ, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1]} exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def stage(*, folder: Path, name: str) -> list[float]:
    """Stage `name` of every run report in `folder`, in job order ("masks" includes the detector's
    load, "load model" the video model's, "total" the whole run inside its process)."""
    return [json.loads(path.read_text())["timings_s"].get(name, 0.0)
            for path in sorted(folder.glob("*.json")) if not path.name.endswith(".batch.json")]


def one_repeat(*, clips: Path, scratch: Path, steps: int, environ: dict[str, str]) -> dict:
    singles_out, batch_out = scratch / "singles", scratch / "batch"
    singles_out.mkdir(exist_ok=True)
    singles = 0.0
    for clip in sorted(clips.iterdir()):
        seconds, _ = timed(command=[*program(), "run", str(clip), *SMOKE, "--steps", str(steps), "-q", "--overwrite",
                                    "-o", str(singles_out / clip.name)], environ=environ)
        singles += seconds
    batch, stdout = timed(command=[*program(), "batch", str(clips), *SMOKE, "--steps", str(steps), "--force", "-q",
                                   "--log-format", "jsonl", "-o", str(batch_out)], environ=environ)
    ends = [json.loads(line) for line in stdout.splitlines() if '"event": "end"' in line]
    stages = {f"{way}_{name.replace(' ', '_')}_s": stage(folder=folder, name=name)
              for way, folder in (("singles", singles_out), ("batch", batch_out))
              for name in ("load model", "masks", "total")}
    return dict(singles_s=singles, batch_s=batch, batch_model_loads=max(end["model_loads"] for end in ends), **stages)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per way (copies of the smoke clip)")
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per job")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both ways (median taken)")
    parser.add_argument("--label", default=None, help="suffix of the results file")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def markdown(*, result: dict) -> list[str]:
    jobs, singles, batch = result["jobs"], result["singles_median_s"], result["batch_median_s"]
    loads = result["repeats_data"][0]
    return [
        f"{jobs} jobs, {result['steps']} steps each, median of {len(result['repeats_data'])} repeats "
        f"({result['machine']['cpu_count']} CPUs):",
        "",
        "| way | total s | per job s | model loads |",
        "| --- | --- | --- | --- |",
        f"| {jobs} x `dmedit run` | {singles:.1f} | {singles / jobs:.2f} | {2 * jobs} |",
        f"| `dmedit batch` | {batch:.1f} | {batch / jobs:.2f} | {loads['batch_model_loads']} |",
        f"| saved | {singles - batch:.1f} | {(singles - batch) / jobs:.2f} | {2 * jobs - loads['batch_model_loads']} |",
        "",
        *(f"- '{name}' stage per job: single runs {statistics.median(loads[f'singles_{key}_s']):.2f} s; batch "
          f"{loads[f'batch_{key}_s'][0]:.2f} s for the first job, "
          f"{statistics.median(loads[f'batch_{key}_s'][1:] or [0.0]):.2f} s for the others"
          for name, key in (("load model", "load_model"), ("masks", "masks"), ("total", "total"))),
        f"- outside the runs (process start, imports): "
        f"{(loads['singles_s'] - sum(loads['singles_total_s'])) / jobs:.2f} s per single run, "
        f"{(loads['batch_s'] - sum(loads['batch_total_s'])) / jobs:.2f} s per batch job",
        "",
        "(stage figures from the first repeat)",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dmedit-bench-batch-") as folder:
        scratch = Path(folder)
        environ = base_environment(cache=scratch / "cache")
        clips = scratch / "clips"
        clips.mkdir()
        for number in range(args.jobs):
            (clips / f"clip{number:02d}.mp4").symlink_to(CLIP)
        timed(command=[*program(), "run", str(CLIP), *SMOKE, "--steps", "1", "-q", "-o", str(scratch / "warm.mp4")],
              environ=environ)
        repeats = [one_repeat(clips=clips, scratch=scratch, steps=args.steps, environ=environ)
                   for _ in range(args.repeats)]
    now = datetime.datetime.now(datetime.UTC)
    result = dict(kind="batch", label=args.label, date=now.isoformat(timespec="seconds"), jobs=args.jobs,
                  steps=args.steps, command="python -m bench.batch " + " ".join(sys.argv[1:] if argv is None else argv),
                  singles_median_s=statistics.median(r["singles_s"] for r in repeats),
                  batch_median_s=statistics.median(r["batch_s"] for r in repeats), repeats_data=repeats,
                  seconds=time.perf_counter() - started,
                  machine=dict(cpu=report_cpu_name(), cpu_count=os.cpu_count(), available_cpus=available_cpus(),
                               commit=report.git_commit(root=ROOT)))
    out = args.results_dir / "batch"
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(part for part in (f"cpu-{os.cpu_count()}c", now.strftime("%Y-%m-%d"), args.label) if part)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write("\n".join(markdown(result=result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
