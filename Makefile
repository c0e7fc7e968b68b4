# The two commands a new user runs: `make fit` and `make test`. Both create .venv on first use
# (pip + venv: the local CPU torch wheel is only visible to pip) and never reinstall afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vir-core-installed
MM_STAMP := $(VENV)/.vir-mm-installed
TORCH  ?= torch==2.13.0

.PHONY: help install mm data mini-datasets downstream-mini fit test test-fast bench bench-streaming bench-train bench-retention bench-backbone docs lint clean

help:
	@echo "make fit              set up .venv and data if needed, then train the quickstart (~7 min; FIT_ARGS=\"--overwrite true\" to redo it)"
	@echo "make test             set up .venv and the OpenMMLab tier if needed, then ruff (lint + format check) and the whole test suite"
	@echo "make test-fast        the suite without tests marked slow (core tier only; mm tests skip if absent)"
	@echo "make lint             ruff check and ruff format --check over the repository"
	@echo "make mm               install the OpenMMLab tier (first time: builds mmcv 2.1.0, ~10-17 min)"
	@echo "make mini-datasets    build data/mini/{coco,ade} from real pixels (400 train / 100 val images each)"
	@echo "make downstream-mini  pretrain H-ViR nano, then Mask R-CNN + UPerNet with it and the mm baselines (RUNS=...)"
	@echo "make bench            ViR-S modes vs the SDPA ViT-S, 224-2048 px: runs/bench/{results.csv,results.md,*.png}"
	@echo "make bench-streaming  streaming vs chunkwise vs the ViT: speed at 1024/2048 px, memory up to 16384 px (~1 h)"
	@echo "make bench-retention  time and peak memory of the retention op (1k/4k/16k tokens)"
	@echo "make bench-train      ViR-S training step (chunkwise/auto, checkpointing, 1D/2D) vs the SDPA ViT-S, 224-2048 px (~1 h)"
	@echo "make docs             build the documentation site into site/ (mkdocs build --strict)"
	@echo "make bench-backbone   H-ViR-T at 1333x800 beside MMDetection's Swin-T and ResNet-50: inference and training step"

FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export NO_ALBUMENTATIONS_UPDATE := 1

# Re-runs only when pyproject.toml changes (or .venv is missing).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,deploy,docs]"
	@touch $(STAMP)

# The OpenMMLab tier: mmcv 2.1.0 compiled once with ops (wheel cached in ~/.cache/vir-wheels), then
# mmengine/mmdet/mmseg/mim. Re-runs only when the core install or the script changes.
$(MM_STAMP): $(STAMP) downstream/install_mm.sh
	downstream/install_mm.sh $(PY)
	@touch $(MM_STAMP)

mm: $(MM_STAMP)

# Fashion-MNIST (the quickstart data and the tests' real pixels) from Debian's package, where we can.
$(FMNIST):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or see docs/index.md)"; exit 1; \
	fi

data: $(FMNIST)

install: $(STAMP)

# The quickstart: a small ViR on Fashion-MNIST, then the test split (prints test/acc1).
fit: $(STAMP) $(FMNIST)
	$(PY) -m vir_lightning fit --config configs/quickstart.yaml $(FIT_ARGS)

# pytest exits 5 when it collects nothing; that is a broken suite here, so it stays a failure.
# VIR_REQUIRE_MM=1 turns "mm tier not installed" from a skip into a failure: here it must be there;
# VIR_REQUIRE_DOCS=1 does the same for the docs build (tests/test_docs.py).
test: lint $(MM_STAMP) $(FMNIST)
	VIR_REQUIRE_MM=1 VIR_REQUIRE_DOCS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: lint $(FMNIST)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a stale page fails.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

# The throughput tables and plots of docs/results/throughput.md (about 15-23 min on 2 cores).
bench: $(STAMP)
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 vit_small_patch16_224 \
	  --resolutions 224 512 1024 2048 --batch-sizes 1 2 --modes parallel chunkwise auto \
	  --tasks inference train --repeats 3 --min-seconds 2 --out runs/bench

# The streaming tables (docs/results/streaming.md): speed side by side (band heights; the ViT), then working memory as
# the image grows (one call each; whole-image forms stop at 4096 px, streaming goes on to 16384 px).
bench-streaming: $(STAMP)
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 vit_small_patch16_224 --resolutions 1024 2048 \
	  --batch-sizes 1 --modes chunkwise streaming --band-rows 4 8 16 32 --tasks inference --repeats 5 \
	  --min-seconds 4 --out runs/bench_streaming_speed
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 --resolutions 1024 2048 4096 8192 16384 \
	  --batch-sizes 1 --modes chunkwise streaming --tasks inference --repeats 1 --min-seconds 0 \
	  --allocator system --out runs/bench_streaming_memory
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 --model-kwargs '{"decay": "2d"}' \
	  --resolutions 1024 2048 4096 --batch-sizes 1 --modes chunkwise streaming --tasks inference --repeats 1 \
	  --min-seconds 0 --allocator system --out runs/bench_streaming_2d

bench-retention: $(STAMP)
	$(PY) -m vir_lightning bench-retention

bench-train: $(STAMP)
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 vit_small_patch16_224 --resolutions 224 512 1024 \
	  --batch-sizes 1 --tasks train --train-modes chunkwise auto --grad-checkpointing off on \
	  --model-kwargs '' '{"decay": "2d"}' --train-max-resolution 2048 --repeats 3 --min-seconds 2 --out runs/bench_train
	$(PY) -m vir_lightning bench --models vir_small_patch16_224 vit_small_patch16_224 --resolutions 2048 \
	  --batch-sizes 1 --tasks train --train-modes chunkwise --grad-checkpointing off on \
	  --model-kwargs '' '{"decay": "2d"}' --train-max-resolution 2048 --repeats 1 --min-seconds 0 --out runs/bench_train_2048

bench-backbone: $(STAMP) $(MM_STAMP)
	$(PY) -m vir_lightning bench-backbone --model hvir_tiny --size 800 1333 --modes chunkwise \
	  --tasks inference train --baselines swin_t resnet50

mini-datasets: $(MM_STAMP) $(FMNIST)
	$(PY) -m vir_lightning build-mini-datasets data/mini --train 400 --val 100

downstream-mini: $(STAMP) $(MM_STAMP) $(FMNIST)
	experiments/downstream_mini/run.sh $(RUNS)

# The style CI keeps: lint rules and the formatter (`ruff format .` rewrites what --check reports).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
