# Baseline for configs/mini/hvir_upernet_mini.py: MMSegmentation's own ResNet-18 at half width (see
# _baseline_backbones.py). Same data, heads, schedule and initialisation policy (from scratch).
#
#   mim train mmseg configs/mini/r18_upernet_mini.py --gpus 0 --work-dir runs/mini/seg_r18
_base_ = ["./hvir_upernet_mini.py", "./_baseline_backbones.py"]

model = dict(backbone={{_base_.resnet18_half_width}})
