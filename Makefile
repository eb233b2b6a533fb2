# Set-up contract: `make install` then `make test` on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU build that installs here; GPU users pass e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'

test:
	$(BIN)/python -m pytest -q

bench:
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build src/*.egg-info
