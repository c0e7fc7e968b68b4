#!/usr/bin/env bash
# Install the OpenMMLab tier (mmcv 2.1.0 with compiled ops, mmengine, mmdet, mmseg, mim) into the
# virtual environment whose python is $1. Idempotent: a second run does nothing but checks.
#
# Why it is a script and not a pip extra:
#   * mmdet 3.3.0 / mmseg 1.2.2 assert mmcv < 2.2.0, and mmcv 2.1.0 exists on PyPI only as source.
#     It must be built with --no-build-isolation (otherwise it silently builds without ops and
#     Mask R-CNN fails with "No module named 'mmcv._ext'"). That takes ~10-17 min on 2 cores, so
#     the wheel is built once and cached in $VIR_WHEEL_CACHE, keyed by Python and torch version.
#   * openmim drags openxlab, which downgrades setuptools/requests/rich: install it --no-deps.
set -euo pipefail

PY=${1:?usage: install_mm.sh PATH/TO/venv/bin/python}
MMCV_VERSION=2.1.0

if "$PY" - <<'PYCHECK' 2>/dev/null; then
import importlib.metadata as md, mmcv.ops, mmdet, mmseg, mim  # noqa: F401
assert md.version("mmcv") == "2.1.0" and md.version("mmdet") == "3.3.0"
PYCHECK
  echo "mm tier already installed"
  exit 0
fi

# mmcv's setup.py, mmengine's `mmdet::` config inheritance and mim import pkg_resources (< 81).
"$PY" -m pip install --quiet "setuptools>=77.0.3,<81" wheel ninja psutil
"$PY" -m pip install --quiet "mmengine==0.10.7"

if ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
  TAG=$("$PY" -c 'import sys, torch; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')
  CACHE=${VIR_WHEEL_CACHE:-$HOME/.cache/vir-wheels}/$TAG
  WHEEL=$(ls "$CACHE"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    echo "building mmcv $MMCV_VERSION with ops (once; ~10-17 min on 2 cores) into $CACHE"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$PY" -m pip wheel --quiet --no-build-isolation --no-deps --wheel-dir "$BUILD" "mmcv==$MMCV_VERSION"
    mkdir -p "$CACHE"
    # Move into place only when complete, so an interrupted build never leaves a broken wheel cached.
    for built in "$BUILD"/mmcv-*.whl; do mv "$built" "$CACHE/.partial.whl" && mv "$CACHE/.partial.whl" "$CACHE/$(basename "$built")"; done
    WHEEL=$(ls "$CACHE"/mmcv-$MMCV_VERSION-*.whl | head -n 1)
  fi
  "$PY" -m pip install --quiet "$WHEEL"
fi

# mmseg imports ftfy and regex without declaring them; neither mmdet nor mmseg declares mmcv.
"$PY" -m pip install --quiet "mmdet==3.3.0" "mmsegmentation==1.2.2" ftfy regex "scikit-learn>=1.3"
"$PY" -m pip install --quiet --no-deps "openmim==0.3.9"
"$PY" -m pip install --quiet click colorama model-index pandas tabulate requests
"$PY" -c "import mmcv.ops, mmdet, mmseg, mim; print('mm tier ready: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)"
