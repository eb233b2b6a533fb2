"""BENCHMARKS.md from bench/results/*.json: every number in the generated blocks comes from a run.

The file keeps its hand-written prose; only the text between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` markers is replaced. Blocks: `latest` (the newest full run of each
machine, every figure), `changes` (the run labelled "before" against the one labelled "after"),
`history` (headline figures of every results file, oldest first) and `threads` (every
`python -m bench.threads` run, newest first, from bench/results/threads/*.json).
"""

from __future__ import annotations

import json
import subprocess
import math
import re
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
HISTORY_CONFIGS = ("tiny-64-f8", "tiny-256-f8", "tiny-256-f16", "zeroscope-arch-small")
THREADS_SUBDIR = "threads"
"""Results of `python -m bench.threads`, in their own folder: they are not step benchmarks."""
TEMPLATE = """# Benchmarks

<!-- bench:latest -->
<!-- /bench:latest -->

<!-- bench:history -->
<!-- /bench:history -->

## CPU threads under load

<!-- bench:threads -->
<!-- /bench:threads -->

## Whole clips in windows

<!-- bench:windows -->
<!-- /bench:windows -->
"""


def git_commit(*, root: Path) -> str:
    """The short commit of the checkout at `root`, or "unknown"."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_results(*, results_dir: Path) -> list[dict]:
    """Every results file, oldest first, each with its file name under "file"."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        data["file"] = path.name
        results.append(data)
    return sorted(results, key=lambda data: data["date"])


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _seconds(spread: dict) -> str:
    return f"{_fmt(spread['median'])} [{_fmt(spread['p25'])}–{_fmt(spread['p75'])}]"


def _memory(memory: dict) -> str:
    return f"{memory['above_start_bytes'] / MIB:,.0f} ({memory['peak_bytes'] / MIB:,.0f})"


def config_table(*, records: list[dict]) -> list[str]:
    lines = ["| configuration | frames | latent | dtype | step s, median [p25–p75] | steps/s | bare s | "
             "overhead step/bare [p25–p75] | GFLOP/step (bare) | TFLOP/s (of peak) | "
             "step memory MiB above start (process peak) | wall s of N steps | mode: first step s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['frames']} | | | {r['error']} | | | | | | | | |")
            continue
        ratio = r["overhead_ratio"]
        peak = f" ({r['fraction_of_peak']:.0%})" if "fraction_of_peak" in r else ""
        wall = f"{_fmt(r['wall']['seconds'])} ({r['wall']['steps']})" if "wall" in r else "–"
        lines.append(
            f"| {r['name']} | {r['frames']} | {r['latent'][0]}x{r['latent'][1]} | {r['dtype']} | "
            f"{_seconds(r['step_s'])} | {_fmt(r['steps_per_s'])} | {_seconds(r['bare_s'])} | "
            f"{ratio['median']:.3f} [{ratio['p25']:.3f}–{ratio['p75']:.3f}] | "
            f"{_fmt(r['step_flops'] / 1e9)} ({_fmt(r['bare_flops'] / 1e9)}) | "
            f"{_fmt(r['achieved_tflops'])}{peak} | {_memory(r['step_memory'])} | {wall} | "
            f"{r.get('compile', 'eager')}: {_fmt(r.get('first_step_s'))} |")
    return lines


def scaling_table(*, scaling: dict) -> list[str]:
    lines = ["| series | frames | exponent of step time | exponent of bare time |", "|---|---|---|---|"]
    for series, fit in scaling.items():
        lines.append(f"| {series} | {', '.join(map(str, fit['frames']))} | {fit['step_exponent']:.3f} | "
                     f"{fit['bare_exponent']:.3f} |")
    return lines


def run_section(*, data: dict) -> list[str]:
    machine = data["machine"]
    load = data["load_average"]
    lines = [
        f"### {machine['slug']}, {data['date']}" + (f" ({data['label']})" if data.get("label") else ""),
        "",
        f"- Machine: {machine['device']}; CPU {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch threads"
        + "".join(f", {name}={value}" for name, value in machine.get("thread_environment", {}).items()),
        f"- Versions: Python {machine['python']}, torch {machine['torch']}, diffusers {machine['diffusers']}, "
        f"transformers {machine['transformers']}; dmedit commit {machine['commit']}",
        f"- Command: `{data['command'].strip()}` ({data['seconds']:.0f} s); results file "
        f"`bench/results/{data['file']}`",
        f"- Load average (1, 5, 15 min) before {load['before']}, after {load['after']}",
        "",
        *config_table(records=data["configs"]),
    ]
    if data.get("scaling"):
        lines += ["", "Time against frames, least squares on log-log:", "", *scaling_table(scaling=data["scaling"])]
    if data.get("memory_model"):
        lines += ["", *memory_model_table(estimate=data["memory_model"])]
    if data.get("end_to_end"):
        lines += ["", *end_to_end_table(run=data["end_to_end"])]
    if data.get("end_to_end_compiled"):
        lines += ["", "The same run with `--compile`, inductor's cache empty (a user's first compiled run):", "",
                  *end_to_end_table(run=data["end_to_end_compiled"])]
    return lines


def end_to_end_table(*, run: dict) -> list[str]:
    """One `dmedit run` (bench.end_to_end): its command, result and the report's stage times."""
    if "error" in run:
        return [f"End-to-end `{run['command']}`: {run['error']}"]
    timings = run["timings_s"]
    return [f"End-to-end `{run['command']}`: exit {run['returncode']}, {run['wall_s']:.1f} s wall; "
            f"stage times from the run report (compile: {run.get('compile')}; "
            f"checkpointing: {run.get('checkpointing')}):", "",
            "| " + " | ".join(timings) + " |", "|" + "---|" * len(timings),
            "| " + " | ".join(f"{value:.2f}" for value in timings.values()) + " |"]


def memory_model_table(*, estimate: dict) -> list[str]:
    """GiB above the weights per call, and weights + the larger call as the step's estimated peak."""
    weights = estimate["weights_bytes"]
    lines = [f"Memory estimate for ZeroScope's U-Net at {estimate['width']}x{estimate['height']} in "
             f"{estimate['dtype']} ({estimate['kind']}; weights {weights / GIB:.2f} GiB), GiB:", "",
             "| frames | no-grad call, 3N frames | grad call, N frames, fwd+bwd | same, block checkpoints | "
             "same, layer checkpoints | step peak plain / block / layer |", "|---|---|---|---|---|---|"]
    for row in estimate["rows"]:
        grads = [row["grad_n_bytes"], row["grad_n_block_checkpointed_bytes"], row["grad_n_layer_checkpointed_bytes"]]
        peaks = " / ".join(f"{(weights + max(row['no_grad_3n_bytes'], grad)) / GIB:.1f}" for grad in grads)
        lines.append(f"| {row['frames']} | {row['no_grad_3n_bytes'] / GIB:.2f} | "
                     + " | ".join(f"{grad / GIB:.2f}" for grad in grads) + f" | {peaks} |")
    return lines


def latest_block(*, results: list[dict]) -> list[str]:
    full = [data for data in results if not data.get("quick") and not data.get("only")
            and "--small" not in data["command"]]  # the GPU set shrunk to run on a CPU is a check, not a result
    latest = {data["machine"]["slug"]: data for data in full}
    if not latest:
        return ["No full run yet: `make bench` writes one."]
    lines = []
    for data in latest.values():
        lines += [*run_section(data=data), ""]
    return lines[:-1]


def changes_block(*, results: list[dict], before_label: str = "before", after_label: str = "after") -> list[str]:
    """The newest run labelled `before_label` against the newest labelled `after_label` (the same
    command on the same machine, before and after the engine changes)."""
    befores = [data for data in results if data.get("label") == before_label]
    afters = [data for data in results if data.get("label") == after_label
              and befores and data["machine"]["slug"] == befores[-1]["machine"]["slug"]]
    if not befores or not afters:
        return [f"No pair of runs labelled `{before_label}` and `{after_label}` on one machine yet."]
    before, after = befores[-1], afters[-1]
    old = {r["name"]: r for r in before["configs"] if "error" not in r}
    lines = [f"`{before['file']}` (`{before['command'].strip()}`) against `{after['file']}` "
             f"(`{after['command'].strip()}`):", "",
             "| configuration | step s before → after | change | overhead before → after | "
             "GFLOP/step before → after |", "|---|---|---|---|---|"]
    for r in after["configs"]:
        o = old.get(r["name"])
        if o is None or "error" in r:
            continue
        change = r["step_s"]["median"] / o["step_s"]["median"] - 1
        lines.append(f"| {r['name']} | {_fmt(o['step_s']['median'])} → {_fmt(r['step_s']['median'])} | "
                     f"{change:+.0%} | {o['overhead_ratio']['median']:.3f} → {r['overhead_ratio']['median']:.3f} | "
                     f"{_fmt(o['step_flops'] / 1e9)} → {_fmt(r['step_flops'] / 1e9)} |")
    for series, fit in after.get("scaling", {}).items():
        if series in before.get("scaling", {}):
            lines.append(f"| {series}: exponent of step time vs frames | "
                         f"{before['scaling'][series]['step_exponent']:.3f} → {fit['step_exponent']:.3f} | | | |")
    return lines


def history_block(*, results: list[dict]) -> list[str]:
    header = ["| results file | label | " + " | ".join(f"{name} overhead (step s)" for name in HISTORY_CONFIGS)
              + " | tiny-64 / tiny-256 exponent |",
              "|---|---|" + "---|" * len(HISTORY_CONFIGS) + "---|"]
    lines = []
    for data in results:
        by_name = {r["name"]: r for r in data["configs"] if "error" not in r}
        cells = []
        for name in HISTORY_CONFIGS:
            r = by_name.get(name)
            cells.append("–" if r is None else f"{r['overhead_ratio']['median']:.3f} ({_fmt(r['step_s']['median'])})")
        fits = data.get("scaling", {})
        exponents = " / ".join(f"{fits[s]['step_exponent']:.3f}" if s in fits else "–" for s in ("tiny-64", "tiny-256"))
        lines.append(f"| {data['file']} | {data.get('label') or '–'} | " + " | ".join(cells) + f" | {exponents} |")
    return header + lines


def threads_block(*, results_dir: Path) -> list[str]:
    """Every thread-settings run, newest first: median wall time of the smoke run per setting, idle
    and loaded, with the extremes in brackets, and the median time of its optimisation stage."""
    runs = [json.loads(path.read_text(encoding="utf-8")) | {"file": path.name}
            for path in sorted((results_dir / THREADS_SUBDIR).glob("*.json"))]
    if not runs:
        return ["No thread-settings run yet: `python -m bench.threads` writes one."]
    lines: list[str] = []
    for data in sorted(runs, key=lambda data: data["date"], reverse=True):
        machine, load = data["machine"], data["load"]
        chosen = ", ".join(f"{name}={value}" for name, value in data["chosen"].items()) or "nothing"
        lines += [
            f"### {machine['slug']}, {data['date']}" + (f" ({data['label']})" if data.get("label") else ""),
            "",
            (f"- Machine: CPU {machine['cpu']}, {machine['cpu_count']} cores, {machine['available_cpus']} in this "
             f"process's affinity; Python {machine['python']}; dmedit commit {machine['commit']}"),
            (f"- Command timed: `{data['smoke_command']}`, wall seconds of the whole process, median of "
             f"{data['repeats']} runs [min–max]"),
            f"- Loaded: {load['busy_processes']} busy processes (`{load['command']}`) running throughout",
            (f"- Measured by `{data['command'].strip()}` ({data['seconds']:.0f} s); results file "
             f"`bench/results/{THREADS_SUBDIR}/{data['file']}`; `configure_threads()` chose: {chosen}"),
            "",
            *_threads_table(records=data["records"]),
            "",
        ]
    return lines[:-1]


def _threads_table(*, records: list[dict]) -> list[str]:
    by_setting: dict[str, dict[str, dict]] = {}
    for record in records:
        by_setting.setdefault(record["setting"], {})[record["condition"]] = record

    def cell(record: dict | None) -> str:
        return "–" if record is None else f"{_fmt(record['median_s'])} [{_fmt(record['min_s'])}–{_fmt(record['max_s'])}]"

    def stage(record: dict | None) -> str:
        return _fmt((record or {}).get("stage_medians_s", {}).get("optimise"))

    lines = ["| setting | variables given | idle s | loaded s | loaded / idle | optimise stage s, idle → loaded |",
             "|---|---|---|---|---|---|"]
    for setting, conditions in by_setting.items():
        idle, loaded = conditions.get("idle"), conditions.get("loaded")
        variables = next(iter(conditions.values()))["variables"]
        given = " ".join(f"{name}={value}" for name, value in variables.items()) or "none"
        ratio = f"{loaded['median_s'] / idle['median_s']:.1f}x" if idle and loaded else "–"
        lines.append(f"| {setting} | {given} | {cell(idle)} | {cell(loaded)} | {ratio} | "
                     f"{stage(idle)} → {stage(loaded)} |")
    return lines


def windows_block(*, results: list[dict]) -> list[str]:
    """The latest run of whole clips in windows (configurations with a `window`): per clip length the
    windows a step visits on the base grid, step time, time per window and step memory."""
    runs = [data for data in results if any(record.get("window") for record in data.get("configs", []))]
    if not runs:
        return ["No run of windowed configurations yet (`python -m bench.run --only window`)."]
    data = runs[-1]
    rows = [record for record in data["configs"] if record.get("window") and "step_s" in record]
    lines = [f"From `bench/results/{data['file']}` (`{data.get('command', 'python -m bench.run')}`).", "",
             "| configuration | frames | window (overlap) | windows per step | step s, median | s per window | "
             "step memory MiB above start |", "|---|---|---|---|---|---|---|"]
    for record in rows:
        window, frames = record["window"], record["frames"]
        stride = window - window // 2
        count = 1 if frames <= window else len(range(0, frames - window, stride)) + 1
        step = record["step_s"]["median"]
        memory = record["step_memory"]["above_start_bytes"] / 2**20
        lines.append(f"| {record['name']} | {frames} | {window} ({window // 2}) | {count} | {_fmt(step)} | "
                     f"{_fmt(step / count)} | {memory:,.1f} |")
    for series, fit in data.get("scaling", {}).items():
        if any(record["series"] == series for record in rows):
            lines += ["", f"Step time against frames, {series}: exponent {fit['step_exponent']:.2f} "
                          f"(bare U-Net work {fit['bare_exponent']:.2f}) over {fit['frames']} frames."]
    return lines


def replace_block(*, text: str, name: str, lines: list[str]) -> str:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    body = "\n".join([begin, "", *lines, "", end])
    if pattern.search(text):
        return pattern.sub(lambda _match: body, text)
    return text.rstrip("\n") + "\n\n" + body + "\n"


def write_markdown(*, results_dir: Path, path: Path) -> None:
    """Regenerate the blocks of `path` (created from a template when missing) from `results_dir`."""
    results = load_results(results_dir=results_dir)
    text = path.read_text(encoding="utf-8") if path.exists() else TEMPLATE
    text = replace_block(text=text, name="latest", lines=latest_block(results=results))
    text = replace_block(text=text, name="changes", lines=changes_block(results=results))
    text = replace_block(text=text, name="history", lines=history_block(results=results))
    text = replace_block(text=text, name="threads", lines=threads_block(results_dir=results_dir))
    text = replace_block(text=text, name="windows", lines=windows_block(results=results))
    path.write_text(text, encoding="utf-8")
