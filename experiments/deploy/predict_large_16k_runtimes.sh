#!/usr/bin/env bash
# predict-large on a 16,384² px real-pixel tiled TIFF with ViR-S/16 (1D decay), in torch and in ONNX
# Runtime, one after the other: wall time and peak resident memory of each whole process, and whether
# the two CSVs agree. As reported in docs/results/deploy.md.
#   experiments/deploy/predict_large_16k_runtimes.sh [OUT_DIR]     (after `make install`; ~30 min on 2 cores)
# The model is an untrained ViR-S/16 (a pretrained folder of random weights): memory and time do not
# depend on the weights, and no trained ImageNet weights can be downloaded here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/deploy_16k}
mkdir -p "$OUT"
[ -f "$OUT/mosaic_16k.tif" ] || /usr/bin/time -f "build-mosaic: %e s" \
  "$PY" -m vir_lightning build-mosaic "$OUT/mosaic_16k.tif" --size 16384 16384 --levels 3
"$PY" - "$OUT/vir_small" <<'PY'
import sys, torch
from vir_lightning import create_model, save_pretrained
torch.manual_seed(0)
model = create_model("vir_small_patch16_224")
save_pretrained(model, sys.argv[1], overwrite=True,
                preprocessing={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
PY
/usr/bin/time -o "$OUT/time_export.txt" -f "export-onnx (streaming-step, 16384 px wide): %e s wall, peak resident %M KB" \
  "$PY" -m vir_lightning export-onnx "$OUT/vir_small" "$OUT/step_16k.onnx" --form streaming-step --width 16384 \
  --overwrite > "$OUT/export.log" 2>&1
cat "$OUT/time_export.txt"; tail -1 "$OUT/export.log"
for runtime in torch onnxruntime; do
  weights=(--ckpt_path "$OUT/vir_small")
  [ $runtime = onnxruntime ] && weights=(--runtime onnxruntime --onnx "$OUT/step_16k.onnx")
  # the progress bar and any error lines go to $OUT/$runtime.log; /usr/bin/time's line to $OUT/time_$runtime.txt
  /usr/bin/time -o "$OUT/time_$runtime.txt" -f "predict-large ($runtime): %e s wall, peak resident %M KB" \
    "$PY" -m vir_lightning predict-large "${weights[@]}" --images "$OUT/mosaic_16k.tif" \
      --out "$OUT/predictions_$runtime.csv" --overwrite 2> "$OUT/$runtime.log"
  cat "$OUT/time_$runtime.txt"
done
"$PY" - "$OUT" <<'PY'
import csv, sys
rows = {r: next(csv.DictReader(open(f"{sys.argv[1]}/predictions_{r}.csv"))) for r in ("torch", "onnxruntime")}
classes = {r: [rows[r][f"class_{i}"] for i in range(1, 6)] for r in rows}
gap = max(abs(float(rows["torch"][f"prob_{i}"]) - float(rows["onnxruntime"][f"prob_{i}"])) for i in range(1, 6))
print(f"top-5 equal: {classes['torch'] == classes['onnxruntime']} ({classes['torch']}); largest probability gap {gap:.1e}")
PY
