"""Fashion-MNIST from its standard IDX .gz files (Debian's ``dataset-fashion-mnist`` package)."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence

import numpy as np

from .base import ClassificationDataModule

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 + dtype 0x08 (uint8) + ndim, then dims."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # a truncated or non-gzip .gz: not a traceback
        raise ValueError(
            f"{path} cannot be read ({err}); replace it with an intact copy (e.g. reinstall dataset-fashion-mnist)"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated: header says {dims}, file holds {len(data) - offset} values")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def check_root(root: str, option: str = "--data.init_args.root") -> None:
    """Raise FileNotFoundError naming the missing IDX files, where Debian puts them, and ``option``
    (the command-line option that sets ``root``)."""
    missing = [name for name in FILES.values() if not os.path.isfile(os.path.join(root, name))]
    unpacked = [name for name in missing if os.path.isfile(os.path.join(root, name[: -len(".gz")]))]
    if unpacked:
        raise FileNotFoundError(
            f"Fashion-MNIST in {root!r} is unpacked ({', '.join(n[: -len('.gz')] for n in unpacked)}): the"
            f" standard .gz files are read as they are downloaded; gzip them again (gzip {root}/*-ubyte)"
        )
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root!r}: missing {', '.join(missing)}. On Debian/Ubuntu run"
            f" `sudo apt-get install dataset-fashion-mnist` (files land in {DEBIAN_ROOT}), or put the four"
            f" standard IDX .gz files in a folder and pass {option}=<folder>"
        )


def read_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` ("train" or "test"): images (N×28×28 uint8) and labels (N,); ValueError
    for files that do not belong together (mixed up or swapped: the counts or shapes differ)."""
    images_path, labels_path = (os.path.join(root, FILES[f"{split}_{kind}"]) for kind in ("images", "labels"))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{images_path} ({list(images.shape)}) and {labels_path} ({list(labels.shape)}) do not"
            " belong together: expected N×28×28 images and N labels; replace them with the"
            " dataset's own files"
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path} holds label {int(labels.max())}; Fashion-MNIST has {len(CLASS_NAMES)} classes")
    return images, labels


class _ArraySource:
    """(HxWx1 uint8 image, label) pairs from arrays, optionally restricted to ``indices``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None):
        self.images, self.labels = images, labels
        self.indices = np.arange(len(labels)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return self.images[j][..., None], int(self.labels[j])


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST: 60,000 train / 10,000 test 28×28 grayscale images in 10 classes.

    ``val_size`` images of the training set (a fixed random subset) are held out for validation;
    the official test set is the ``test`` split.

    Args:
        root: folder with the four IDX .gz files (default: where Debian's package puts them).
        val_size: training images held out for validation.
        img_size: model input size (28 = native).
        **kwargs: augmentation and loader options of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        val_size: int = 5000,
        img_size: int = 28,
        mean: Sequence[float] = (0.286,),
        std: Sequence[float] = (0.353,),
        **kwargs,
    ):
        super().__init__(img_size=img_size, mean=mean, std=std, **kwargs)
        check_root(root)
        if not 0 <= val_size < 60000:
            raise ValueError(f"val_size={val_size}; expected 0 <= val_size < 60000")
        self.root, self.val_size = root, val_size
        self.num_classes, self.class_names, self.in_chans = 10, list(CLASS_NAMES), 1

    def _sources(self):
        images, labels = read_split(self.root, "train")
        order = np.random.default_rng(0).permutation(len(labels))  # fixed held-out subset
        val_idx, train_idx = np.sort(order[: self.val_size]), np.sort(order[self.val_size :])
        test_images, test_labels = read_split(self.root, "test")
        return {
            "train": _ArraySource(images, labels, train_idx),
            "val": _ArraySource(images, labels, val_idx),
            "test": _ArraySource(test_images, test_labels),
        }
