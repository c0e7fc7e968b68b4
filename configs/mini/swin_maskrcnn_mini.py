# Baseline for configs/mini/hvir_maskrcnn_mini.py: MMDetection's own Swin Transformer with Swin-T's
# depths (2, 2, 6, 2) at a third of its width (embed_dims 32, stage widths 32/64/128/256 as H-ViR
# nano; 3.08M parameters against H-ViR nano's 2.46M), window 7. Same data, heads, schedule and
# initialisation policy (from scratch).
#
#   mim train mmdet configs/mini/swin_maskrcnn_mini.py --gpus 0 --work-dir runs/mini/det_swin
_base_ = ['./hvir_maskrcnn_mini.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=32,
        depths=(2, 2, 6, 2),
        num_heads=(1, 2, 4, 8),
        window_size=7,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        convert_weights=False,
        init_cfg=None,
    ),
)
# As MMDetection's Swin configs: no weight decay on the position tables either.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    '.gamma': dict(decay_mult=0.0),
    'absolute_pos_embed': dict(decay_mult=0.0),
    'relative_position_bias_table': dict(decay_mult=0.0),
}))
