# UPerNet, 160k iterations, 512x512 crops, ADE20K semantic segmentation, H-ViR-T backbone.
#
#   mim train mmseg configs/vir_upernet_ade20k.py                 # one process (CPU: --gpus 0)
#   mim train mmseg configs/vir_upernet_ade20k.py --gpus 8 --launcher pytorch
#   mim train mmseg configs/vir_upernet_ade20k.py --gpus 16 --gpus-per-node 8 --launcher slurm --partition P
#
# Data: the standard layout data/ade/ADEChallengeData2016/{images,annotations}/{training,validation},
# relative to the working directory. Another set in this layout, pretrained weights, schedule and
# batch size are set with --cfg-options only (see docs/guides/downstream.md). Batch 2 per GPU x 8 GPUs = 16.
_base_ = [
    "mmseg::_base_/models/upernet_r50.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]

custom_imports = dict(imports=["downstream.hvir_backbone", "downstream.data_checks"], allow_failed_imports=False)
# Stops a run whose dataset classes match no annotation or differ from the heads' num_classes.
custom_hooks = [dict(type="DataMatchesModelHook")]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type="HViRBackbone",
        arch="tiny",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        # Parallel for short grids, chunkwise with the lean backward above the crossover.
        train_mode="auto",
        with_cp=False,  # True: checkpoint the retention blocks (less memory, same gradients)
        eval_mode="chunkwise",
        # ImageNet weights from `python -m vir_lightning export-backbone CKPT OUT`:
        #   --cfg-options model.backbone.init_cfg.checkpoint=OUT
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    decode_head=dict(in_channels=[80, 160, 320, 640], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150),
)

# AdamW + linear warmup + linear decay, as for Swin/MambaVision UPerNet.
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={".gamma": dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
