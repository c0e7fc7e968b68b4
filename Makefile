# The two commands a new user runs: `make fit` and `make test`. Both create .venv on first use
# (pip + venv: the local CPU torch wheel is only visible to pip) and never reinstall afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vir-core-installed
TORCH  ?= torch==2.13.0

.PHONY: help install data fit test test-fast bench-retention lint clean

help:
	@echo "make fit              set up .venv and data if needed, then train the quickstart (~7 min)"
	@echo "make test             set up .venv if needed, then run the whole test suite"
	@echo "make test-fast        the suite without tests marked slow"
	@echo "make bench-retention  time and peak memory of the retention op (1k/4k/16k tokens)"

FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export NO_ALBUMENTATIONS_UPDATE := 1

# Re-runs only when pyproject.toml changes (or .venv is missing).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Fashion-MNIST (the quickstart data and the tests' real pixels) from Debian's package, where we can.
$(FMNIST):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or see README)"; exit 1; \
	fi

data: $(FMNIST)

install: $(STAMP)

# The quickstart: a small ViR on Fashion-MNIST, then the test split (prints test/acc1).
fit: $(STAMP) $(FMNIST)
	$(PY) -m vir_lightning fit --config configs/quickstart.yaml

# pytest exits 5 when it collects nothing; that is a broken suite here, so it stays a failure.
test: $(STAMP) $(FMNIST)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) $(FMNIST)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench-retention: $(STAMP)
	$(PY) -m vir_lightning bench-retention

lint: $(STAMP)
	$(PY) -m ruff check vir_lightning tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
