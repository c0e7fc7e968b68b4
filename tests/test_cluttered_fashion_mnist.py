"""Cluttered Fashion-MNIST: deterministic images, splits that share no garment and no photo region,
the object where its layout says, and bad options refused."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from vir_lightning.data import ClutteredFashionMNISTDataModule
from vir_lightning.data.cluttered_fashion_mnist import FOREGROUND_THRESHOLD, sample_photos
from vir_lightning.data.fashion_mnist import DEBIAN_ROOT, FILES, read_idx

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_ROOT, FILES["test_images"])),
    reason="Fashion-MNIST is installed by `make data`",
)


@pytest.fixture(scope="module")
def sources():
    return ClutteredFashionMNISTDataModule(canvas=64)._sources()


def test_an_image_is_a_pure_function_of_seed_split_and_index(sources):
    image, label = sources["train"][7]
    again, label_again = ClutteredFashionMNISTDataModule(canvas=64)._sources()["train"][7]
    assert np.array_equal(image, again) and label == label_again
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    other_seed = ClutteredFashionMNISTDataModule(canvas=64, generator_seed=1)._sources()["train"][7][0]
    assert not np.array_equal(image, other_seed)
    assert not np.array_equal(sources["val"][7][0], sources["test"][7][0])


def test_splits_share_no_garment_and_no_photo_region(sources):
    train_labels = read_idx(os.path.join(DEBIAN_ROOT, FILES["train_labels"]))
    test_images = read_idx(os.path.join(DEBIAN_ROOT, FILES["test_images"]))
    assert len(sources["train"]) == len(train_labels) == 60000
    assert len(sources["val"]) + len(sources["test"]) == len(test_images)
    # validation and test cut the test garments in two halves; training uses only training garments
    assert np.array_equal(sources["val"].garments, test_images[:5000])
    assert np.array_equal(sources["test"].garments, test_images[5000:])
    assert sources["train"].garments.shape[0] == 60000
    # training crops come from the left 60% of every photo, validation/test from the rest
    regions = zip(sample_photos(), sources["train"].photos, sources["val"].photos, strict=True)
    for photo, train_part, held_out in regions:
        cut = train_part.shape[1]
        assert cut == round(photo.shape[1] * 0.6) and train_part.shape[1] + held_out.shape[1] == photo.shape[1]
        assert np.array_equal(train_part, photo[:, :cut]) and np.array_equal(held_out, photo[:, cut:])
    assert sources["val"].photos is sources["test"].photos


def test_the_garment_lies_where_its_layout_says_and_has_its_label(sources):
    source = sources["val"]
    for index in range(20):
        image, label = source[index]
        where = source.layout(index)
        assert label == int(source.labels[index])
        top, left, side = where["top"], where["left"], where["side"]
        assert 0 <= top and top + side <= 64 and 0 <= left and left + side <= 64
        assert where["center"] == (top + side / 2, left + side / 2)
        # the pasted pixels are the garment's foreground times one colour per channel (0.5-1.0)
        garment = cv2.resize(source.garments[index], (side, side), interpolation=cv2.INTER_LINEAR)
        mask = garment > FOREGROUND_THRESHOLD
        patch = image[top : top + side, left : left + side][mask].astype(float)
        ratio = patch / garment[mask][:, None]
        assert np.all(ratio <= 1.0 + 1e-6) and np.all(ratio >= 0.5 - 1 / garment[mask][:, None] - 1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(canvas=16), "canvas=16"),
        (dict(object_scale=(0.9, 0.5)), "object_scale"),
        (dict(object_scale=(0.5,)), "object_scale"),
        (dict(clutter=-1), "clutter=-1"),
        (
            dict(canvas=56, object_scale=(0.25, 0.5), clutter_size=100),
            "clutter_size=100 is larger than the largest garment"
            r" \(28 px: canvas 56 × object_scale 0.5\); give at most 28",
        ),
        (dict(train_fraction=1.0), "train_fraction=1.0"),
        (dict(root="/nonexistent"), "Fashion-MNIST not found"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ClutteredFashionMNISTDataModule(**options)


def test_the_data_module_feeds_rgb_batches_at_the_canvas_size():
    module = ClutteredFashionMNISTDataModule(canvas=48, batch_size=4, num_workers=0)
    module.setup("fit")
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and labels.shape == (4,) and module.in_chans == 3
    assert module.num_classes == 10


def test_redraw_train_draws_each_garment_anew_every_epoch_in_the_loader_workers_too():
    import torch

    module = ClutteredFashionMNISTDataModule(canvas=32, batch_size=2, num_workers=1, redraw_train=True)
    module.setup("fit")
    loader, train = module.train_dataloader(), module.source("train")
    first = {}
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)  # what Lightning calls at the start of every epoch
        order = list(loader.sampler)[:2]
        images, labels = next(iter(loader))  # made in a worker process
        dataset = module._datasets["train"]
        expected = torch.stack([dataset[index][0] for index in order])
        assert torch.equal(images, expected) and labels.tolist() == [int(train.labels[i]) for i in order]
        first.setdefault(epoch, train[7][0])
    assert not np.array_equal(first[0], first[1])  # a new photo crop, place, size, tint and clutter
    assert np.array_equal(train[7][0], first[0])  # and epoch 0 again gives epoch 0's image back
    # validation never changes, and without the option neither does training
    val = module.source("val")
    assert np.array_equal(val[3][0], ClutteredFashionMNISTDataModule(canvas=32)._sources()["val"][3][0])
    fixed = ClutteredFashionMNISTDataModule(canvas=32)._sources()["train"]
    before = fixed[7][0]
    fixed.set_epoch(5)
    assert np.array_equal(fixed[7][0], before)


def test_export_writes_an_image_folder_that_reads_back_pixel_exact_with_positions(tmp_path, capsys):
    import csv

    from vir_lightning.cli import main
    from vir_lightning.data import ImageFolderDataModule

    out = tmp_path / "cluttered"
    assert main(["export-cluttered", str(out), "--train", "60", "--val", "6", "--test", "0"]) == 0
    assert "train 60, val 6, test 0" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "train.csv")))
    assert [int(r["index"]) for r in rows] == list(range(60))
    source = ClutteredFashionMNISTDataModule(canvas=64)._sources()["train"]
    for row in rows[:4]:
        image, label = source[int(row["index"])]
        written = cv2.cvtColor(cv2.imread(str(out / row["file"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(written, image) and int(row["label"]) == label  # PNG: lossless
        assert float(row["center_y"]) == source.layout(int(row["index"]))["center"][0]
        assert row["file"].split("/")[1].startswith(f"{label}_")
    assert not (out / "test").exists() or not any((out / "test").iterdir())
    # the folder names sort in Fashion-MNIST's label order, so an image-folder reader keeps the labels
    folder = ImageFolderDataModule(root=str(out))
    assert [int(name.split("_")[0]) for name in folder.class_names] == sorted({int(r["label"]) for r in rows})


def test_export_refuses_more_images_than_the_split_has_and_leaves_the_earlier_folder(tmp_path, capsys):
    from vir_lightning.cli import main

    out = tmp_path / "cluttered"
    assert main(["export-cluttered", str(out), "--train", "2", "--val", "1", "--test", "1"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["export-cluttered", str(out), "--train", "2", "--val", "5001", "--test", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --val 5001: expected 1..5000") and err.count("\n") == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]
