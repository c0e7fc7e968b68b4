"""ImageNet-style folders: ``root/train/<class>/**/*.jpg`` and ``root/val/<class>/**/*.jpg``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .base import ClassificationDataModule
from .files import IMAGE_SUFFIXES, ImageFileList, decode_image, infer_image_size, is_hidden, list_images

# decode_image, list_images and IMAGE_SUFFIXES stay importable from here (they lived here before files.py).
__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFileList",
    "ImageFolderDataModule",
    "decode_image",
    "infer_image_size",
    "list_images",
]

log = logging.getLogger(__name__)


def _scan_split(split_dir: str, class_names: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """(class names, paths, labels) of one split folder; errors for empty or unknown classes."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(
            f"expected an image folder at {split_dir!r} (layout: root/train/<class>/*.jpg, root/val/<class>/*.jpg)"
        )
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)) and not is_hidden(d))
    if not found:
        raise ValueError(f"{split_dir!r} has no class folders; expected {split_dir}/<class>/<image files>")
    # A class's images may sit in sub-folders of its folder (as torchvision's ImageFolder reads them).
    files = {name: list_images(os.path.join(split_dir, name), recursive=True) for name in found}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise ValueError(
            f"class folders without jpg/jpeg/png images in {split_dir!r}: {', '.join(empty)};"
            " add images or remove the folders"
        )
    if class_names is None:
        class_names = found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(f"{split_dir!r} has classes absent from the training split: {', '.join(unknown)}")
    loose = list_images(split_dir, recursive=False)
    if loose:  # as torchvision's ImageFolder, images outside a class folder have no label: said, not guessed
        log.warning(
            "%s: %d image(s) directly in the split folder, outside every class folder, are not used"
            " (e.g. %s); move them into their class folder",
            split_dir,
            len(loose),
            os.path.basename(loose[0]),
        )
    index = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in found for p in files[name]]
    labels = [index[name] for name in found for _ in files[name]]
    return class_names, paths, labels


class ImageFolderDataModule(ClassificationDataModule):
    """Image classification from ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Class names come from the training folders (sorted, hidden ones skipped); a class's images are
    every jpg/jpeg/png (any case) below its folder, in sub-folders too, hidden files and folders
    skipped — what ``predict`` reads from a folder; grayscale and RGBA images are converted to RGB.
    The ``val`` split doubles as the test split unless ``test_dir`` names another folder.

    Args:
        root: dataset root.
        img_size: input size; ``None`` infers a square size from the training images (see
            :func:`infer_image_size`).
        train_dir, val_dir, test_dir: split folder names below ``root``.
        skip_bad_images: skip and count undecodable images (also while inferring ``img_size``, and in
            ``predict``) instead of failing on the first one.
        **kwargs: augmentation and loader options of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str,
        img_size: int | Sequence[int] | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        skip_bad_images: bool = False,
        **kwargs,
    ):
        super().__init__(img_size=img_size, skip_bad_images=skip_bad_images, **kwargs)
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"data root {root!r} does not exist; expected root/{train_dir}/<class>/*.jpg"
                f" and root/{val_dir}/<class>/*.jpg"
            )
        train_folder = os.path.realpath(os.path.join(root, train_dir))
        for name, folder in (("val_dir", val_dir), ("test_dir", test_dir)):
            if folder and os.path.realpath(os.path.join(root, folder)) == train_folder:
                # the scores would be of the images it trained on
                raise ValueError(f"{name}={folder!r} is the training folder {train_dir!r}; give it held-out images")
        self.root = root
        self.class_names, train_paths, train_labels = _scan_split(os.path.join(root, train_dir), None)
        if len(self.class_names) < 2:
            raise ValueError(
                f"{os.path.join(root, train_dir)!r} has one class folder ({self.class_names[0]!r});"
                " classification needs at least 2 (one folder per class)"
            )
        _, val_paths, val_labels = _scan_split(os.path.join(root, val_dir), self.class_names)
        test = (
            _scan_split(os.path.join(root, test_dir), self.class_names) if test_dir else (None, val_paths, val_labels)
        )
        self._splits = {
            "train": (train_paths, train_labels),
            "val": (val_paths, val_labels),
            "test": (test[1], test[2]),
        }
        self.num_classes, self.in_chans = len(self.class_names), 3
        if self.img_size is None:
            self.img_size = infer_image_size(train_paths, skip_bad=skip_bad_images)

    def _sources(self):
        return {
            split: ImageFileList(paths, labels, skip_bad=self.skip_bad_images)
            for split, (paths, labels) in self._splits.items()
        }
