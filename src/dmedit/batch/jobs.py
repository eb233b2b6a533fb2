"""The jobs of `dmedit batch`: a jobs file (CSV, JSONL, TOML) or a folder of videos -> checked JobSpecs.

A job's columns are `input` and the names of `dmedit run`'s options: "steps", "--steps",
"guidance-scale" and "guidance_scale" all name --guidance-scale. Each value is converted and
checked by the converter the command line passes for that option (RunOptions), so every default
and every check is `run`'s.
A job's value wins over the batch command line's, which wins over `run`'s default.

Paths in a jobs file (input, mask, registry) are relative to the file's folder; `output` is
relative to --out-dir (default: the input's name, OUT_DIR/IN.mp4), and names the job. Every row is
checked before any job runs: a bad file, row or column fails the batch in one line naming the
file, the row and the column (exit 2).
"""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

from dmedit.core.errors import UsageError
from dmedit.models.registry import Registry, load_registry
from dmedit.runs.settings import RunRequest

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                  ".3gp")
INPUT_COLUMN = "input"
NOT_PER_JOB = frozenset({"overwrite", "skip_existing", "resume", "quiet", "log_every", "offline"})
"""`run` options that a batch decides for all its jobs (done jobs are skipped, --force reruns)."""
PATH_OPTIONS = ("registry", "mask")
"""Options holding a path that, in a jobs file, is relative to the file's folder."""
BuildRequest = Callable[..., RunRequest]
"""Run options by parameter name (`flags=`) -> the checked RunRequest."""
Convert = Callable[[Any], Any]
"""A jobs file's raw value -> the option's value; UsageError (why) for a bad one."""


@dataclass(frozen=True)
class JobSpec:
    """One job: its place in the batch (index from 1, `where` for messages), its name (the output's
    stem) and the checked request. The request's output path is set; overwrite, skip_existing and
    resume are off: the batch sets them for each run (`fingerprint` and `resume` are filled in
    by batch_state.plan_jobs)."""

    index: int
    name: str
    where: str
    request: RunRequest
    fingerprint: Mapping[str, Any] | None = None
    resume: bool = False

    @property
    def output(self) -> Path:
        assert self.request.output.path is not None
        return self.request.output.path

    @property
    def group(self) -> Hashable:
        """Jobs of one group share a worker's loaded models: the model entry and how it is loaded."""
        return self.request.model


@dataclass(frozen=True)
class Row:
    """A job as written: raw values by column name, `where` it was written, the folder its paths
    are relative to."""

    where: str
    values: Mapping[str, Any]
    base: Path
    header: str | None = None
    """Where the column names are, when not in the row itself (a CSV file's header row)."""


@dataclass(frozen=True)
class RunOptions:
    """`dmedit run`'s options as the command line passes them down: a converter per option name
    (the video argument included), each option's default, and the request builder."""

    converters: Mapping[str, Convert]
    defaults: Mapping[str, Any]
    build: BuildRequest


def load_jobs(*, source: Path, given: Mapping[str, Any], options: RunOptions, out_dir: Path) -> list[JobSpec]:
    """Every job of `source` (a jobs file or a folder of videos), with `given` (the batch command
    line's run options) under each job's own values, every one checked before any runs. UsageError
    with one line a bad job, naming file, row, column (or flag) and value."""
    rows = folder_rows(folder=source) if source.is_dir() else file_rows(path=source)
    if not rows:
        raise UsageError(f"{source}: no jobs in it")
    out_dir = out_dir.absolute()
    jobs, problems, registries = [], [], {}
    for index, row in enumerate(rows, start=1):
        try:
            job = _job(index=index, row=row, given=given, options=options, out_dir=out_dir)
            _check_settings(job=job, registries=registries)
            jobs.append(job)
        except UsageError as error:
            problems.append(str(error))
    if problems:  # one line a bad job, every one of them, before any job runs
        raise UsageError("\nerror: ".join(problems))
    _check_outputs(jobs=jobs)
    return jobs


def _check_settings(*, job: JobSpec, registries: dict[Path | None, Registry]) -> None:
    """The job's model entry and method settings as its run will merge them (defaults < entry <
    the job's), so that a combination only the merge refuses stops the batch before any job runs.
    `registries`: each registry file read once for all the jobs."""
    try:
        registry_file = job.request.model.registry
        if registry_file not in registries:
            registries[registry_file] = load_registry(registry_file=registry_file)
        entry = registries[registry_file].model(job.request.model.name)
        job.request.edit_config(entry=entry)
    except UsageError as error:
        raise UsageError(f"{job.where}: {error}") from None


def folder_rows(*, folder: Path) -> list[Row]:
    """One row per video of `folder` (by suffix, not hidden, not in subfolders), by name."""
    videos = sorted(path for path in folder.iterdir()
                    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith("."))
    if not videos:
        raise UsageError(f"{folder}: no videos in this folder ({', '.join(VIDEO_SUFFIXES)})")
    return [Row(where=str(path), values={INPUT_COLUMN: str(path.absolute())}, base=folder) for path in videos]


def file_rows(*, path: Path) -> list[Row]:
    """The rows of a .csv (a header row names the columns), .jsonl (one object a line) or .toml
    ([[jobs]] tables) jobs file."""
    readers = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".toml": _toml_rows}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UsageError(f"{path}: a jobs file is .csv, .jsonl or .toml, or pass a folder of videos")
    try:
        return reader(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such jobs file or folder") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    except (csv.Error, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path}: {' '.join(str(error).split())}") from None


def _csv_rows(path: Path) -> list[Row]:
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if len(set(header)) != len(header) or any(not name.strip() for name in header):
            raise UsageError(f"{path} row 1: the header needs one distinct name per column, got {header}")
        for values in reader:
            where = f"{path} row {reader.line_num}"
            if None in values:
                raise UsageError(f"{where}: more cells than the header has columns")
            rows.append(Row(where=where, values={key: value for key, value in values.items() if value is not None},
                            base=path.parent, header=f"{path} row 1"))
    return rows


def _jsonl_rows(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} row {number}"
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(values, dict):
            raise UsageError(f"{where}: a job is a JSON object, got {type(values).__name__}")
        rows.append(Row(where=where, values=values, base=path.parent))
    return rows


def _toml_rows(path: Path) -> list[Row]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    extra = sorted(set(data) - {"jobs"})
    if extra:
        raise UsageError(f"{path}: unknown key {extra[0]!r}; jobs are [[jobs]] tables")
    jobs = data.get("jobs", [])
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise UsageError(f"{path}: jobs are [[jobs]] tables")
    return [Row(where=f"{path} job {number}", values=job, base=path.parent) for number, job in enumerate(jobs, 1)]


def column_name(column: str) -> str:
    """'--guidance-scale', 'guidance-scale', 'Guidance_Scale' -> 'guidance_scale'."""
    return column.strip().lstrip("-").replace("-", "_").lower()


def _converted(*, row: Row, options: RunOptions) -> dict[str, Any]:
    """The row's given values, converted and checked by `run`'s parameters (the input as "video")."""
    values: dict[str, Any] = {}
    for column, raw in row.values.items():
        name = column_name(str(column))
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        if name in NOT_PER_JOB:
            raise UsageError(f"{row.header or row.where}: column {column!r} applies to the whole batch, not to one "
                             "job (see dmedit batch -h)")
        target = "video" if name == INPUT_COLUMN else name
        if target not in options.converters or (target == "video" and name != INPUT_COLUMN):
            raise UsageError(f"{row.header or row.where}: unknown column {column!r} (a job's columns are input and "
                             "the options of dmedit run, e.g. src, tgt, steps; see dmedit run -h)")
        try:
            values[target] = options.converters[target](raw)
        except UsageError as error:
            raise UsageError(f"{row.where}: column {column!r}: {error}") from None
    return values


def _relative_to(*, base: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Paths a jobs file gave, made absolute from the file's folder."""
    resolved = dict(values)
    for name in ("video", *PATH_OPTIONS):
        value = resolved.get(name)
        if value is None or (name == "mask" and value == "full"):
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        resolved[name] = str(path.absolute()) if name == "mask" else path.absolute()
    return resolved


def _job(*, index: int, row: Row, given: Mapping[str, Any], options: RunOptions, out_dir: Path) -> JobSpec:
    own = _relative_to(base=row.base, values=_converted(row=row, options=options))
    flags = {**options.defaults, **_relative_to(base=Path.cwd(), values=dict(given)), **own}
    if flags.get("video") is None:
        raise UsageError(f"{row.where}: no input: give the job an input column")
    for name in ("src", "tgt"):
        if flags.get(name) is None:
            raise UsageError(f"{row.where}: no {name}: give the job a {name} column or pass --{name} to dmedit batch")
    output = Path(own["output"]).expanduser() if own.get("output") else Path(f"{Path(flags['video']).stem}.mp4")
    output = output if output.suffix else output.with_name(f"{output.name}.mp4")
    output = output if output.is_absolute() else out_dir / output
    flags.update(output=output, overwrite=False, skip_existing=False, resume=False)
    try:
        request = options.build(flags=flags)
    except UsageError as error:
        raise UsageError(f"{row.where}: {error}") from None
    return JobSpec(index=index, name=output.stem, where=row.where, request=request)


def _check_outputs(*, jobs: Iterable[JobSpec]) -> None:
    """No two jobs write one output, and no job writes over its input."""
    seen: dict[Path, JobSpec] = {}
    for job in jobs:
        if job.output == Path(job.request.video).absolute():
            raise UsageError(f"{job.where}: the output {job.output} is the input; choose another --out-dir")
        other = seen.setdefault(job.output, job)
        if other is not job:
            raise UsageError(f"{job.where}: writes {job.output} as {other.where} does; give one of them an "
                             "output column (a name in --out-dir)")
