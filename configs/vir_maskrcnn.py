# Mask R-CNN + FPN, 1x schedule (12 epochs), COCO instance segmentation, H-ViR-T backbone.
#
#   mim train mmdet configs/vir_maskrcnn.py                       # one process (CPU: --gpus 0)
#   mim train mmdet configs/vir_maskrcnn.py --gpus 8 --launcher pytorch
#   mim train mmdet configs/vir_maskrcnn.py --gpus 16 --gpus-per-node 8 --launcher slurm --partition P
#
# Data: the standard layout data/coco/{train2017,val2017,annotations/instances_*2017.json}, relative to
# the working directory. Another COCO-format set, pretrained weights, schedule and batch size are set
# with --cfg-options only (see docs/guides/downstream.md). Batch 2 per GPU x 8 GPUs = 16.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/datasets/coco_instance.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]

# mim runs the installed mmdet's tools/train.py: this module must come from an installed package.
custom_imports = dict(imports=["downstream.hvir_backbone", "downstream.data_checks"], allow_failed_imports=False)
# Stops a run whose dataset classes match no annotation or differ from the heads' num_classes.
custom_hooks = [dict(type="DataMatchesModelHook")]

model = dict(
    backbone=dict(
        _delete_=True,
        type="HViRBackbone",
        arch="tiny",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        # Parallel for short grids, chunkwise with the lean backward above the crossover.
        train_mode="auto",
        with_cp=False,  # True: checkpoint the retention blocks (less memory, same gradients)
        # Same outputs; at 1333x800 4x faster and 4.9x less memory than parallel (docs/results/highres-training.md).
        eval_mode="chunkwise",
        frozen_stages=-1,
        norm_eval=False,
        # ImageNet weights: export them with `python -m vir_lightning export-backbone CKPT OUT`, then
        #   --cfg-options model.backbone.init_cfg.checkpoint=OUT
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[80, 160, 320, 640]),
)

# AdamW as for Swin/MambaVision Mask R-CNN; no weight decay on norms, biases and LayerScale.
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={".gamma": dict(decay_mult=0.0)}),
)
