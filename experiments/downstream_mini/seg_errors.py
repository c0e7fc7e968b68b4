"""Where does a mini UPerNet's mIoU go: to the garments' classes, or to their masks?

    seg_errors.py CONFIG CHECKPOINT [--ade data/mini/ade/ADEChallengeData2016] [--split validation]

CONFIG and CHECKPOINT are a mini UPerNet run's (e.g. runs/mini/seg_hvir_pretrained/hvir_upernet_mini.py
and its iter_6000.pth). Every label map of the split is predicted with MMSegmentation's own inference
(the config's test pipeline, predictions at the labels' size) and scored four ways:

- as predicted: mmseg's mIoU;
- classes only: each garment keeps its exact mask and takes the label that most of its pixels got (among
  those predicted as any garment; background when none): what the segmenter's classification allows;
- masks only: each pixel predicted as a garment inside a true garment takes that garment's label, all
  others stay as predicted: what the segmenter's masks allow;
- one label per garment: as predicted, but the garment-predicted pixels of each true garment all take
  its majority label: what mixing labels inside one garment costs.

It also prints the share of garments whose majority label is right and the foreground IoU (any garment
against background). Garments are found as by classify_crops.py (one region per class after closing the
gaps of strappy garments). docs/results/downstream-mini.md reads these numbers for the protocol's runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from classify_crops import FIRST_GARMENT_LABEL, garments, label_maps_with_images, miou  # noqa: E402


def majority_garment_label(prediction: np.ndarray, pixels: np.ndarray) -> int:
    """The garment label most of ``pixels`` were predicted as, or background (1) when none was."""
    votes = prediction[pixels]
    votes = votes[votes >= FIRST_GARMENT_LABEL]
    return int(np.bincount(votes).argmax()) if votes.size else 1


def decompose(label_maps, predictions, classes: int) -> dict[str, float]:
    """Score ``predictions`` against ``label_maps`` (both as the label maps' values: 0 ignored,
    1 background, 2 + k garment k) as predicted, classes only, masks only and one label per garment
    (see the module docstring); also ``garments right`` (share) and ``foreground IoU``."""
    classes_only, masks_only, one_label = [], [], []
    right = total = foreground_intersection = foreground_union = 0
    for truth, prediction in zip(label_maps, predictions, strict=True):
        true_garment, predicted_garment = truth >= FIRST_GARMENT_LABEL, prediction >= FIRST_GARMENT_LABEL
        valid = truth > 0
        foreground_intersection += int((true_garment & predicted_garment & valid).sum())
        foreground_union += int(((true_garment | predicted_garment) & valid).sum())
        exact = np.where(true_garment, 1, truth)
        consistent = prediction.copy()
        for k, _, pixels in garments(truth):
            label = majority_garment_label(prediction, pixels)
            exact[pixels] = label
            consistent[pixels & predicted_garment] = label
            right += label == k + FIRST_GARMENT_LABEL
            total += 1
        classes_only.append(exact)
        one_label.append(consistent)
        masks_only.append(np.where(true_garment & predicted_garment, truth, prediction))
    return {
        "as predicted": miou(label_maps, predictions, classes),
        "classes only": miou(label_maps, classes_only, classes),
        "masks only": miou(label_maps, masks_only, classes),
        "one label per garment": miou(label_maps, one_label, classes),
        "garments right": right / max(total, 1),
        "foreground IoU": foreground_intersection / max(foreground_union, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--ade", default="data/mini/ade/ADEChallengeData2016")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args(argv)
    try:
        pairs = label_maps_with_images(args.ade, args.split)
    except ValueError as err:
        parser.error(str(err))
    for path in (args.config, args.checkpoint):
        if not os.path.isfile(path):
            parser.error(
                f"{path} does not exist; give a mini UPerNet run's config and checkpoint "
                "(runs/mini/seg_hvir_pretrained/hvir_upernet_mini.py iter_6000.pth)"
            )
    import cv2
    from mmseg.apis import inference_model, init_model  # the config's custom_imports register H-ViR

    try:
        model = init_model(args.config, args.checkpoint, device="cpu")
    except (OSError, KeyError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        parser.error(
            f"{args.config} with {args.checkpoint} does not load ({first_line}); give the run's own "
            "config and one of its iter_*.pth"
        )
    classes = len(model.dataset_meta["classes"]) - 1  # the garments, after the photo background
    label_maps, predictions = [], []
    for path, image_path in pairs:
        label_maps.append(cv2.imread(path, cv2.IMREAD_UNCHANGED))
        # mmseg's classes are the label maps' values less one (reduce_zero_label): back to the maps' values
        predictions.append(inference_model(model, image_path).pred_sem_seg.data[0].numpy() + 1)
    scores = decompose(label_maps, predictions, classes)
    print(
        f"{len(pairs)} images of {args.split}: "
        + ", ".join(f"{name} {100 * value:.2f}{'%' if 'right' in name else ''}" for name, value in scores.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
