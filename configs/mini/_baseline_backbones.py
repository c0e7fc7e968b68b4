# MMDetection's / MMSegmentation's own backbones for the mini protocol's baselines, at H-ViR nano's
# stage widths (32/64/128/256), from scratch. Both libraries build them from these same arguments.
# Used by configs/mini/{r18,swin}_{maskrcnn,upernet}_mini.py as `backbone={{_base_.NAME}}`.

# ResNet-18 at half width (base and stem channels 32): 2.80M parameters (H-ViR nano: 2.46M).
resnet18_half_width = dict(
    _delete_=True,  # replaces H-ViR's backbone dict instead of merging into it
    type="ResNet",
    depth=18,
    base_channels=32,
    stem_channels=32,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,  # from scratch: every stage trains, BN statistics update (norm_eval False)
    norm_cfg=dict(type="BN", requires_grad=True),
    norm_eval=False,
    style="pytorch",
    init_cfg=None,
)

# Swin-T's depths (2, 2, 6, 2) at a third of its width (embed_dims 32), window 7: 3.08M parameters.
swin_t_third_width = dict(
    _delete_=True,
    type="SwinTransformer",
    embed_dims=32,
    depths=(2, 2, 6, 2),
    num_heads=(1, 2, 4, 8),
    window_size=7,
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3),
    init_cfg=None,
)
# As MMDetection's Swin configs: no weight decay on the position tables either.
swin_no_decay_keys = {
    ".gamma": dict(decay_mult=0.0),
    "absolute_pos_embed": dict(decay_mult=0.0),
    "relative_position_bias_table": dict(decay_mult=0.0),
}
