"""Reliability of the files the project reads (images) and writes (CSVs, checkpoints, folders).

Bad input gets one ``error:`` line and exit 2, never a traceback; nothing is half-written and no
earlier result is lost; ``skip_bad_images`` skips undecodable files everywhere they are read.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
import zlib
from pathlib import Path

import cv2
import lightning as L
import matplotlib
import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image
from test_classification import QUICKSTART, TINY_MODEL

from vir_lightning.cli import main
from vir_lightning.data import ImageFolderDataModule
from vir_lightning.data.base import collate_skipping_none
from vir_lightning.data.files import decode_image, infer_image_size, list_images
from vir_lightning.io import OUTPUT_MARKER, OUTPUTS_RECORD, atomic_output, check_output_path, write_csv_atomically
from vir_lightning.tasks import ImageClassifier, PredictionCSVWriter

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}  # the model of TINY_MODEL, for building it in-process


def photo(height: int = 64, width: int = 48) -> np.ndarray:
    """Real RGB pixels: a crop of the portrait matplotlib ships."""
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[100 : 100 + height, 150 : 150 + width])


def corrupt(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    return path


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def fit_tiny(dm, **trainer_kwargs) -> L.Trainer:
    model = ImageClassifier("vir_nano_patch4_28", TINY, num_classes=dm.num_classes, img_size=dm.img_size)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


# -- reading images --------------------------------------------------------------------------------


def test_size_inference_skips_and_counts_undecodable_files_when_asked(tmp_path, caplog):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    bad = corrupt(tmp_path / "train" / "trouser" / "000_broken.jpg")
    with pytest.raises(ValueError, match="000_broken.jpg.*skip_bad_images"):
        ImageFolderDataModule(str(tmp_path), num_workers=0)
    with caplog.at_level(logging.WARNING):
        dm = ImageFolderDataModule(str(tmp_path), num_workers=0, skip_bad_images=True)
    assert dm.img_size == 32
    assert str(bad) in caplog.text and "1 undecodable ones skipped" in caplog.text


def test_size_inference_with_no_decodable_image_is_a_clear_error(tmp_path):
    for name in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            corrupt(tmp_path / split / name / "x.jpg")
    with pytest.raises(ValueError, match="none of the 2 training images decodes"):
        ImageFolderDataModule(str(tmp_path), num_workers=0, skip_bad_images=True)
    with pytest.raises(ValueError, match="none of the 3"):
        infer_image_size([str(tmp_path / "train" / "a" / "x.jpg")] * 3, skip_bad=True)


def test_batch_of_only_undecodable_images_is_skipped_in_fit(tmp_path):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    corrupt(tmp_path / "train" / "tshirt" / "broken.jpg")
    corrupt(tmp_path / "val" / "tshirt" / "broken.png")
    assert collate_skipping_none([None, None]) is None
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, num_workers=0, batch_size=1, skip_bad_images=True)
    trainer = fit_tiny(dm)
    assert trainer.global_step == 6  # 7 training batches of one image, the undecodable one skipped
    assert "val/acc1" in trainer.callback_metrics


def test_epoch_where_no_image_decodes_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    for path in (tmp_path / "val").glob("*/*"):
        corrupt(path)
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, num_workers=0, batch_size=2, skip_bad_images=True)
    with pytest.raises(ValueError, match="no image of the val split could be decoded"):
        fit_tiny(dm)


def test_exif_rotated_jpeg_decodes_upright(tmp_path):
    rgb = photo(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored pixels lie on their side
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(
        tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95
    )
    image = decode_image(str(tmp_path / "phone.jpg"))
    assert image.shape == (64, 48, 3)
    assert np.abs(image.astype(int) - rgb).mean() < 8  # JPEG loss only
    assert decode_image(str(tmp_path / "phone.jpg"), channels=1).shape == (64, 48, 1)


def test_16_bit_palette_la_cmyk_modes_decode_to_8_bit_rgb(tmp_path):
    rgb = photo()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 256 + 100)  # low byte: dropped
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "pil_i16.png")  # Pillow's I;16
    assert decode_image(str(tmp_path / "gray16.png")).tolist() == np.repeat(gray[..., None], 3, 2).tolist()
    assert decode_image(str(tmp_path / "pil_i16.png"), channels=1)[..., 0].tolist() == gray.tolist()
    assert decode_image(str(tmp_path / "rgb16.png")).tolist() == rgb.tolist()
    for mode, suffix in (("P", "png"), ("LA", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("L", "jpg")):
        path = tmp_path / f"{mode}.{suffix}"
        Image.fromarray(rgb).convert(mode).save(path, quality=95)
        with Image.open(path) as reference:
            expected = np.asarray(reference.convert("RGB")).astype(int)
        image = decode_image(str(path))
        assert image.shape == (64, 48, 3) and image.dtype == np.uint8, mode
        assert np.abs(image - expected).mean() < 2, mode


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "an empty file"),
        (b"hello, not an image", "corrupt, truncated or not a jpg/png"),
        ("truncated", "corrupt, truncated or not a jpg/png"),
    ],
)
def test_unreadable_files_are_one_clear_error_naming_the_file_and_the_fix(tmp_path, content, what):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(photo()).save(path, quality=95)
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.jpg") as err:
        decode_image(str(path))
    assert what in str(err.value) and "skip_bad_images: true" in str(err.value) and "\n" not in str(err.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    # A 100×100 PNG whose header is rewritten to claim 20000×20000 px: it would decode to 1.2 GB.
    Image.fromarray(photo(100, 100)).save(tmp_path / "bomb.png")
    data = bytearray((tmp_path / "bomb.png").read_bytes())
    ihdr = struct.pack(">II", 20000, 20000) + data[24:29]
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    bomb = r"bomb\.png. is 20000×20000 px, more than the 178,956,970 px decoding limit"
    with pytest.raises(ValueError, match=bomb):
        decode_image(str(tmp_path / "bomb.png"))
    # Our limit, whatever Pillow's process-wide one was left at (predict-large lifts it per read).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ValueError, match=bomb):
        decode_image(str(tmp_path / "bomb.png"))
    from vir_lightning.data import files

    monkeypatch.setattr(files, "MAX_IMAGE_PIXELS", 64 * 48 - 1)  # the limit is ours, not only Pillow's
    Image.fromarray(photo()).save(tmp_path / "photo.png")
    with pytest.raises(ValueError, match=r"photo\.png. is 48×64 px, more than the 3,071 px decoding limit"):
        decode_image(str(tmp_path / "photo.png"))


def test_unicode_space_and_symlinked_class_folders_upper_case_and_tiny_images(tmp_path):
    rgb = photo()
    for split in ("train", "val"):
        for name in ("café au lait", "日本"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(rgb).save(folder / "Photo 1.JPG")
            Image.fromarray(rgb[:1, :1]).save(folder / "tiny.PNG")  # smaller than any crop
            Image.fromarray(rgb[:2, :40]).save(folder / "thin.png")
    outside = tmp_path / "elsewhere" / "linked"
    outside.mkdir(parents=True)
    Image.fromarray(rgb).save(outside / "a.jpg")
    os.symlink(outside, tmp_path / "train" / "linked")
    os.symlink(outside / "a.jpg", tmp_path / "val" / "日本" / "link.jpg")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "val" / "日本" / "dangling.jpg")
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, num_workers=0, batch_size=2, random_erasing=0.0)
    assert dm.class_names == ["café au lait", "linked", "日本"]
    dm.setup("fit")
    batches = list(dm._loader("train", shuffle=False)) + list(dm.val_dataloader())
    assert sum(len(labels) for _, labels in batches) == 7 + 7  # the dangling link is no image
    assert all(images.shape[1:] == (3, 32, 32) and torch.isfinite(images).all() for images, _ in batches)


def test_recursive_listing_follows_symlinked_folders_once(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(photo()).save(root / "real" / "a.png")
    Image.fromarray(photo()).save(outside / "b.png")
    os.symlink(outside, root / "linked")  # images kept elsewhere, linked in (as for training classes)
    os.symlink(root, outside / "loop")  # a link back up must not loop forever nor list a.png twice
    paths = list_images(str(root), recursive=True)
    assert sorted(os.path.realpath(p) for p in paths) == [str(outside / "b.png"), str(root / "real" / "a.png")]


def test_validation_class_missing_from_training_is_an_error(tmp_path):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    (tmp_path / "val" / "boot").mkdir()
    Image.fromarray(photo()).save(tmp_path / "val" / "boot" / "a.png")
    with pytest.raises(ValueError, match="classes absent from the training split: boot"):
        ImageFolderDataModule(str(tmp_path), img_size=32)


def test_undecodable_image_in_a_worker_is_one_error_line(tmp_path, capsys):
    write_image_folder(tmp_path / "data", per_class_train=2, per_class_val=1)
    corrupt(tmp_path / "data" / "train" / "trouser" / "zz.jpg")
    code = main(
        [
            "fit",
            "--config",
            QUICKSTART,
            *TINY_MODEL,
            "--data",
            "ImageFolderDataModule",
            f"--data.root={tmp_path / 'data'}",
            "--data.img_size=32",
            "--data.batch_size=7",
            "--data.num_workers=1",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert error_lines(err) == [
        f"error: cannot decode image '{tmp_path / 'data/train/trouser/zz.jpg'}' (corrupt,"
        " truncated or not a jpg/png); delete or replace it, or set skip_bad_images: true"
        " in the data section to skip such files"
    ]
    assert "Traceback" not in err


# -- predict ---------------------------------------------------------------------------------------


@pytest.fixture
def predict(tiny_weights):
    def run(tmp_path, predict_root, csv, *extra):
        return main(
            [
                "predict",
                "--config",
                QUICKSTART,
                *TINY_MODEL,
                f"--model.init_args.pretrained={tiny_weights}",
                f"--data.init_args.predict_root={predict_root}",
                f"--predictions_csv={csv}",
                f"--trainer.default_root_dir={tmp_path / 'run'}",
                *extra,
            ]
        )

    return run


def test_predictions_csv_that_cannot_be_written_fails_before_predicting(tmp_path, capsys, predict):
    (tmp_path / "a_file").write_text("x")
    for target, message in ((tmp_path, "is a directory"), (tmp_path / "a_file" / "p.csv", "is a file")):
        with pytest.raises(ValueError, match=message):
            PredictionCSVWriter(str(target))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo()).save(images / "a.png")
    assert predict(tmp_path, images, tmp_path) == 2
    out = capsys.readouterr()
    assert error_lines(out.err) == [
        f"error: --predictions_csv {str(tmp_path)!r} is a directory; give a file name (e.g. {tmp_path / 'out'}…)"
    ]
    assert "Predicting" not in out.out + out.err  # refused before the predict loop started


def test_predict_on_a_folder_without_images_is_an_error(tmp_path, capsys, predict):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert predict(tmp_path, tmp_path / "empty", tmp_path / "p.csv") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: predict_root {str(tmp_path / 'empty')!r} holds no jpg/jpeg/png images (searched recursively);"
        " point it at a folder of images"
    ]
    assert not (tmp_path / "p.csv").exists()


def test_predict_skips_undecodable_images_when_asked(tmp_path, capsys, predict):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(photo()[i:]).save(images / f"{i}.png")
    corrupt(images / "3_bad.jpg")
    csv_path = tmp_path / "p.csv"
    assert (
        predict(tmp_path, images, csv_path, "--data.init_args.skip_bad_images=true", "--data.init_args.batch_size=1")
        == 0
    )
    assert "wrote 3 predictions" in capsys.readouterr().out
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 4 and not any("3_bad" in row for row in rows)
    for path in images.glob("*.png"):
        corrupt(path)
    assert predict(tmp_path, images, csv_path, "--data.init_args.skip_bad_images=true") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: none of the 4 images under predict_root could be decoded (all skipped); nothing written to {csv_path}"
    ]
    assert len(csv_path.read_text().splitlines()) == 4  # the earlier result is kept


# -- writing files ---------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from vir_lightning.models import create_model

    model = create_model("vir_nano_patch4_28", num_classes=3, **TINY)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_export_accepts_an_output_name_without_extension(checkpoint, tmp_path, capsys):
    out = tmp_path / "backbone"
    assert main(["export-backbone", str(checkpoint), str(out)]) == 0
    assert "head.weight" not in torch.load(out, weights_only=True)["state_dict"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTPUTS_RECORD, "backbone", "tiny.ckpt"]
    assert main(["export-backbone", str(checkpoint), str(tmp_path)]) == 2
    assert error_lines(capsys.readouterr().err)[0].startswith(
        f"error: export-backbone output {str(tmp_path)!r} is a directory"
    )


def test_output_onto_a_directory_is_an_error_that_keeps_the_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is a directory; give a file name"):
        write_csv_atomically(str(tmp_path), ["a"], [[1]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_read_only_output_is_kept_not_replaced(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("precious\n")
    target.chmod(0o444)
    with pytest.raises(ValueError, match="exists and is read-only, so it is kept; make it writable"):
        write_csv_atomically(str(target), ["a"], [[1]])
    assert target.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def test_output_below_a_file_or_in_an_unwritable_folder_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"is a file, so the folder .* cannot be created"):
        write_csv_atomically(str(tmp_path / "f" / "sub" / "out.csv"), ["a"], [[1]])
    write_csv_atomically(str(tmp_path / "new" / "deeper" / "out.csv"), ["a"], [[1]])  # missing folders are made
    assert (tmp_path / "new" / "deeper" / "out.csv").read_text().splitlines() == ["a", "1"]
    # Tests run as root here, where permission bits do not bind: stand in for a folder without write access.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(ValueError, match="no permission to write in"):
        check_output_path(str(tmp_path / "out.csv"), "--out")


def test_full_disk_is_an_error_that_keeps_the_earlier_file(tmp_path):
    import errno

    target = tmp_path / "out.csv"
    write_csv_atomically(str(target), ["a"], [[1]])

    def rows():
        yield [2]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ValueError, match="No space left on device.*the earlier file, if any, is intact"):
        write_csv_atomically(str(target), ["a"], rows())
    assert target.read_text().splitlines() == ["a", "1"] and sorted(os.listdir(tmp_path)) == [OUTPUTS_RECORD, "out.csv"]


def test_folder_output_gets_the_umask_and_replaces_the_old_one_only_when_complete(tmp_path):
    old_mask = os.umask(0o022)
    try:
        with atomic_output(str(tmp_path / "set"), directory=True) as tmp:
            Path(tmp, "v1").write_text("1")
        assert stat.S_IMODE((tmp_path / "set").stat().st_mode) == 0o755
        with pytest.raises(KeyboardInterrupt), atomic_output(str(tmp_path / "set"), directory=True) as tmp:
            Path(tmp, "v2").write_text("2")
            raise KeyboardInterrupt
        assert sorted(os.listdir(tmp_path / "set")) == [OUTPUT_MARKER, "v1"]
        with atomic_output(str(tmp_path / "set"), directory=True) as tmp:
            Path(tmp, "v2").write_text("2")
        assert sorted(os.listdir(tmp_path / "set")) == [OUTPUT_MARKER, "v2"] and sorted(os.listdir(tmp_path)) == ["set"]
    finally:
        os.umask(old_mask)


def test_a_folder_output_never_replaces_a_folder_it_did_not_write(tmp_path, capsys, declared_commands):
    # export-cluttered ~/data or build-mini-datasets over a real COCO used to replace the folder whole
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="is a folder with other files in it, not one this command wrote"):
        with atomic_output(str(mine), directory=True) as tmp:
            Path(tmp, "v1").write_text("1")
    assert os.listdir(mine) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["mine"]  # no partial left
    assert main(["export-cluttered", str(mine), "--train", "1", "--val", "1", "--test", "1"]) == 2
    assert "not one this command wrote" in error_lines(capsys.readouterr().err)[0]
    ade = tmp_path / "sets" / "ade" / "ADEChallengeData2016"  # the set written second
    ade.mkdir(parents=True)
    (ade / "notes.txt").write_text("keep")
    assert main(["build-mini-datasets", str(tmp_path / "sets"), "--train", "1", "--val", "1"]) == 2
    assert "ADEChallengeData2016' is a folder with other files" in error_lines(capsys.readouterr().err)[0]
    assert os.listdir(tmp_path / "sets") == ["ade"] and os.listdir(ade) == ["notes.txt"]  # nor was COCO written
    (mine / "notes.txt").unlink()  # an empty folder is taken, and a folder it wrote is replaced again
    for _ in range(2):
        with atomic_output(str(mine), directory=True) as tmp:
            Path(tmp, "v1").write_text("1")
    assert sorted(os.listdir(mine)) == [OUTPUT_MARKER, "v1"]


def test_build_mosaic_onto_a_directory_and_mini_datasets_below_a_file_are_errors(tmp_path, capsys, declared_commands):
    assert main(["build-mosaic", str(tmp_path), "--size", "64", "64", "--levels", "1"]) == 2
    assert error_lines(capsys.readouterr().err)[0].endswith(
        f"is a directory; give a file name (e.g. {tmp_path / 'out'}…)"
    )
    (tmp_path / "f").write_text("x")
    assert main(["build-mini-datasets", str(tmp_path / "f"), "--train", "1", "--val", "1"]) == 2
    assert "is a file" in error_lines(capsys.readouterr().err)[0]
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_predict_large_refuses_unwritable_outputs_before_loading_anything(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    base = ["predict-large", "--config", QUICKSTART, "--ckpt_path", str(tmp_path / "none.ckpt"), "--images", "x.png"]
    assert main([*base, "--out", str(tmp_path / "f" / "p.csv")]) == 2
    assert error_lines(capsys.readouterr().err)[0].startswith(f"error: --out {str(tmp_path / 'f' / 'p.csv')!r}:")
    assert main([*base, "--out", str(tmp_path / "p.csv"), "--features-dir", str(tmp_path / "f")]) == 2
    assert "--features-dir" in error_lines(capsys.readouterr().err)[0]


def test_predict_large_reads_exif_rotated_jpeg_upright(tmp_path):
    from vir_lightning.data.large_image import open_large_image

    rgb = photo(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(
        tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95
    )
    with open_large_image(str(tmp_path / "phone.jpg")) as image:
        assert (image.height, image.width) == (64, 48)
        assert np.abs(image.read_rows(0, 64).astype(int) - rgb).mean() < 8


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_damaged_fashion_mnist_file_is_a_clear_error(tmp_path, damage):
    from conftest import FASHION_MNIST

    from vir_lightning.data.fashion_mnist import read_idx

    data = Path(FASHION_MNIST, "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"plain text, not gzip")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz cannot be read .*replace it"):
        read_idx(str(path))


def test_images_in_formats_that_are_not_read_are_reported_not_silently_dropped(tmp_path, caplog):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    Image.fromarray(photo()).save(tmp_path / "b.webp")
    Image.fromarray(photo()).save(tmp_path / "c.BMP")
    with caplog.at_level(logging.WARNING):
        assert list_images(str(tmp_path)) == [str(tmp_path / "a.png")]
    assert "ignoring 2 image files" in caplog.text and "b.webp" in caplog.text


def test_output_through_a_symlink_writes_its_target_and_a_trailing_slash_is_an_error(tmp_path):
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "preds.csv"
    write_csv_atomically(str(target), ["old"], [])
    os.symlink(target, tmp_path / "link.csv")
    write_csv_atomically(str(tmp_path / "link.csv"), ["a"], [[1]])
    assert os.path.islink(tmp_path / "link.csv") and target.read_text().splitlines() == ["a", "1"]
    with pytest.raises(ValueError, match="ends with '/', so it names a folder; give a file name"):
        write_csv_atomically(str(tmp_path / "results") + "/", ["a"], [[1]])
    assert not (tmp_path / "results").exists()


def test_all_skipped_batch_under_ddp_gives_a_zero_loss_that_keeps_ranks_in_step():
    from types import SimpleNamespace

    model = ImageClassifier("vir_nano_patch4_28", TINY, num_classes=3, img_size=32)
    model._trainer = SimpleNamespace(world_size=2)  # only the world size is read for a skipped batch
    model._batches.start("train")
    loss = model.training_step(None, 0)
    loss.backward()  # every rank runs backward, so DDP's gradient all-reduce does not hang
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)
    model._trainer = SimpleNamespace(world_size=1)
    assert model.training_step(None, 1) is None  # one device: Lightning skips the step


def test_output_checks_take_a_pathlib_path(tmp_path):
    check_output_path(tmp_path / "out.csv")  # the commands pass Path objects as well as strings
    with atomic_output(tmp_path / "out.csv") as tmp:
        Path(tmp).write_text("x")
    assert (tmp_path / "out.csv").read_text() == "x"


def test_predict_large_lifts_pillows_pixel_limit_only_for_its_own_read(tmp_path, monkeypatch):
    from vir_lightning.data.large_image import open_large_image

    Image.fromarray(photo()).save(tmp_path / "photo.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 123_456_789)
    before = Image.MAX_IMAGE_PIXELS
    image = open_large_image(str(tmp_path / "photo.png"))
    assert (image.height, image.width) == (64, 48)
    assert Image.MAX_IMAGE_PIXELS == before  # it used to stay None for the rest of the process


def test_image_folders_count_images_in_sub_folders_and_skip_hidden_ones_as_predict_does(tmp_path):
    """A class's images in nested sub-folders count (torchvision's ImageFolder layout); hidden
    folders are neither classes nor image folders, and hidden files (macOS's ``._x.jpg``, not
    images) are skipped; ``predict`` over the same folder lists the very same files."""
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    shirt = tmp_path / "train" / "trouser"
    flat = sorted(shirt.glob("*.png")) + sorted(shirt.glob("*.jpg"))
    nested = shirt / "batch_2" / "day_1"
    nested.mkdir(parents=True)
    for i, source in enumerate(flat[:2]):
        shutil.copy(source, nested / f"n{i}{source.suffix}")
    (shirt / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    hidden = tmp_path / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(flat[0], hidden / "x.png")
    (shirt / ".cache").mkdir()
    shutil.copy(flat[0], shirt / ".cache" / "y.png")
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0)
    assert ".ipynb_checkpoints" not in dm.class_names
    paths, labels = dm._splits["train"]
    shirt_paths = sorted(p for p, label in zip(paths, labels, strict=True) if label == dm.class_names.index("trouser"))
    assert shirt_paths == list_images(str(shirt), recursive=True)
    assert {os.path.relpath(p, shirt) for p in shirt_paths} >= {
        "batch_2/day_1/n0" + flat[0].suffix,
        "batch_2/day_1/n1" + flat[1].suffix,
    }
    assert not any("/." in p or p.startswith(".") for p in shirt_paths)
    dm.setup("fit")
    assert len(list(dm._loader("train", shuffle=False))) > 0  # every listed file decodes
