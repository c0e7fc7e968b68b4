# Baseline for configs/mini/hvir_maskrcnn_mini.py: MMDetection's own ResNet-18 at half width
# (base and stem channels 32, so stage widths 32/64/128/256 as H-ViR nano; 2.80M parameters against
# H-ViR nano's 2.46M). Same data, heads, schedule and initialisation policy (from scratch unless
# --cfg-options model.backbone.init_cfg=... is given).
#
#   mim train mmdet configs/mini/r18_maskrcnn_mini.py --gpus 0 --work-dir runs/mini/det_r18
_base_ = ['./hvir_maskrcnn_mini.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        base_channels=32,
        stem_channels=32,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,  # from scratch: every stage trains, BN statistics update (norm_eval False)
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None,
    ),
)
