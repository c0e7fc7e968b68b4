"""Cluttered Fashion-MNIST: one garment pasted at a random place on a real photograph, among clutter.

In the spirit of the cluttered-MNIST benchmarks for attention models (Mnih et al. 2014; Jaderberg
et al. 2015), from real pixels that installed packages ship: the background is a crop of one of
matplotlib's sample photographs, the object is a Fashion-MNIST garment (rescaled, tinted, pasted
through its own foreground mask at a uniformly random position), and K clutter fragments are cut
from *other* garments of the same split. The label is the garment's class.

Splits never share a garment or a photo region:

* ``train``: Fashion-MNIST's training garments, the left ``train_fraction`` of every photo's columns;
* ``val``: the first half of Fashion-MNIST's test garments, the remaining right part of every photo;
* ``test``: the second half of the test garments, the same right part.

Every image is generated on the fly and is a pure function of ``(seed, split, index)``; the object's
centre and size are kept (:meth:`ClutteredSource.layout`) so accuracy can be broken down by position.
With ``redraw_train`` the training split becomes a function of ``(seed, split, index, epoch)``: the
same garment, but a new photo crop, place, size, tint and clutter every epoch, so a fit cannot
memorise the layouts (16 fixed epochs fit the training images to 90% while validation stays at 75%).
``python -m vir_lightning export-cluttered OUT`` (:mod:`vir_lightning.commands.export_cluttered`) writes
the same images out as an image folder (:func:`export_image_folder`), readable by ``ImageFolderDataModule``.
:func:`paste_garment` is also what ``downstream/mini_datasets.py`` uses to build its detection and
segmentation sets.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import cv2
import numpy as np

from ..io import atomic_output
from .base import ClassificationDataModule
from .fashion_mnist import CLASS_NAMES, DEBIAN_ROOT, check_root, read_split

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
FOREGROUND_THRESHOLD = 40  # Fashion-MNIST's background is exactly 0; garments are far brighter
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def sample_photos() -> list[np.ndarray]:
    """matplotlib's bundled sample photographs as RGB uint8 arrays."""
    from matplotlib import cbook

    photos = []
    for name in PHOTOS:
        path = cbook.get_sample_data(name, asfileobj=False)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"matplotlib's sample photo {path} could not be read")
        photos.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return photos


def photo_crop(rng: np.random.Generator, photos: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """A random crop of ``size`` (height, width) from a random photo, zoomed 1.0–1.6× and maybe mirrored."""
    height, width = size
    photo = photos[rng.integers(len(photos))]
    scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.6)
    resized = cv2.resize(photo, (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale))))
    top = rng.integers(resized.shape[0] - height + 1)
    left = rng.integers(resized.shape[1] - width + 1)
    crop = resized[top : top + height, left : left + width]
    return (crop[:, ::-1] if rng.random() < 0.5 else crop).copy()


def paste_garment(
    rng: np.random.Generator, image: np.ndarray, garment: np.ndarray, side: int | None, top: int, left: int
) -> np.ndarray:
    """Paste a grey garment (or a piece of one), resized to ``side`` (None: as is), at (top, left).

    ``image`` (H×W×3 uint8) is changed in place. Only the garment's own foreground is pasted (pixels
    above ``FOREGROUND_THRESHOLD``), in a random colour per garment so that classes are not told
    apart by grey level. Returns the pasted mask (bool, the pasted patch's shape).
    """
    resized = garment if side is None else cv2.resize(garment, (side, side), interpolation=cv2.INTER_LINEAR)
    mask = resized > FOREGROUND_THRESHOLD
    tint = rng.uniform(0.5, 1.0, size=3)
    region = image[top : top + resized.shape[0], left : left + resized.shape[1]]
    region[mask] = (resized[mask, None] * tint).astype(np.uint8)
    return mask


class ClutteredSource:
    """``(H×W×3 uint8 image, label)`` pairs generated from ``(seed, split, index)``.

    Args:
        garments, labels: the split's Fashion-MNIST images (N×28×28) and labels.
        photos: the split's photo regions (RGB).
        canvas: image side in pixels.
        object_scale: range of the garment's side as a fraction of the canvas.
        clutter: fragments per image, each a ``clutter_size``-pixel square of another garment.
        seed, split: make every image a pure function of ``(seed, split, index)``.
        redraw: draw every image anew each epoch (:meth:`set_epoch`): a function of ``(seed, split,
            index, epoch)``; the garment and label of an index stay the same.
    """

    def __init__(
        self,
        garments: np.ndarray,
        labels: np.ndarray,
        photos: Sequence[np.ndarray],
        canvas: int,
        object_scale: Sequence[float],
        clutter: int,
        clutter_size: int,
        seed: int,
        split: str,
        redraw: bool = False,
    ):
        self.garments, self.labels, self.photos = garments, labels, photos
        self.canvas, self.object_scale = canvas, tuple(object_scale)
        self.clutter, self.clutter_size = clutter, clutter_size
        self.seed, self.split_id = seed, SPLIT_IDS[split]
        self.redraw, self.epoch = redraw, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the loader's sampler each epoch; changes the images only with ``redraw``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def _draw_layout(self, index: int) -> tuple[dict, np.random.Generator]:
        """Image ``index``'s garment placement, and its generator positioned after drawing it."""
        key = [self.seed, self.split_id, index] + ([self.epoch] if self.redraw else [])
        rng = np.random.default_rng(key)
        side = int(round(self.canvas * rng.uniform(*self.object_scale)))
        top, left = int(rng.integers(self.canvas - side + 1)), int(rng.integers(self.canvas - side + 1))
        return {"center": (top + side / 2, left + side / 2), "side": side, "top": top, "left": left}, rng

    def layout(self, index: int) -> dict:
        """Where image ``index``'s garment is, in pixels: ``center`` (y, x), ``side``, ``top``, ``left``."""
        return self._draw_layout(index)[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image, label, _ = self.draw(index)
        return image, label

    def draw(self, index: int) -> tuple[np.ndarray, int, dict]:
        """Image ``index``, its label and its :meth:`layout`, from one pass of the generator."""
        where, rng = self._draw_layout(index)
        side = where["side"]
        image = photo_crop(rng, self.photos, (self.canvas, self.canvas))
        # Clutter first, so that it never covers the garment: squares cut from other garments of the
        # split at the garment's scale, anywhere on the canvas.
        piece = min(self.clutter_size, side)
        for _ in range(self.clutter):
            other = cv2.resize(self.garments[rng.integers(len(self.labels))], (side, side))
            y, x = rng.integers(side - piece + 1, size=2)
            top, left = rng.integers(self.canvas - piece + 1, size=2)
            paste_garment(rng, image, other[y : y + piece, x : x + piece], None, int(top), int(left))
        paste_garment(rng, image, self.garments[index], side, where["top"], where["left"])
        return image, int(self.labels[index]), where


class ClutteredFashionMNISTDataModule(ClassificationDataModule):
    """Cluttered Fashion-MNIST (see the module): RGB canvases, 10 garment classes.

    Args:
        root: folder of Fashion-MNIST's IDX files.
        canvas: image side in pixels (64 by default; any size ≥ 32, e.g. 128 or 224).
        object_scale: the garment's side as a fraction of the canvas (uniform in the range).
        clutter: clutter fragments per image.
        clutter_size: fragment side in pixels (at most the garment's side).
        train_fraction: the photos' left fraction of columns that training images are cut from.
        generator_seed: the seed of the images (not of the shuffling order: that is ``seed``).
        redraw_train: a new image of every training garment each epoch (validation and test never change).
        img_size: model input size (default: the canvas).
        **kwargs: loader and augmentation options of :class:`ClassificationDataModule` (the
            defaults here are flips only: the generator already varies position, scale and colour).
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        canvas: int = 64,
        object_scale: Sequence[float] = (0.45, 0.8),
        clutter: int = 4,
        clutter_size: int = 10,
        train_fraction: float = 0.6,
        generator_seed: int = 0,
        redraw_train: bool = False,
        img_size: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop_scale: Sequence[float] = (1.0, 1.0),
        color_jitter: float = 0.0,
        random_erasing: float = 0.0,
        eval_crop_pct: float = 1.0,
        **kwargs,
    ):
        super().__init__(
            img_size=img_size or canvas,
            mean=mean,
            std=std,
            crop_scale=crop_scale,
            color_jitter=color_jitter,
            random_erasing=random_erasing,
            eval_crop_pct=eval_crop_pct,
            **kwargs,
        )
        if not isinstance(canvas, int) or canvas < 32:
            raise ValueError(f"canvas={canvas!r}: expected an integer side of at least 32 pixels")
        low, high = (tuple(object_scale) + (None, None))[:2]
        if len(tuple(object_scale)) != 2 or not 0 < low <= high <= 1:
            raise ValueError(f"object_scale={object_scale!r}: expected [low, high] with 0 < low <= high <= 1")
        if clutter < 0 or clutter_size < 1:
            raise ValueError(f"clutter={clutter}, clutter_size={clutter_size}: expected clutter >= 0, size >= 1")
        largest = round(canvas * high)
        if clutter_size > largest:  # a fragment is cut from a garment at its drawn size: it would be cut smaller
            raise ValueError(
                f"clutter_size={clutter_size} is larger than the largest garment ({largest} px: canvas"
                f" {canvas} × object_scale {high}); give at most {largest}"
            )
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction={train_fraction}: expected a fraction strictly between 0 and 1")
        check_root(root)
        self.root, self.canvas, self.object_scale = root, canvas, tuple(object_scale)
        self.clutter, self.clutter_size, self.train_fraction = clutter, clutter_size, train_fraction
        self.generator_seed, self.redraw_train = generator_seed, redraw_train
        self.num_classes, self.class_names, self.in_chans = 10, list(CLASS_NAMES), 3

    def _sources(self) -> dict[str, ClutteredSource]:
        photos = sample_photos()
        cut = [int(round(p.shape[1] * self.train_fraction)) for p in photos]
        regions = {
            "train": [p[:, :c] for p, c in zip(photos, cut, strict=True)],
            "held_out": [p[:, c:] for p, c in zip(photos, cut, strict=True)],
        }
        train = read_split(self.root, "train")
        test_images, test_labels = read_split(self.root, "test")
        half = len(test_labels) // 2
        garments = {
            "train": train,
            "val": (test_images[:half], test_labels[:half]),
            "test": (test_images[half:], test_labels[half:]),
        }
        options = dict(
            canvas=self.canvas,
            object_scale=self.object_scale,
            clutter=self.clutter,
            clutter_size=self.clutter_size,
            seed=self.generator_seed,
        )
        return {
            split: ClutteredSource(
                *garments[split],
                regions["train" if split == "train" else "held_out"],
                split=split,
                redraw=self.redraw_train and split == "train",
                **options,
            )
            for split in ("train", "val", "test")
        }


def class_folder(label: int) -> str:
    """Folder name of a class in the exported image folder: ``<label>_<name>``, so that the sorted
    folder order (how image-folder readers number classes) is Fashion-MNIST's label order."""
    return f"{label}_{CLASS_NAMES[label].replace('/', '_').replace(' ', '_')}"


def export_image_folder(out: str, module: ClutteredFashionMNISTDataModule, counts: dict[str, int | None]) -> dict:
    """Write the first ``counts[split]`` images of each split (None: all) as PNGs.

    Layout: ``out/<split>/<label>_<name>/<index>.png`` and ``out/<split>.csv`` (file, label, index,
    centre y/x and side of the garment in pixels, so results can be broken down by position). The
    folder appears only when complete (written beside it, then renamed); a class folder exists only
    if it holds images. Returns images per split.
    """
    sources = module._sources()
    for split, count in counts.items():
        # an image folder without training or validation images is one that fit cannot use
        least = 0 if split == "test" else 1
        if count is not None and not least <= count <= len(sources[split]):
            raise ValueError(f"--{split} {count}: expected {least}..{len(sources[split])} (the split's garments)")
    written = {}
    with atomic_output(out, directory=True) as tmp:
        for split, count in counts.items():
            source = sources[split]
            count = len(source) if count is None else count
            os.makedirs(os.path.join(tmp, split), exist_ok=True)
            made = set()  # class folders of this split created so far
            with open(os.path.join(tmp, f"{split}.csv"), "w", newline="") as table:
                rows = csv.writer(table)
                rows.writerow(["file", "label", "index", "center_y", "center_x", "side"])
                for index in range(count):
                    image, label, where = source.draw(index)
                    if label not in made:
                        os.makedirs(os.path.join(tmp, split, class_folder(label)))
                        made.add(label)
                    file = os.path.join(split, class_folder(label), f"{index:06d}.png")
                    if not cv2.imwrite(os.path.join(tmp, file), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                        raise ValueError(f"cannot write {file!r} under {out!r}; check the free space")
                    rows.writerow([file, label, index, *where["center"], where["side"]])
            written[split] = count
    return written
