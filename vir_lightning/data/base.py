"""The shared base of the classification data modules: transforms, seeding, samplers, loaders."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .files import ImageFileList, list_images
from .transforms import build_eval_transform, build_train_transform, check_transform_options


class TransformedDataset(Dataset):
    """Applies an albumentations pipeline to ``(uint8 HWC image, label)`` items of ``source``.

    Augmentation randomness is a pure function of (seed, epoch, index): the same sample gets the
    same augmentation whatever the worker count, rank or resume point, and a new one each epoch.
    The samplers below push the epoch in through :meth:`set_epoch`.
    """

    def __init__(self, source, transform, seed: int = 0):
        self.source, self.transform, self.seed, self.epoch = source, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):  # a generated source that draws new images each epoch
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source[index]
        if image is None:  # an undecodable image skipped by the source; dropped by the collate
            return None
        # One generator pair per sample, shared by the whole pipeline: 6× cheaper than Compose's
        # set_random_seed (a pair per transform), and the transforms no longer all start from the
        # same seed, which would correlate their first draws (e.g. the flip with the crop).
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.transform(image=image)["image"], label


def collate_skipping_none(batch):
    """Default collation after dropping the items an image-skipping source returned as None.

    A batch whose every image was skipped collates to None; :class:`~vir_lightning.tasks.ImageClassifier`
    skips such a batch (default_collate of an empty list would raise a TypeError).
    """
    batch = [item for item in batch if item is not None]
    return torch.utils.data.default_collate(batch) if batch else None


class EpochSeededRandomSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch), so a resumed fit replays it."""

    def __init__(self, dataset: TransformedDataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


class EpochSeededDistributedSampler(DistributedSampler):
    """DistributedSampler that also tells the dataset the epoch (for its augmentation seeds)."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class ClassificationDataModule(L.LightningDataModule):
    """Base of the image-classification data modules.

    Subclasses set ``num_classes``, ``class_names``, ``img_size`` and ``in_chans`` in ``__init__``
    (the CLI links them into the model) and implement :meth:`_sources` returning the train, val and
    test sources: sequences of ``(uint8 HWC image, int label)``.

    Args:
        batch_size: per-device batch size.
        num_workers: DataLoader workers (default: min(4, CPU count)).
        img_size: training/eval size (int or [height, width]); ``None`` lets the subclass decide.
        mean, std: normalisation per channel (0–1 pixel scale).
        crop_scale, crop_ratio: RandomResizedCrop area and aspect ranges.
        hflip: horizontal flip probability.
        color_jitter: brightness/contrast/saturation strength (skipped with RandAugment).
        rand_augment: RandAugment options, e.g. ``{num_ops: 2, magnitude: 9, magnitude_std: 0.5}``,
            or ``None`` for none.
        random_erasing: probability of erasing a random box.
        eval_crop_pct: evaluation centre-crop fraction.
        seed: seed of the shuffling order and of the augmentations.
        predict_root: a folder of images (searched recursively) for ``predict``.
        skip_bad_images: skip (log and count) undecodable image files instead of failing on the
            first one; a batch with no decodable image at all is skipped whole.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int | None = None,
        img_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        rand_augment: dict | None = None,
        random_erasing: float = 0.25,
        eval_crop_pct: float = 0.875,
        seed: int = 0,
        predict_root: str | None = None,
        skip_bad_images: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        check_transform_options(mean, std, crop_scale, crop_ratio, hflip, color_jitter, random_erasing, eval_crop_pct)
        self.batch_size = batch_size
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.img_size = img_size
        self.augment = dict(
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            hflip=hflip,
            color_jitter=color_jitter,
            rand_augment=rand_augment,
            random_erasing=random_erasing,
        )
        self.mean, self.std, self.eval_crop_pct, self.seed = mean, std, eval_crop_pct, seed
        self.predict_root, self.skip_bad_images = predict_root, skip_bad_images
        self.num_classes: int = 0
        self.class_names: list[str] = []
        self.in_chans: int = 3
        self.predict_paths: list[str] = []
        self._datasets: dict[str, Dataset] = {}

    # -- to implement ----------------------------------------------------------------------------
    def _sources(self) -> dict[str, Sequence]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def preprocessing(self) -> dict:
        """What a model trained on this data expects of an image, recorded in its checkpoints:
        pixels divided by their full scale, then ``(x − mean) / std`` per channel, ``in_chans``
        channels, at ``img_size``."""
        size = self.img_size if self.img_size is None or isinstance(self.img_size, int) else list(self.img_size)
        return {
            "mean": [float(m) for m in self._stats(self.mean)],
            "std": [float(s) for s in self._stats(self.std)],
            "in_chans": int(self.in_chans),
            "img_size": size,
        }

    def _stats(self, values: Sequence[float]) -> tuple[float, ...]:
        values = tuple(values)
        return values[: self.in_chans] if len(values) >= self.in_chans else values * self.in_chans

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        mean, std = self._stats(self.mean), self._stats(self.std)
        train_tf = build_train_transform(self.img_size, mean, std, self.in_chans, **self.augment)
        eval_tf = build_eval_transform(self.img_size, mean, std, self.eval_crop_pct)
        for split, source in self._sources().items():
            tf = train_tf if split == "train" else eval_tf
            self._datasets[split] = TransformedDataset(source, tf, seed=self.seed)
        if self.predict_root is not None:
            self.predict_paths = list_images(self.predict_root, recursive=True)
            if not self.predict_paths:
                # Predicting nothing would exit 0 with no output at all.
                raise ValueError(
                    f"predict_root {self.predict_root!r} holds no jpg/jpeg/png images (searched"
                    " recursively); point it at a folder of images"
                )
            self._datasets["predict"] = TransformedDataset(
                ImageFileList(self.predict_paths, skip_bad=self.skip_bad_images, channels=self.in_chans),
                eval_tf,
            )

    def source(self, split: str) -> Sequence:
        """The untransformed ``(image, label)`` items of ``split`` (after :meth:`setup`), e.g. to read
        what a generator knows about each image."""
        if split not in self._datasets:
            raise ValueError(f"this data module has no {split!r} split set up; call setup() first")
        return self._datasets[split].source

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._datasets:
            raise ValueError(
                f"this data module has no {split!r} split"
                + ("; pass predict_root=<folder of images> to predict" if split == "predict" else "")
            )
        dataset = self._datasets[split]
        sampler = None
        if shuffle:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.world_size > 1:
                sampler = EpochSeededDistributedSampler(
                    dataset, trainer.world_size, trainer.global_rank, shuffle=True, seed=self.seed, drop_last=True
                )
            else:
                sampler = EpochSeededRandomSampler(dataset, self.seed)
        # Training drops a ragged last batch (steady batch statistics), unless the split is smaller
        # than one batch: then the one partial batch is all there is to train on.
        per_rank = len(sampler) if sampler is not None else len(dataset)
        drop_last = shuffle and per_rank >= self.batch_size
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_skipping_none,
            persistent_workers=False,
        )  # fresh workers see the dataset's new epoch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
