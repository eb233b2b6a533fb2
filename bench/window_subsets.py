"""`python -m bench.window_subsets`: every window each step against a random subset, at equal window
visits, on a generated 64-frame clip with the tiny model (window 16, overlap 8): the optimisation
time and the seam ratio of each run's report. Writes bench/results/windows/<machine>-<date>-subsets.json.
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
from fractions import Fraction
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results" / "windows"
SETTINGS = {"all windows, 8 steps": ["--steps", "8"],
            "2 windows at random, 30 steps": ["--steps", "30", "--windows-per-step", "2"]}


def _clip(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from clips import make_clip

    return make_clip(folder / "clip64.mp4", width=96, height=64, frames=64, fps=Fraction(25))


def _run(*, clip: Path, output: Path, extra: list[str], seed: int, environ: dict) -> dict:
    command = [sys.executable, "-m", "dmedit", "run", str(clip), "--src", "a square", "--tgt", "a circle",
               "--model", "tiny", "--frames", "all", "--window", "16", "--window-overlap", "8", "--mask", "full",
               "--fit", "pad", "-q", "--overwrite", "--seed", str(seed), "-o", str(output), *extra]
    subprocess.run(command, check=True, env=environ, stdout=subprocess.DEVNULL)
    data = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    return {"seed": seed, "optimise_s": data["timings_s"]["optimise"], "seam_ratio": data["seams"]["ratio"],
            "steps": data["steps_done"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.window_subsets", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        environ = {**os.environ, "DMEDIT_CACHE": str(Path(folder) / "cache"), "HF_HUB_OFFLINE": "1"}
        clip, runs = _clip(Path(folder)), {name: [] for name in SETTINGS}
        for seed in range(args.seeds):
            for name, extra in SETTINGS.items():
                runs[name].append(_run(clip=clip, output=Path(folder) / "out.mp4", extra=extra, seed=seed,
                                       environ=environ))
    summary = {name: {"median_optimise_s": statistics.median(r["optimise_s"] for r in rows),
                      "seam_ratios": [r["seam_ratio"] for r in rows], "runs": rows} for name, rows in runs.items()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"cpu-{os.cpu_count()}c-{datetime.date.today().isoformat()}-subsets.json"
    path.write_text(json.dumps({"command": "python -m bench.window_subsets", "commit": report.git_commit(root=ROOT),
                                "load_average": list(os.getloadavg()), "settings": summary}, indent=2) + "\n")
    for name, figures in summary.items():
        sys.stderr.write(f"{name}: optimise {figures['median_optimise_s']:.1f} s (median), "
                         f"seam ratios {[round(x, 3) for x in figures['seam_ratios']]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
