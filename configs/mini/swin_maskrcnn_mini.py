# Baseline for configs/mini/hvir_maskrcnn_mini.py: MMDetection's own Swin Transformer with Swin-T's depths
# at a third of its width (see _baseline_backbones.py). Same data, heads, schedule and initialisation
# policy (from scratch).
#
#   mim train mmdet configs/mini/swin_maskrcnn_mini.py --gpus 0 --work-dir runs/mini/det_swin
_base_ = ["./hvir_maskrcnn_mini.py", "./_baseline_backbones.py"]

model = dict(backbone={{_base_.swin_t_third_width}})
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={{_base_.swin_no_decay_keys}}))
