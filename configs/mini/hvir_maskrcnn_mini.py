# CPU-scale protocol: Mask R-CNN + FPN on the mini COCO set, H-ViR nano backbone.
#
#   python -m vir_lightning build-mini-datasets data/mini --train 400 --val 100   # `make mini-datasets`
#   mim train mmdet configs/mini/hvir_maskrcnn_mini.py --gpus 0 --work-dir runs/mini/det_hvir
#
# Inherits configs/vir_maskrcnn.py; the only differences are the data (root, classes, the images'
# own scale), the schedule and the model size. Pretrained weights (see
# docs/guides/downstream.md): --cfg-options model.backbone.init_cfg.checkpoint=runs/mini/hvir_nano_backbone.pth
_base_ = ["../vir_maskrcnn.py"]

data_root = "data/mini/coco/"
classes = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
# The images' own size (320x240): nothing is upsampled, so a step costs what the data needs.
scale = (160, 120)
max_epochs = 24
batch_size = 4

# Heads sized to the backbone and the data (at most a few objects per 320x240 image): FPN and heads
# at 128 channels, 64 sampled RoIs per image, RoIAlign with 2x2 samples per bin (Detectron2's choice;
# mmdet's adaptive default made RoIAlign's CPU backward 45% of a step). The same heads for every
# backbone compared (configs/mini/*_maskrcnn_mini.py).
head_channels = 128
model = dict(
    backbone=dict(arch="nano", drop_path_rate=0.1),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=head_channels),
    rpn_head=dict(in_channels=head_channels, feat_channels=head_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=head_channels),
        bbox_head=dict(in_channels=head_channels, fc_out_channels=512, num_classes=len(classes)),
        mask_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=head_channels),
        mask_head=dict(in_channels=head_channels, conv_out_channels=head_channels, num_classes=len(classes)),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=64)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=500)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=scale, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val2017.json")
test_evaluator = val_evaluator

# On a few hundred images a higher rate than the 1x COCO recipe's 1e-4 (batch 16, pretrained): 1e-3, with
# gradients clipped and a 250-iteration warm-up. ResNet-18 and Swin train stably with it; so does H-ViR
# since its outputs are batch-normalised (HViRBackbone out_norm='bn'); with the per-position LayerNorm
# it diverged at 1e-3 and learnt nothing at 4e-4 or 5e-4 (docs/results/downstream-mini.md).
# Pretrained backbones train at a tenth of it (run.sh: custom_keys.backbone.lr_mult=0.1).
optim_wrapper = dict(optimizer=dict(lr=0.001), clip_grad=dict(max_norm=5.0, norm_type=2))
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs // 4)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(
        type="MultiStepLR",
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[max_epochs * 2 // 3, max_epochs * 11 // 12],
        gamma=0.1,
    ),
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
