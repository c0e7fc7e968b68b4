# The two commands a new user runs: `make fit` and `make test`. Both create .venv on first use
# (pip + venv: the local CPU torch wheel is only visible to pip) and never reinstall afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vir-core-installed
TORCH  ?= torch==2.13.0

.PHONY: help install fit test test-fast bench-retention lint clean

help:
	@echo "make fit              set up .venv if needed, then run the main job"
	@echo "make test             set up .venv if needed, then run the whole test suite"
	@echo "make test-fast        the suite without tests marked slow"
	@echo "make bench-retention  time and peak memory of the retention op (1k/4k/16k tokens)"

# Re-runs only when pyproject.toml changes (or .venv is missing).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

fit: $(STAMP)
	$(PY) -m vir_lightning fit

# pytest exits 5 when it collects nothing; that is a broken suite here, so it stays a failure.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench-retention: $(STAMP)
	$(PY) -m vir_lightning bench-retention

lint: $(STAMP)
	$(PY) -m ruff check vir_lightning tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
