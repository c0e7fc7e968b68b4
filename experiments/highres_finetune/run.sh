#!/usr/bin/env bash
# The paper's recipe at CPU scale: a short Fashion-MNIST fit at 28 px (quickstart model, 7×7 patch
# grid), then a fine-tune at 4× the side length (112 px, 28×28 = 784 patches) twice from the same
# checkpoint — once training in chunkwise form (the lean backward), once in parallel form. Both
# evaluate the same way, so any accuracy difference comes from the training form alone; the wall
# time and the peak resident memory of each whole fine-tune process are recorded beside it.
#   experiments/highres_finetune/run.sh [OUT_DIR]      (after `make install` and `make data`; ~15 min)
# Environment: STEPS (fine-tune steps, default 150), PRECISION (default 32-true; 64-true shows that
# the two forms train identically once rounding is out of the way), BASE (a 28 px checkpoint to reuse).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
OUT=$(mkdir -p "${1:-$REPO/runs/highres_finetune}" && cd "${1:-$REPO/runs/highres_finetune}" && pwd)
CONFIG=$REPO/configs/quickstart.yaml
STEPS=${STEPS:-150}
PRECISION=${PRECISION:-32-true}
# Each run works in its own folder: the quickstart config writes to runs/quickstart under the cwd.
mkdir -p "$OUT/base"
if [ -z "${BASE:-}" ] && [ ! -f "$OUT/base/runs/quickstart/checkpoints/last.ckpt" ]; then
  (cd "$OUT/base" && "$PY" -m vir_lightning fit --config "$CONFIG" --trainer.max_epochs 2 \
     --trainer.check_val_every_n_epoch 1 > fit.log 2>&1)
fi
BASE=${BASE:-$OUT/base/runs/quickstart/checkpoints/last.ckpt}
for form in chunkwise parallel; do
  mkdir -p "$OUT/$form"
  (cd "$OUT/$form" && /usr/bin/time -o time.txt -f "%e s wall, peak resident %M KB" \
     "$PY" -m vir_lightning fit --config "$CONFIG" --model.init_args.pretrained "$BASE" \
       --model.init_args.train_mode $form --model.init_args.eval_mode auto \
       --data.init_args.img_size 112 --data.init_args.batch_size 32 \
       --trainer.max_epochs 1 --trainer.limit_train_batches $STEPS --trainer.check_val_every_n_epoch 1 \
       --trainer.precision $PRECISION \
       --model.init_args.warmup_epochs 0 > fit.log 2>&1)
  echo "$form: $(cat "$OUT/$form/time.txt")"
  grep -E "test/acc1|test/loss" "$OUT/$form/fit.log" | tr -s ' ' || true
done
