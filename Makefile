# Set-up contract: `make install` then `make test` on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU build that installs here; GPU users pass e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test bench bench-gpu gpu-kit clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	@# The browser tests' Chromium (Debian's chromium and chromium-driver), only where root can apt-get: never fails.
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } || echo "note: chromium and chromium-driver are not installed; the browser tests will be skipped"

# The layer contracts (pyproject.toml [tool.importlinter]), then every test on every core.
test:
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist worksteal

bench:
	$(BIN)/python -m bench.run

# On a GPU machine (where the venv may be another interpreter: BENCH_PYTHON=python3): the GPU set
# (eager / compiled / graphed at 8, 16, 48 frames, Show-1's keyframe U-Net) within 5 minutes, then one
# `dmedit run --model zeroscope-random --frames 8 --steps 200`; results are written after every
# configuration, so a run cut short keeps what it measured. About 8 minutes in all.
BENCH_PYTHON ?= $(BIN)/python
bench-gpu:
	$(BENCH_PYTHON) -m bench.run --set gpu --end-to-end --budget-s 300 --end-to-end-timeout-s 170

# Here, before a GPU check: the Python 3.12 wheels the GPU machine lacks (diffusers, av, platformdirs,
# importlib_metadata) at this venv's versions, into .whl/ (ignored by git). There: bash bench/on_device.sh.
gpu-kit:
	bash bench/gpu_kit.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
