"""ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np

from .base import ClassificationDataModule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
log = logging.getLogger(__name__)


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """Sorted image paths (jpg/jpeg/png, any case) in ``folder``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    if recursive:
        paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        paths = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(p for p in paths if p.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(p))


def decode_image(path: str, channels: int = 3) -> np.ndarray:
    """Decode to uint8 HxWxC RGB (channels=3) or HxWx1 gray (channels=1); ValueError naming the path."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path!r} (corrupt or not a jpg/png)")
    if image.dtype == np.uint16:  # 16-bit PNG
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 4:  # BGRA: drop alpha
        image = image[..., :3]
    if image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGR2GRAY)
        image = image if image.ndim == 3 else image[..., None]
    elif channels == 3:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


class ImageFileList:
    """(image, label) pairs decoded from files to ``channels`` (3 = RGB, 1 = gray); labels default
    to the file index. With ``skip_bad`` an undecodable file yields ``(None, label)``, is logged with
    its path, and counted in ``skipped``."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | None = None, skip_bad: bool = False,
                 channels: int = 3):
        self.paths = list(paths)
        self.labels = list(range(len(self.paths))) if labels is None else list(labels)
        self.skip_bad, self.channels, self.skipped = skip_bad, channels, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return decode_image(self.paths[i], self.channels), self.labels[i]
        except ValueError:
            if not self.skip_bad:
                raise
            self.skipped += 1
            log.warning("skipping undecodable image %s (%d skipped so far in this process)", self.paths[i],
                        self.skipped)
            return None, self.labels[i]


def _scan_split(split_dir: str, class_names: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """(class names, paths, labels) of one split folder; errors for empty or unknown classes."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"expected an image folder at {split_dir!r} (layout: root/train/<class>/*.jpg,"
                                " root/val/<class>/*.jpg)")
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not found:
        raise ValueError(f"{split_dir!r} has no class folders; expected {split_dir}/<class>/<image files>")
    files = {name: list_images(os.path.join(split_dir, name)) for name in found}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise ValueError(f"class folders without jpg/jpeg/png images in {split_dir!r}: {', '.join(empty)};"
                         " add images or remove the folders")
    if class_names is None:
        class_names = found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(f"{split_dir!r} has classes absent from the training split: {', '.join(unknown)}")
    index = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in found for p in files[name]]
    labels = [index[name] for name in found for _ in files[name]]
    return class_names, paths, labels


def infer_image_size(paths: Sequence[str], multiple: int = 16, limit: int = 64) -> int:
    """A square training size from the data: median shorter side of up to ``limit`` images, rounded
    down to a multiple of ``multiple`` and clamped to [multiple, 224]."""
    step = max(1, len(paths) // limit)
    sides = []
    for path in list(paths)[::step][:limit]:
        image = decode_image(path)
        sides.append(min(image.shape[:2]))
    side = int(np.median(sides))
    return int(min(224, max(multiple, side // multiple * multiple)))


class ImageFolderDataModule(ClassificationDataModule):
    """Image classification from ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Class names come from the training folders (sorted); jpg/jpeg/png in any case; grayscale and
    RGBA images are converted to RGB. The ``val`` split doubles as the test split unless
    ``test_dir`` names another folder.

    Args:
        root: dataset root.
        img_size: input size; ``None`` infers a square size from the training images (see
            :func:`infer_image_size`).
        train_dir, val_dir, test_dir: split folder names below ``root``.
        skip_bad_images: skip and count undecodable images instead of failing on the first one.
        **kwargs: augmentation and loader options of :class:`ClassificationDataModule`.
    """

    def __init__(self, root: str, img_size: int | Sequence[int] | None = None, train_dir: str = "train",
                 val_dir: str = "val", test_dir: str | None = None, skip_bad_images: bool = False, **kwargs):
        super().__init__(img_size=img_size, **kwargs)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data root {root!r} does not exist; expected root/{train_dir}/<class>/*.jpg"
                                    f" and root/{val_dir}/<class>/*.jpg")
        self.root, self.skip_bad_images = root, skip_bad_images
        self.class_names, train_paths, train_labels = _scan_split(os.path.join(root, train_dir), None)
        _, val_paths, val_labels = _scan_split(os.path.join(root, val_dir), self.class_names)
        test = _scan_split(os.path.join(root, test_dir), self.class_names) if test_dir else (None, val_paths,
                                                                                           val_labels)
        self._splits = {"train": (train_paths, train_labels), "val": (val_paths, val_labels),
                        "test": (test[1], test[2])}
        self.num_classes, self.in_chans = len(self.class_names), 3
        if self.img_size is None:
            self.img_size = infer_image_size(train_paths)

    def _sources(self):
        return {split: ImageFileList(paths, labels, skip_bad=self.skip_bad_images)
                for split, (paths, labels) in self._splits.items()}
