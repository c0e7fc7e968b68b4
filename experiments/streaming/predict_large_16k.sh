#!/usr/bin/env bash
# predict-large on a 16,384² px real-pixel tiled TIFF with ViR-S/16 (1D decay): peak resident memory
# of the whole process and wall time, as reported in docs/results/streaming.md.
#   experiments/streaming/predict_large_16k.sh [OUT_DIR]        (after `make install`; ~10 min on 2 cores)
# The checkpoint is an untrained ViR-S/16 in the ImageNet config's architecture: memory and time do
# not depend on the weights, and no trained ImageNet weights can be downloaded here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/predict_large_16k}
CONFIG=configs/imagenet/vir_small_patch16_224.yaml
mkdir -p "$OUT"
[ -f "$OUT/mosaic_16k.tif" ] || /usr/bin/time -f "build-mosaic: %e s" \
  "$PY" -m vir_lightning build-mosaic "$OUT/mosaic_16k.tif" --size 16384 16384 --levels 3
"$PY" - "$OUT/vir_small_untrained.ckpt" <<'PY'
import sys, torch
from vir_lightning.tasks import ImageClassifier
torch.manual_seed(0)
module = ImageClassifier("vir_small_patch16_224", model_kwargs={"drop_path_rate": 0.1}, num_classes=1000, img_size=224)
torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, sys.argv[1])
PY
rm -f "$OUT/predictions.csv" "$OUT/predictions_features.csv"
for run in plain features; do
  extra=(); csv="$OUT/predictions.csv"
  if [ $run = features ]; then extra=(--features-dir "$OUT/features"); csv="$OUT/predictions_features.csv"; fi
  # the progress bar and any error lines go to $OUT/$run.log; /usr/bin/time's line to $OUT/time_$run.txt
  /usr/bin/time -o "$OUT/time_$run.txt" -f "predict-large ($run): %e s wall, peak resident %M KB" \
    "$PY" -m vir_lightning predict-large --config $CONFIG --ckpt_path "$OUT/vir_small_untrained.ckpt" \
      --images "$OUT/mosaic_16k.tif" --out "$csv" "${extra[@]}" 2> "$OUT/$run.log"
  cat "$OUT/time_$run.txt"
done
