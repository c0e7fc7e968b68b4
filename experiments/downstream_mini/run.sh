#!/usr/bin/env bash
# Downstream that learns, at CPU scale (README "Downstream that learns"; results in
# docs/downstream_mini.md): the mini COCO / ADE sets, cluttered Fashion-MNIST pretraining of H-ViR
# nano with the Lightning suite, export of its backbone, then Mask R-CNN and UPerNet with H-ViR nano (from
# scratch and pretrained) and MMDetection's / MMSegmentation's own ResNet-18 and Swin baselines of
# the same widths, all through `mim train` with the shipped configs/mini/*.py.
#
#   experiments/downstream_mini/run.sh [RUN ...]      (after `make mm` and `make data`)
#
# RUN is any of: det_hvir_scratch det_hvir_pretrained det_r18 det_swin
#                seg_hvir_scratch seg_hvir_pretrained seg_r18 seg_swin      (default: all, in this order)
# Environment: OUT (default runs/mini), SEED (default 0; work folders get _s$SEED after the first),
# THREADS (torch threads per run, default: all cores), OBJECTS (the mini sets' objects: fashion-mnist,
# the protocol's, or digits: scikit-learn's handwritten digits on its photos, built in data/mini_digits and
# reached through --cfg-options alone; the pretraining stays Fashion-MNIST's). A run whose folder has result.json is skipped,
# so the script resumes where it stopped; with THREADS=1, two at a time on the 2-core VM, pretraining took
# 31 minutes, each Mask R-CNN run about 28 and the pretrained H-ViR UPerNet run 27.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}
MIM=$(dirname "$PY")/mim
OUT=${OUT:-runs/mini}
SEED=${SEED:-0}
SUFFIX=$([ "$SEED" = 0 ] && echo "" || echo "_s$SEED")
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"
ALL="det_hvir_scratch det_hvir_pretrained det_r18 det_swin seg_hvir_scratch seg_hvir_pretrained seg_r18 seg_swin"
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || read -r -a RUNS <<< "$ALL"
for run in "${RUNS[@]}"; do  # every name checked before hours of training start
  case " $ALL " in *" $run "*) ;; *) echo "error: unknown run '$run'; choose from $ALL" >&2; exit 2 ;; esac
done

OBJECTS=${OBJECTS:-fashion-mnist}
DATA=data/mini$([ "$OBJECTS" = fashion-mnist ] || echo "_$OBJECTS")
if [ ! -f $DATA/coco/annotations/instances_val2017.json ] || [ ! -d $DATA/ade/ADEChallengeData2016 ]; then
  "$PY" -m vir_lightning build-mini-datasets $DATA --train 400 --val 100 --objects "$OBJECTS"
fi
# The configs name data/mini and its garments; another set reaches them through --cfg-options alone.
DET_DATA=() SEG_DATA=()
if [ "$OBJECTS" != fashion-mnist ]; then
  data_options() {
    "$PY" -c 'import sys; from downstream import mini_datasets as m
print("\n".join(m.cfg_options(m.set_roots(sys.argv[1]), m.OBJECT_SETS[sys.argv[2]], sys.argv[3])))' "$DATA" "$OBJECTS" "$1"
  }
  mapfile -t DET_DATA < <(data_options det)
  mapfile -t SEG_DATA < <(data_options seg)
fi

BACKBONE=$OUT/hvir_nano_backbone.pth
pretrain() {
  # H-ViR nano classifies cluttered Fashion-MNIST (training garments on photo crops, 64 px, 16 epochs);
  # the detection/segmentation validation images paste only test garments.
  local root=$OUT/pretrain_hvir_nano
  if [ ! -f "$root/checkpoints/last.ckpt" ]; then
    # The config names its logger's and checkpoint's folders; under another OUT they move with it.
    sed "s#runs/mini/pretrain_hvir_nano#$root#g" configs/mini/pretrain_hvir_nano.yaml > "$root.yaml"
    "$PY" -m vir_lightning fit --config "$root.yaml" --overwrite true > "$root.log" 2>&1
  fi
  [ -f "$BACKBONE" ] || "$PY" -m vir_lightning export-backbone "$root/checkpoints/last.ckpt" "$BACKBONE"
}

# Pretrained backbones learn at a tenth of the heads' rate (the usual fine-tuning rule); from scratch, all
# parameters share one rate.
FINE_TUNE=optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult=0.1

train() {  # name package config [cfg-options ...]
  local name=$1$SUFFIX package=$2 config=$3; shift 3
  local work=$OUT/$name
  if [ -f "$work/result.json" ]; then echo "$name: done ($work/result.json)"; return; fi
  echo "$name: training ($work.log)"
  local start; start=$(date +%s)
  "$MIM" train "$package" "configs/mini/$config" --gpus 0 --work-dir "$work" \
    --cfg-options randomness.seed="$SEED" "$@" > "$work.log" 2>&1
  "$PY" experiments/downstream_mini/summarize.py collect "$work" "$work.log" --train-seconds $(( $(date +%s) - start ))
}

for run in "${RUNS[@]}"; do
  case $run in
    det_hvir_scratch) train "$run" mmdet hvir_maskrcnn_mini.py "${DET_DATA[@]}" ;;
    det_hvir_pretrained) pretrain; train "$run" mmdet hvir_maskrcnn_mini.py "${DET_DATA[@]}" \
      model.backbone.init_cfg.checkpoint="$BACKBONE" "$FINE_TUNE" ;;
    det_r18) train "$run" mmdet r18_maskrcnn_mini.py "${DET_DATA[@]}" ;;
    det_swin) train "$run" mmdet swin_maskrcnn_mini.py "${DET_DATA[@]}" ;;
    seg_hvir_scratch) train "$run" mmseg hvir_upernet_mini.py "${SEG_DATA[@]}" ;;
    seg_hvir_pretrained) pretrain; train "$run" mmseg hvir_upernet_mini.py "${SEG_DATA[@]}" \
      model.backbone.init_cfg.checkpoint="$BACKBONE" "$FINE_TUNE" ;;
    seg_r18) train "$run" mmseg r18_upernet_mini.py "${SEG_DATA[@]}" ;;
    seg_swin) train "$run" mmseg swin_upernet_mini.py "${SEG_DATA[@]}" ;;
  esac
done
"$PY" experiments/downstream_mini/summarize.py table "$OUT"
