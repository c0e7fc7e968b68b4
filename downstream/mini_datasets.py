"""Build small COCO-instance and ADE20K-layout datasets from real pixels that ship with packages.

No COCO or ADE20K images may be downloaded here, so the smoke sets are *real pixels in a constructed
layout*: objects from a small real image set, scaled up and pasted onto crops of photos that a package
ships. Two object sets (``--objects``):

* ``fashion-mnist`` (the protocol's): Fashion-MNIST garments (Debian's ``dataset-fashion-mnist``:
  training garments in training images, test garments in validation images) on the photos matplotlib
  ships (``grace_hopper.jpg``, ``Minduka_Present_Blue_Pack.png``);
* ``digits``: scikit-learn's handwritten digits (1,797 scans at 8×8 px, 17 grey levels; the first half in
  training images, the second half in validation images, as scikit-learn's own example splits them) on
  scikit-learn's two sample photos (``china.jpg``, ``flower.jpg``): another small real set, to check
  that nothing in the protocol depends on the garments (:func:`cfg_options` points the configs at it).

Each object's mask is its own foreground (pixels above a threshold), so the instance masks, boxes and
the semantic map are exact. Objects sit in separate cells of a grid, so they never overlap.

Layouts written (the standard ones the configs expect)::

    OUT/coco/{train2017,val2017}/000000000001.jpg …
    OUT/coco/annotations/instances_{train2017,val2017}.json       (polygons, iscrowd 0)
    OUT/ade/ADEChallengeData2016/images/{training,validation}/ADE_train_00000001.jpg …
    OUT/ade/ADEChallengeData2016/annotations/{training,validation}/ADE_train_00000001.png

ADE20K's PNGs use 0 = "other" (ignored: the configs load them with ``reduce_zero_label=True``),
1 = the photo background and 2…N+1 = the N object classes, so the segmentation set has N+1 classes
(``background`` first) and detection has N.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex

import cv2
import numpy as np

from vir_lightning.data.cluttered_fashion_mnist import paste_garment, photo_crop, sample_photos
from vir_lightning.data.fashion_mnist import DEBIAN_ROOT, check_root, read_split
from vir_lightning.io import atomic_output, check_output_path

#: The line `python -m vir_lightning --help` shows for this command (registered in pyproject.toml's
#: ``vir_lightning.commands`` entry points; read from this source without importing it).
COMMAND_HELP = "small COCO/ADE20K-layout sets from real pixels (mm smoke tests)"

COCO_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
ADE_CLASSES = ("background", *COCO_CLASSES)
# Words, not numerals: mmengine's --cfg-options would read "0" as the integer 0, not a class name.
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OBJECT_SETS = {"fashion-mnist": COCO_CLASSES, "digits": DIGIT_CLASSES}


def _photos(objects: str = "fashion-mnist") -> list[np.ndarray]:
    """The background photos of an object set, BGR (the channel order cv2.imwrite expects)."""
    if objects == "digits":
        from sklearn.datasets import load_sample_images

        return [cv2.cvtColor(photo, cv2.COLOR_RGB2BGR) for photo in load_sample_images().images]
    try:
        return [cv2.cvtColor(photo, cv2.COLOR_RGB2BGR) for photo in sample_photos()]
    except ImportError:  # pragma: no cover - matplotlib comes with mmdet
        raise ImportError("matplotlib (installed with mmdet) provides the background photos; run `make mm`") from None


def _objects(objects: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Grey object images (N×h×w uint8, background 0) and labels of ``split`` ("train" or "test") of an
    object set (a seam the tests replace)."""
    if objects == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 → 0..255
        half = len(images) // 2
        part = slice(0, half) if split == "train" else slice(half, None)
        return images[part], digits.target[part]
    return read_split(root, split)


def cfg_options(roots: dict[str, str], classes: tuple[str, ...], task: str) -> list[str]:
    """The ``--cfg-options`` that point a ``configs/mini`` config at sets built here: data roots,
    class names and the heads' class counts (``task``: "det" for Mask R-CNN, "seg" for UPerNet)."""
    if task not in ("det", "seg"):
        raise ValueError(f"task={task!r}: expected 'det' or 'seg'")
    # mmengine's DictAction drops spaces and splits on commas, brackets and quotes: such a path or
    # name would arrive changed, silently.
    for text in (*roots.values(), *classes):
        if any(c in text for c in " ,()[]'\""):
            raise ValueError(
                f"{text!r}: --cfg-options cannot carry spaces, commas, brackets or quotes;"
                " choose a path or class name without them"
            )
    splits = ("train", "val", "test")
    names = classes if task == "det" else ("background", *classes)
    # a tuple, so that a one-class set is a sequence too (a bare name would be a string)
    options = [f"{split}_dataloader.dataset.metainfo.classes=({','.join(names)},)" for split in splits]
    if task == "det":
        options += [f"{split}_dataloader.dataset.data_root={roots['coco']}/" for split in splits]
        options += [
            f"{split}_evaluator.ann_file={roots['coco']}/annotations/instances_val2017.json"
            for split in ("val", "test")
        ]
        options += [f"model.roi_head.{head}.num_classes={len(names)}" for head in ("bbox_head", "mask_head")]
    else:
        options += [f"{split}_dataloader.dataset.data_root={roots['ade']}" for split in splits]
        options += [f"model.{head}.num_classes={len(names)}" for head in ("decode_head", "auxiliary_head")]
    return options


def compose(rng: np.random.Generator, photos, garments, labels, size: tuple[int, int], grid=(2, 3), max_objects=4):
    """One image: a random photo crop with 1…max_objects garments pasted into distinct grid cells.

    Returns ``(image HxWx3 uint8, [(class_index, mask HxW bool), …])``.
    """
    height, width = size
    image = photo_crop(rng, photos, size)
    rows, cols = grid
    cell_h, cell_w = height // rows, width // cols
    cells = rng.choice(rows * cols, size=rng.integers(1, max_objects + 1), replace=False)
    objects = []
    for cell in cells:
        index = rng.integers(len(labels))
        side = int(min(cell_h, cell_w) * rng.uniform(0.6, 0.95))
        y = (cell // cols) * cell_h + rng.integers(cell_h - side + 1)
        x = (cell % cols) * cell_w + rng.integers(cell_w - side + 1)
        mask = np.zeros((height, width), dtype=bool)
        mask[y : y + side, x : x + side] = paste_garment(rng, image, garments[index], side, y, x)
        objects.append((int(labels[index]), mask))
    return image, objects


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def build_coco(
    out: str,
    rng,
    photos,
    splits: dict[str, tuple[int, np.ndarray, np.ndarray]],
    size=(240, 320),
    classes: tuple[str, ...] = COCO_CLASSES,
) -> None:
    """COCO instance layout under ``out`` (replaced atomically).

    ``splits`` maps a split name to ``(image count, objects, labels)``; label ``i`` is ``classes[i]``.
    """
    categories = [dict(id=i + 1, name=name, supercategory="object") for i, name in enumerate(classes)]
    with atomic_output(out, directory=True) as tmp:
        os.makedirs(os.path.join(tmp, "annotations"))
        next_image, next_ann = 1, 1
        for split, (count, garments, labels) in splits.items():
            os.makedirs(os.path.join(tmp, split))
            images, annotations = [], []
            for _ in range(count):
                image, objects = compose(rng, photos, garments, labels, size)
                name = f"{next_image:012d}.jpg"
                cv2.imwrite(os.path.join(tmp, split, name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                images.append(dict(id=next_image, file_name=name, height=size[0], width=size[1]))
                for label, mask in objects:
                    polygons = _polygons(mask)
                    if not polygons:
                        continue
                    ys, xs = np.nonzero(mask)
                    x0, y0 = int(xs.min()), int(ys.min())
                    annotations.append(
                        dict(
                            id=next_ann,
                            image_id=next_image,
                            category_id=label + 1,
                            iscrowd=0,
                            bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                            area=float(mask.sum()),
                            segmentation=polygons,
                        )
                    )
                    next_ann += 1
                next_image += 1
            with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def build_ade(out: str, rng, photos, splits: dict[str, tuple[int, np.ndarray, np.ndarray]], size=(192, 256)) -> None:
    """ADE20K layout under ``out`` (``…/ADEChallengeData2016``, replaced atomically); ``splits`` as for COCO."""
    with atomic_output(out, directory=True) as tmp:
        for split, (count, garments, labels) in splits.items():
            prefix = "ADE_train" if split == "training" else "ADE_val"
            os.makedirs(os.path.join(tmp, "images", split))
            os.makedirs(os.path.join(tmp, "annotations", split))
            for i in range(1, count + 1):
                image, objects = compose(rng, photos, garments, labels, size)
                seg = np.ones(size, dtype=np.uint8)  # 1 = background photo
                for label, mask in objects:
                    seg[mask] = label + 2
                cv2.imwrite(os.path.join(tmp, "images", split, f"{prefix}_{i:08d}.jpg"), image)
                cv2.imwrite(os.path.join(tmp, "annotations", split, f"{prefix}_{i:08d}.png"), seg)


def set_roots(out: str) -> dict[str, str]:
    """Where :func:`build` puts the two sets under ``out``: ``{"coco": …, "ade": …}``."""
    return {"coco": os.path.join(out, "coco"), "ade": os.path.join(out, "ade", "ADEChallengeData2016")}


def build(
    out: str,
    fmnist_root: str = DEBIAN_ROOT,
    train: int = 16,
    val: int = 8,
    seed: int = 0,
    objects: str = "fashion-mnist",
) -> dict[str, str]:
    """Build both sets under ``out`` from an object set of :data:`OBJECT_SETS`; returns their roots."""
    if objects not in OBJECT_SETS:
        raise ValueError(f"objects={objects!r}: choose from {', '.join(OBJECT_SETS)}")
    if train < 1 or val < 1:
        raise ValueError(f"train={train}, val={val}: each split needs at least one image")
    roots = set_roots(out)
    for root in roots.values():  # both refused before either is written
        check_output_path(root, directory=True, replaces=True)
    if objects == "fashion-mnist":
        check_root(fmnist_root, option="--fmnist-root")
    photos = _photos(objects)
    # Training images paste the set's *training* objects and validation images its held-out ones, so no
    # object is seen in both, and a backbone pretrained on Fashion-MNIST's training split has not seen
    # the validation garments either.
    train_objects, val_objects = _objects(objects, fmnist_root, "train"), _objects(objects, fmnist_root, "test")
    build_coco(
        roots["coco"],
        np.random.default_rng(seed),
        photos,
        {"train2017": (train, *train_objects), "val2017": (val, *val_objects)},
        classes=OBJECT_SETS[objects],
    )
    build_ade(
        roots["ade"],
        np.random.default_rng(seed + 1),
        photos,
        {"training": (train, *train_objects), "validation": (val, *val_objects)},
    )
    return roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vir_lightning build-mini-datasets",
        description="Build small COCO-instance and ADE20K-layout sets from real pixels shipped with packages.",
    )
    parser.add_argument("out", help="output folder (gets coco/ and ade/ADEChallengeData2016/)")
    parser.add_argument("--train", type=int, default=16, help="training images per set (default 16)")
    parser.add_argument("--val", type=int, default=8, help="validation images per set (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--objects",
        choices=list(OBJECT_SETS),
        default="fashion-mnist",
        help="the objects pasted: Fashion-MNIST garments (the protocol's) or scikit-learn's digits",
    )
    parser.add_argument("--fmnist-root", default=DEBIAN_ROOT, help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    roots = build(args.out, args.fmnist_root, args.train, args.val, args.seed, args.objects)
    classes = OBJECT_SETS[args.objects]
    print(f"COCO layout:   {roots['coco']}  ({len(classes)} classes: {', '.join(classes)})")
    print(f"ADE20K layout: {roots['ade']}  ({len(classes) + 1} classes: background, {', '.join(classes)})")
    if (args.objects, os.path.normpath(args.out)) != ("fashion-mnist", os.path.join("data", "mini")):
        for task, configs in (("det", "*_maskrcnn_mini.py"), ("seg", "*_upernet_mini.py")):
            try:
                options = shlex.join(cfg_options(roots, classes, task))  # quoted for a shell
            except ValueError as err:  # the sets are written and fine; only the hint cannot be given
                print(f"note: no --cfg-options for configs/mini/{configs}: {err}")
                break
            print(f"configs/mini/{configs} on these sets: --cfg-options {options}")
    return 0
