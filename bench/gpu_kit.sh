#!/usr/bin/env bash
# `make gpu-kit`, run HERE from the repository root before a GPU check: puts into .whl/ (ignored by
# git) the Python 3.12 wheels that the GPU machine lacks of dmedit's dependencies, at the versions of
# the local .venv, so the GPU runs the code the tests ran. Then call the device tool with carry
# [".whl"] and `bash bench/on_device.sh` (BENCHMARKS.md, "On a GPU machine").
set -euo pipefail
[ -f pyproject.toml ] || { echo "gpu-kit: run this from the repository root" >&2; exit 2; }
VENV_PYTHON="${VENV_PYTHON:-.venv/bin/python}"
[ -x "$VENV_PYTHON" ] || { echo "gpu-kit: $VENV_PYTHON is missing; run make install first" >&2; exit 2; }
# The GPU image has torch, transformers, typer, rich, opencv-python-headless, numpy, Pillow,
# accelerate, safetensors, huggingface_hub and matplotlib; these are what it lacks.
wanted=()
for name in diffusers av platformdirs importlib_metadata ${EXTRA_WHEELS:-}; do
  version=$("$VENV_PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  wanted+=("$name${version:+==$version}")
done
rm -rf .whl && mkdir -p .whl
"$VENV_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest .whl "${wanted[@]}" 2>&1 | grep -v '^WARNING: Location' || true
count=$(ls .whl/*.whl 2>/dev/null | wc -l)
[ "$count" -eq "${#wanted[@]}" ] || { echo "gpu-kit: got $count of ${#wanted[@]} wheels (${wanted[*]})" >&2; exit 1; }
ls .whl
du -sh .whl
echo 'device call: run(command="bash bench/on_device.sh", carry=[".whl"], timeout_s=580)'
