# Baseline for configs/mini/hvir_upernet_mini.py: MMSegmentation's own Swin Transformer with Swin-T's depths
# at a third of its width (see _baseline_backbones.py). Same data, heads, schedule and initialisation
# policy (from scratch).
#
#   mim train mmseg configs/mini/swin_upernet_mini.py --gpus 0 --work-dir runs/mini/seg_swin
_base_ = ["./hvir_upernet_mini.py", "./_baseline_backbones.py"]

model = dict(backbone={{_base_.swin_t_third_width}})
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={{_base_.swin_no_decay_keys}}))
