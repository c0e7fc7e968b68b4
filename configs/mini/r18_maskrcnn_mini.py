# Baseline for configs/mini/hvir_maskrcnn_mini.py: MMDetection's own ResNet-18 at half width (see
# _baseline_backbones.py). Same data, heads, schedule and initialisation policy (from scratch).
#
#   mim train mmdet configs/mini/r18_maskrcnn_mini.py --gpus 0 --work-dir runs/mini/det_r18
_base_ = ["./hvir_maskrcnn_mini.py", "./_baseline_backbones.py"]

model = dict(backbone={{_base_.resnet18_half_width}})
