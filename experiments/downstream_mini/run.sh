#!/usr/bin/env bash
# Downstream that learns, at CPU scale (docs/guides/downstream.md; results in
# docs/results/downstream-mini.md): the mini COCO / ADE sets, cluttered Fashion-MNIST pretraining of H-ViR
# nano with the Lightning suite, export of its backbone, then Mask R-CNN and UPerNet with H-ViR nano (from
# scratch and pretrained) and MMDetection's / MMSegmentation's own ResNet-18 and Swin baselines of
# the same widths, all through `mim train` with the shipped configs/mini/*.py.
#
#   experiments/downstream_mini/run.sh [RUN ...]      (after `make mm` and `make data`)
#
# RUN is any of: det_hvir_scratch det_hvir_pretrained det_r18 det_swin
#                seg_hvir_scratch seg_hvir_pretrained seg_r18 seg_swin      (default: all, in this order)
# Environment: OBJECTS (the mini sets' objects: fashion-mnist, the protocol's, or digits: scikit-learn's
# handwritten digits on its photos, built in data/mini_digits and reached through --cfg-options alone),
# OUT (default runs/mini, or runs/mini_$OBJECTS for another set), PRETRAIN_OUT (where the Fashion-MNIST
# pretraining and its exported backbone live; default OUT: PRETRAIN_OUT=runs/mini reuses the protocol's
# on another set; a hvir_nano_backbone.pth already there is used as it is), SEED (default 0; work
# folders get _s$SEED after the first), THREADS (torch threads per run, default: all cores). A run
# whose folder has result.json is skipped, so the script resumes where it stopped; a segmentation run
# is then also scored with test-time flip (`mim test --tta`), once. With THREADS=1, two at a time on
# the 2-core VM, pretraining (40 epochs) took 88 minutes, each Mask R-CNN run about 28-30 and the
# pretrained H-ViR UPerNet run 26-27.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}
MIM=$(dirname "$PY")/mim
OBJECTS=${OBJECTS:-fashion-mnist}
SETS=$("$PY" -c 'from downstream.mini_datasets import OBJECT_SETS; print(" ".join(OBJECT_SETS))')
case " $SETS " in *" $OBJECTS "*) ;; *) echo "error: unknown OBJECTS '$OBJECTS'; choose from $SETS" >&2; exit 2 ;; esac
SET_SUFFIX=$([ "$OBJECTS" = fashion-mnist ] || echo "_$OBJECTS")
OUT=${OUT:-runs/mini$SET_SUFFIX}  # another set's results never mix with (or skip for) the garments'
PRETRAIN_OUT=${PRETRAIN_OUT:-$OUT}
SEED=${SEED:-0}
SUFFIX=$([ "$SEED" = 0 ] && echo "" || echo "_s$SEED")
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT" "$PRETRAIN_OUT"
ALL="det_hvir_scratch det_hvir_pretrained det_r18 det_swin seg_hvir_scratch seg_hvir_pretrained seg_r18 seg_swin"
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || read -r -a RUNS <<< "$ALL"
flip_checkpoint() {  # name: the checkpoint a finished segmentation run is scored with flip from
  local work=$OUT/$1 checkpoint
  checkpoint=$(cat "$work/last_checkpoint" 2>/dev/null) || true
  if [ ! -f "$checkpoint" ]; then
    echo "error: $1: no checkpoint to test with flip (${checkpoint:-$work/last_checkpoint missing});" \
      "train it again: remove $work/result.json and rerun" >&2
    return 2
  fi
  echo "$checkpoint"
}
needs_flip() {  # name: a segmentation run not yet scored with flip
  ! grep -q '"mIoU_flip"' "$OUT/$1/result.json" 2>/dev/null
}
for run in "${RUNS[@]}"; do  # every name, and every finished run's checkpoint, checked before hours of work start
  case " $ALL " in *" $run "*) ;; *) echo "error: unknown run '$run'; choose from $ALL" >&2; exit 2 ;; esac
  if [[ $run == seg_* ]] && [ -f "$OUT/$run$SUFFIX/result.json" ] && needs_flip "$run$SUFFIX"; then
    flip_checkpoint "$run$SUFFIX" > /dev/null
  fi
done

DATA=data/mini$SET_SUFFIX
if [ ! -f "$DATA/coco/annotations/instances_val2017.json" ] || [ ! -d "$DATA/ade/ADEChallengeData2016" ]; then
  "$PY" -m vir_lightning build-mini-datasets "$DATA" --train 400 --val 100 --objects "$OBJECTS"
fi
# The configs name data/mini and its garments; another set reaches them through --cfg-options alone.
DET_DATA=() SEG_DATA=()
if [ "$OBJECTS" != fashion-mnist ]; then
  data_options() {
    "$PY" -c 'import sys; from downstream import mini_datasets as m
print("\n".join(m.cfg_options(m.set_roots(sys.argv[1]), m.OBJECT_SETS[sys.argv[2]], sys.argv[3])))' "$DATA" "$OBJECTS" "$1"
  }
  options=$(data_options det)  # a failure stops here (set -e), rather than training on data/mini
  mapfile -t DET_DATA <<< "$options"
  options=$(data_options seg)
  mapfile -t SEG_DATA <<< "$options"
fi

BACKBONE=$PRETRAIN_OUT/hvir_nano_backbone.pth
pretrain() {
  # H-ViR nano classifies cluttered Fashion-MNIST (training garments on photo crops, 64 px, 40 epochs,
  # each a new image of every garment); the detection/segmentation validation images paste only test garments.
  local root=$PRETRAIN_OUT/pretrain_hvir_nano
  [ -f "$BACKBONE" ] && return  # exported already (or placed there: another pretraining's backbone)
  if [ ! -f "$root/checkpoints/last.ckpt" ]; then
    # The config names its logger's and checkpoint's folders; under another OUT they move with it
    # (the path escaped for sed: \, & and the # delimiter).
    local escaped; escaped=$(printf '%s' "$root" | sed 's/[\\&#]/\\&/g')
    sed "s#runs/mini/pretrain_hvir_nano#$escaped#g" configs/mini/pretrain_hvir_nano.yaml > "$root.yaml"
    "$PY" -m vir_lightning fit --config "$root.yaml" --overwrite true > "$root.log" 2>&1
  fi
  "$PY" -m vir_lightning export-backbone "$root/checkpoints/last.ckpt" "$BACKBONE"
}

# Pretrained backbones learn at a tenth of the heads' rate (the usual fine-tuning rule); from scratch, all
# parameters share one rate.
FINE_TUNE=optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult=0.1

train() {  # name package config [cfg-options ...]
  local name=$1$SUFFIX package=$2 config=$3; shift 3
  local work=$OUT/$name
  local data=("${SEG_DATA[@]}"); [ "$package" = mmdet ] && data=("${DET_DATA[@]}")  # the set's roots and classes
  if [ -f "$work/result.json" ]; then
    echo "$name: done ($work/result.json)"
  else
    echo "$name: training ($work.log)"
    local start; start=$(date +%s)
    "$MIM" train "$package" "configs/mini/$config" --gpus 0 --work-dir "$work" \
      --cfg-options randomness.seed="$SEED" "${data[@]}" "$@" > "$work.log" 2>&1
    "$PY" experiments/downstream_mini/summarize.py collect "$work" "$work.log" --train-seconds $(( $(date +%s) - start ))
  fi
  # Segmentation is also scored with test-time flip (the config's tta_pipeline), once per run: a run
  # trained before this step gets it on the next call.
  if [ "$package" = mmseg ] && needs_flip "$name"; then
    local checkpoint; checkpoint=$(flip_checkpoint "$name")
    "$MIM" test mmseg "configs/mini/$config" --checkpoint "$checkpoint" --tta --gpus 0 --work-dir "$work/flip" \
      --cfg-options randomness.seed="$SEED" "${data[@]}" > "$work.flip.log" 2>&1
    "$PY" experiments/downstream_mini/summarize.py flip "$work" "$work.flip.log"
  fi
}

for run in "${RUNS[@]}"; do
  case $run in
    det_hvir_scratch) train "$run" mmdet hvir_maskrcnn_mini.py ;;
    det_hvir_pretrained) pretrain; train "$run" mmdet hvir_maskrcnn_mini.py model.backbone.init_cfg.checkpoint="$BACKBONE" \
      "$FINE_TUNE" ;;
    det_r18) train "$run" mmdet r18_maskrcnn_mini.py ;;
    det_swin) train "$run" mmdet swin_maskrcnn_mini.py ;;
    seg_hvir_scratch) train "$run" mmseg hvir_upernet_mini.py ;;
    seg_hvir_pretrained) pretrain; train "$run" mmseg hvir_upernet_mini.py model.backbone.init_cfg.checkpoint="$BACKBONE" \
      "$FINE_TUNE" ;;
    seg_r18) train "$run" mmseg r18_upernet_mini.py ;;
    seg_swin) train "$run" mmseg swin_upernet_mini.py ;;
  esac
done
"$PY" experiments/downstream_mini/summarize.py table "$OUT"
