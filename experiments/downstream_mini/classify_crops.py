"""How well does the pretrained classifier label the mini ADE garments, each cropped from its image?

    classify_crops.py CKPT [--ade data/mini/ade/ADEChallengeData2016] [--split validation]
                      [--fill 0.5 0.62 0.75 0.85 1.0] [--canvas 64]

CKPT is the Lightning checkpoint of the cluttered Fashion-MNIST pretraining (before export-backbone).
Every garment of the split's label maps (one connected region per class, after closing the gaps of
strappy garments such as sandals) is cropped as a square around its box, the box filling ``--fill`` of
the square's side, resized to ``--canvas`` and classified. This bounds what the segmentation heads can
read off the pretrained features, and says at which object scale the classifier reads best
(docs/results/downstream-mini.md: about 81% at fills 0.75-0.85, i.e. garments of 48-54 px, against 72% at 1.0).
It also prints the mIoU of the label maps with every garment's exact mask given the classifier's label:
what the classifier's accuracy alone allows a segmenter.

The mini set's labels (downstream/mini_datasets.py): 0 ignored, 1 the photo background, 2 + k the
Fashion-MNIST class k, so the classifier's class order is the segmentation set's garment order.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import cv2
import numpy as np
import torch

FIRST_GARMENT_LABEL = 2


def garments(label_map: np.ndarray, min_pixels: int = 20):
    """``(class k, (y0, x0, y1, x1), pixels)`` for each garment region of an ADE label map (``pixels``: a
    bool map of its labelled pixels)."""
    closing = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for value in np.unique(label_map[label_map >= FIRST_GARMENT_LABEL]):
        labelled = label_map == value
        count, regions = cv2.connectedComponents(cv2.morphologyEx(labelled.astype(np.uint8), cv2.MORPH_CLOSE, closing))
        for region in range(1, count):
            pixels = labelled & (regions == region)  # the box from these: closing grows shapes at the border
            if pixels.sum() >= min_pixels:
                ys, xs = np.nonzero(pixels)
                yield int(value) - FIRST_GARMENT_LABEL, (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1), pixels


def label_maps_with_images(ade: str, split: str) -> list[tuple[str, str]]:
    """``(label map, image)`` paths of an ADE-layout split, sorted; ValueError when the split has no
    label maps or a label map has no image."""
    labels = sorted(glob.glob(os.path.join(ade, "annotations", split, "*.png")))
    if not labels:
        raise ValueError(
            f"no label maps under {ade}/annotations/{split}; build them with "
            "`python -m vir_lightning build-mini-datasets data/mini --train 400 --val 100`"
        )
    pairs = [
        (label, os.path.join(ade, "images", split, os.path.basename(label)[: -len(".png")] + ".jpg"))
        for label in labels
    ]
    for label, image in pairs:
        if not os.path.isfile(image):
            raise ValueError(f"{image} is missing: the label map {label} has no image; rebuild the set")
    return pairs


def miou(label_maps, guesses, classes: int) -> float:
    """mIoU of ``guesses`` against ``label_maps`` (both in the label maps' values: 0 ignored, 1 background,
    2 + k garment k) over the background and garment classes present in either, as mmseg counts it."""
    intersection, union = np.zeros(classes + 1), np.zeros(classes + 1)
    for truth, guess in zip(label_maps, guesses, strict=True):
        valid = truth > 0
        for c in range(classes + 1):
            t, g = (truth == c + 1) & valid, (guess == c + 1) & valid
            intersection[c] += (t & g).sum()
            union[c] += (t | g).sum()
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def miou_with_exact_masks(label_maps, found, predicted, classes: int) -> float:
    """mIoU of label maps whose garments keep their exact masks but take the classifier's labels: the
    segmentation that classification alone allows."""
    guesses = [np.where(truth >= FIRST_GARMENT_LABEL, -1, truth).astype(int) for truth in label_maps]
    for (_, _, _, pixels, owner), label in zip(found, predicted, strict=True):  # every garment pixel relabelled
        guesses[owner][pixels] = label + FIRST_GARMENT_LABEL
    return miou(label_maps, guesses, classes)


def square_crop(image: np.ndarray, box, fill: float, canvas: int) -> np.ndarray:
    """The square around ``box`` whose side the box's longer side fills by ``fill``, at ``canvas`` px."""
    y0, x0, y1, x1 = box
    side = max(y1 - y0, x1 - x0) / fill
    pad = int(np.ceil(side))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    top, left = int(round((y0 + y1 - side) / 2)) + pad, int(round((x0 + x1 - side) / 2)) + pad
    crop = padded[top : top + int(round(side)), left : left + int(round(side))]
    return cv2.resize(crop, (canvas, canvas), interpolation=cv2.INTER_AREA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--ade", default="data/mini/ade/ADEChallengeData2016")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--fill", type=float, nargs="+", default=[0.5, 0.62, 0.75, 0.85, 1.0])
    parser.add_argument("--canvas", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        pairs = label_maps_with_images(args.ade, args.split)
    except ValueError as err:
        parser.error(str(err))
    if not all(0 < f <= 1 for f in args.fill) or args.canvas < 32:
        parser.error(f"--fill {args.fill} / --canvas {args.canvas}: fills in (0, 1] and a canvas of at least 32")
    from vir_lightning.deploy.checkpoints import classifier_from_checkpoint
    from vir_lightning.deploy.streaming_predict import normalisation

    try:
        model, _ = classifier_from_checkpoint(args.checkpoint)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    mean, std = (255 * np.array(v) for v in normalisation({"class_path": "ClutteredFashionMNISTDataModule"}))

    found, label_maps = [], []  # found: (class, RGB image, box, pixels, index of its label map)
    for path, image_path in pairs:
        image = cv2.imread(image_path)
        if image is None:
            parser.error(f"{image_path}, the image of {path}, is unreadable; rebuild the set")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        label_maps.append(cv2.imread(path, cv2.IMREAD_UNCHANGED))
        found += [(k, image, box, pixels, len(label_maps) - 1) for k, box, pixels in garments(label_maps[-1])]
    truth = torch.tensor([item[0] for item in found])
    print(f"{len(found)} garments in {len(pairs)} images of {args.split}")
    for fill in args.fill:
        crops = np.stack([(square_crop(im, box, fill, args.canvas) - mean) / std for _, im, box, _, _ in found])
        with torch.no_grad():
            predicted = model(torch.tensor(crops, dtype=torch.float32).permute(0, 3, 1, 2)).argmax(1)
        right = (predicted == truth).float()
        per_class = " ".join(f"{k}:{right[truth == k].mean():.2f}" for k in range(model.num_classes))
        miou = miou_with_exact_masks(label_maps, found, predicted.tolist(), model.num_classes)
        print(
            f"fill {fill:.2f}: accuracy {right.mean():.3f}, mIoU with exact masks {100 * miou:.1f}%   "
            f"per class {per_class}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
