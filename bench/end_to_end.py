"""One real `dmedit run` measured from outside, with the stage times of its own report.

`python -m bench.end_to_end [--model zeroscope-random] [--frames 8] [--steps 200] [--timeout-s S]`:
runs `dmedit run` on a generated 576x320 clip of moving shapes (or --clip), full-frame mask, and
returns a record with the command, exit status, wall time, the report's `timings_s` and its
speed choices (compile, checkpointing). `zeroscope-random` is ZeroScope's architecture with random
weights, built offline into the cache on first use (its build time is part of the "plan" stage).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def moving_shapes_clip(*, path: Path, width: int = 576, height: int = 320, frames: int = 24) -> Path:
    """A clip of a bright square crossing a gradient, 24 fps, H.264 (dmedit's own writer)."""
    from dmedit.media.video import write_video

    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        frame = np.broadcast_to(ramp, (height, width, 3)).copy()
        left = 20 + index * (width - 120) // max(frames - 1, 1)
        frame[height // 3 : height // 3 + 80, left : left + 80] = (230, 60, 40)
        video[index] = frame.astype(np.uint8)
    write_video(path=path, frames=video, fps=24.0)
    return path


def run_end_to_end(*, model: str, frames: int, steps: int, timeout_s: float, clip: Path | None,
                   extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        source = clip or moving_shapes_clip(path=Path(folder) / "shapes.mp4")
        output = Path(folder) / "edited.mp4"
        command = ["dmedit", "run", str(source), "--src", "a red square", "--tgt", "a blue ball", "--model", model,
                   "--frames", str(frames), "--steps", str(steps), "--mask", "full", "-o", str(output), *extra]
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "dmedit", *command[1:]], capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return dict(command=" ".join(command), error=f"cut short by the time budget ({timeout_s:.0f} s)")
        record = dict(command=" ".join(command), returncode=done.returncode, wall_s=time.perf_counter() - started)
        if done.returncode != 0:
            return record | dict(error=(done.stderr.strip().splitlines() or ["no message"])[-1])
        report = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
        speed = report.get("speed") or {}
        return record | dict(timings_s=report["timings_s"], peak_memory=report.get("peak_memory"),
                             compile=speed.get("compile"), checkpointing=speed.get("checkpointing"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zeroscope-random")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--clip", type=Path, default=None)
    args, extra = parser.parse_known_args(argv)
    record = run_end_to_end(model=args.model, frames=args.frames, steps=args.steps, timeout_s=args.timeout_s,
                            clip=args.clip, extra=extra)
    sys.stdout.write(json.dumps(record, indent=1) + "\n")
    return 0 if "error" not in record else 1


if __name__ == "__main__":
    sys.exit(main())
