"""Refuse a detection/segmentation run whose data and model disagree, before the first step.

Two mistakes train for hours and evaluate to zero without any error from MMDetection or
MMSegmentation: a dataset whose ``metainfo.classes`` name none of the annotation file's categories
(``CocoDataset`` silently drops every annotation, e.g. when a new set is read with COCO's 80 default
names), and heads whose ``num_classes`` differ from the dataset's class count. Configs add::

    custom_imports = dict(imports=['downstream.hvir_backbone', 'downstream.data_checks'], ...)
    custom_hooks = [dict(type='DataMatchesModelHook')]

and the run stops with one message that names the fix (``--cfg-options …``).
"""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def _heads(model) -> dict[str, int]:
    """``{config key: num_classes}`` of the model's classification heads (Mask R-CNN, UPerNet…)."""
    found = {}
    roi_head = getattr(model, "roi_head", None)
    for name in ("bbox_head", "mask_head"):
        head = getattr(roi_head, name, None)
        if head is not None and hasattr(head, "num_classes"):
            found[f"model.roi_head.{name}.num_classes"] = head.num_classes
    for name in ("decode_head", "auxiliary_head"):
        head = getattr(model, name, None)
        if head is not None and hasattr(head, "num_classes"):
            found[f"model.{name}.num_classes"] = head.num_classes
    return found


def _has_instance(dataset) -> bool:
    """Whether any image keeps at least one annotated instance (stops at the first)."""
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        if any(not instance.get("ignore_flag", 0) for instance in info.get("instances", ())):
            return True
    return False


def check_data_matches_model(model, dataset, split: str = "train") -> None:
    """Raise ValueError when ``dataset``'s classes and ``model``'s heads disagree (see the module)."""
    classes = tuple(dataset.metainfo.get("classes") or ())
    heads = _heads(model.module if is_model_wrapper(model) else model)
    wrong = {key: n for key, n in heads.items() if n != len(classes)}
    if classes and wrong:
        # mmseg's decode heads count classes as the dataset does; mmdet's heads have no background class.
        fix = " ".join(f"{key}={len(classes)}" for key in wrong)
        raise ValueError(
            f"the {split} dataset has {len(classes)} classes {classes[:6]}{'…' if len(classes) > 6 else ''} but "
            + ", ".join(f"{key}={n}" for key, n in wrong.items())
            + f"; pass --cfg-options {fix} (or set metainfo.classes to the data's classes)"
        )
    # Detection sets list instances per image; a segmentation set's labels are in its PNGs.
    if len(dataset) and "instances" in dataset.get_data_info(0) and not _has_instance(dataset):
        raise ValueError(
            f"no annotation of the {split} set belongs to metainfo.classes={classes}, so it would"
            f" {'train' if split == 'train' else 'evaluate'} as background only. Set --cfg-options"
            f" {split}_dataloader.dataset.metainfo.classes=(…) (for every split) to the annotation file's"
            " category names"
        )


@HOOKS.register_module()
class DataMatchesModelHook(Hook):
    """Run :func:`check_data_matches_model` on the training set before training and on the
    validation/test set before evaluating."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        check_data_matches_model(runner.model, runner.train_dataloader.dataset, "train")

    def before_val(self, runner) -> None:
        check_data_matches_model(runner.model, runner.val_dataloader.dataset, "val")

    def before_test(self, runner) -> None:
        check_data_matches_model(runner.model, runner.test_dataloader.dataset, "test")
