"""Huge images from disk: band readers equal whole-image reads, and predict-large equals model(image)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
import torch
from conftest import relative_error
from PIL import Image

from vir_lightning.cli import main as cli_main
from vir_lightning.data.large_image import open_large_image
from vir_lightning.data.mosaic import write_mosaic
from vir_lightning.io import OUTPUTS_RECORD, write_csv_atomically

MEAN = STD = 0.5  # ImageFolderDataModule's defaults, which the config below relies on


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> str:
    """A 2048×3072 px real-pixel mosaic: 256² zlib tiles, 3 pyramid levels."""
    path = str(tmp_path_factory.mktemp("mosaic") / "mosaic.tif")
    assert write_mosaic(path, 2048, 3072, levels=3, tile=256) == [(2048, 3072), (1024, 1536), (512, 768)]
    return path


def whole_level(path: str, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def read_in_bands(image, rows: int) -> np.ndarray:
    return np.concatenate([image.read_rows(r, min(r + rows, image.height)) for r in range(0, image.height, rows)])


@pytest.mark.parametrize("level", [0, 1, 2])
def test_tiff_bands_equal_the_whole_image_at_every_level(mosaic, level):
    with open_large_image(mosaic, level) as image:
        assert image.reader == "tifffile" and image.levels == [(2048, 3072), (1024, 1536), (512, 768)]
        assert np.array_equal(read_in_bands(image, 37), whole_level(mosaic, level))  # 37: across tile edges


def test_openslide_opens_the_mosaic_and_reads_the_same_pixels(mosaic):
    import openslide

    with openslide.OpenSlide(mosaic) as slide:
        assert slide.level_count == 3 and slide.dimensions == (3072, 2048)
    with open_large_image(mosaic, 1, reader="openslide") as image:
        assert np.array_equal(read_in_bands(image, 100), whole_level(mosaic, 1))


def test_striped_tiff_and_png_bands_equal_the_whole_image(mosaic, tmp_path):
    pixels = whole_level(mosaic, 2)
    tifffile.imwrite(tmp_path / "striped.tif", pixels, rowsperstrip=7, compression="zlib", photometric="rgb")
    Image.fromarray(pixels).save(tmp_path / "small.png")
    for name, reader in (("striped.tif", "tifffile"), ("small.png", "pil")):
        with open_large_image(str(tmp_path / name)) as image:
            assert image.reader == reader
            assert np.array_equal(read_in_bands(image, 16), pixels)


# ----------------------------------------------------------------------------------------------
# predict-large
# ----------------------------------------------------------------------------------------------


def write_checkpoint(path, model_name="vir_nano_patch16_224", **model_kwargs):
    from vir_lightning.tasks import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(
        model_name=model_name,
        model_kwargs={"layer_scale_init": 0.5, **model_kwargs},
        num_classes=4,
        img_size=64,
        class_names=["w", "x", "y", "z"],
    )
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return module.model


def write_config(path, model_name="vir_nano_patch16_224", **model_kwargs):
    kwargs = {"layer_scale_init": 0.5, **model_kwargs}
    path.write_text(
        "model:\n  class_path: vir_lightning.tasks.ImageClassifier\n  init_args:\n"
        f"    model_name: {model_name}\n    model_kwargs: {json.dumps(kwargs)}\n"
        "data:\n  class_path: vir_lightning.data.ImageFolderDataModule\n  init_args:\n    root: data/mine\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = write_checkpoint(folder / "model.ckpt", decay="2d")
    return model.eval(), str(folder / "model.ckpt"), write_config(folder / "config.yaml", decay="2d")


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_large_equals_the_model_on_the_whole_tensor(mosaic, trained, tmp_path, capsys):
    model, ckpt, config = trained
    out, features = tmp_path / "pred.csv", tmp_path / "features"
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--images",
        mosaic,
        "--level",
        "1",
        "--out",
        str(out),
        "--band-rows",
        "3",
        "--features-dir",
        str(features),
    ]
    assert cli_main(argv) == 0
    pixels = torch.from_numpy(whole_level(mosaic, 1)).permute(2, 0, 1)[None].float()
    images = (pixels / 255 - MEAN) / STD  # 1024×1536: a 64×96 grid, no edge
    model.set_retention_mode("chunkwise")
    model.dynamic_img_size = True  # the reference runs the whole 64×96 grid at once
    with torch.no_grad():
        probs = model(images).softmax(-1)[0]
        tokens = model.forward_features(images)[0, :-1].reshape(64, 96, -1)
    (row,) = read_rows(out)
    assert (row["grid_rows"], row["grid_cols"], row["edge_rows_px"], row["edge_cols_px"]) == ("64", "96", "0", "0")
    order = probs.argsort(descending=True)
    assert [row[f"class_{i}"] for i in range(1, 5)] == [["w", "x", "y", "z"][i] for i in order]
    assert [float(row[f"prob_{i}"]) for i in range(1, 5)] == pytest.approx(probs[order].tolist(), abs=2e-6)
    stored = np.load(features / "mosaic.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (64, 96, model.num_features)
    assert relative_error(torch.from_numpy(np.asarray(stored, np.float32)), tokens) <= 2e-3  # float16 storage
    meta = json.loads((features / "mosaic.json").read_text())
    assert meta["grid"] == [64, 96] and meta["level"] == 1 and meta["dtype"] == "float16"
    assert "→" in capsys.readouterr().out


def test_edges_are_cropped_by_default_and_padded_on_request(mosaic, trained, tmp_path):
    _, ckpt, config = trained
    small = tmp_path / "odd.png"
    Image.fromarray(whole_level(mosaic, 2)[:250, :333]).save(small)
    for edge, grid, edge_px in (("crop", ("15", "20"), ("10", "13")), ("pad", ("16", "21"), ("6", "3"))):
        out = tmp_path / f"{edge}.csv"
        assert (
            cli_main(
                [
                    "predict-large",
                    "--config",
                    config,
                    "--ckpt_path",
                    ckpt,
                    "--images",
                    str(small),
                    "--out",
                    str(out),
                    "--edge",
                    edge,
                ]
            )
            == 0
        )
        (row,) = read_rows(out)
        assert (row["grid_rows"], row["grid_cols"]) == grid and (row["edge_rows_px"], row["edge_cols_px"]) == edge_px


def corrupt_copy(mosaic, path) -> str:
    shutil.copy(mosaic, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[2].keyframe
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00garbage" * (count // 8))
    return str(path)


def test_bad_files_are_reported_by_path_the_others_go_on_and_a_rerun_skips_done_images(
    mosaic, trained, tmp_path, capsys
):
    _, ckpt, config = trained
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(tiny)
    corrupt = corrupt_copy(mosaic, tmp_path / "corrupt.tif")
    out, features = tmp_path / "pred.csv", tmp_path / "features"
    images = [corrupt, mosaic, str(tmp_path / "missing.tif")]
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--level",
        "2",
        "--out",
        str(out),
        "--features-dir",
        str(features),
        "--images",
        *images,
    ]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "corrupt.tif: corrupt tile 5" in errors[0]
    assert "missing.tif: no such file" in errors[1]
    assert [r["path"] for r in read_rows(out)] == [mosaic]
    assert sorted(os.listdir(features)) == [OUTPUTS_RECORD, "mosaic.json", "mosaic.npy"]  # nothing half-written
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial")]

    assert cli_main(argv) == 1  # the rerun skips the finished image and retries the others
    assert "already in" in capsys.readouterr().out
    assert [r["path"] for r in read_rows(out)] == [mosaic]

    assert cli_main([*argv[:5], "--out", str(out), "--images", str(tiny)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tiny.png: 40×8 px at level 0 is smaller than one 16×16 patch" in errors[0]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--level", "3"], "pyramid level 3 does not exist"),
        (["--band-rows", "0"], "--band-rows 0: the band height must be at least 1"),
    ],
)
def test_bad_options_get_one_error_line(mosaic, trained, tmp_path, capsys, extra, match):
    _, ckpt, config = trained
    code = cli_main(
        [
            "predict-large",
            "--config",
            config,
            "--ckpt_path",
            ckpt,
            "--images",
            mosaic,
            "--out",
            str(tmp_path / "p.csv"),
            *extra,
        ]
    )
    assert code in (1, 2)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0]


@pytest.mark.parametrize(
    "model_name,kwargs,config_kwargs,match",
    [
        ("hvir_nano", {}, None, "overlapping margins"),
        ("vir_nano_patch16_224", {"decay": "2d", "pooling": "avg", "directions": 4}, None, "directions=4"),
        ("vir_nano_patch16_224", {}, {"decay": "2d"}, "trained with"),
    ],
)
def test_models_and_configs_that_cannot_serve_are_refused_before_reading(
    mosaic, tmp_path, capsys, model_name, kwargs, config_kwargs, match
):
    write_checkpoint(tmp_path / "m.ckpt", model_name, **kwargs)
    config = write_config(tmp_path / "c.yaml", model_name, **(kwargs if config_kwargs is None else config_kwargs))
    out = tmp_path / "p.csv"
    assert (
        cli_main(
            [
                "predict-large",
                "--config",
                config,
                "--ckpt_path",
                str(tmp_path / "m.ckpt"),
                "--images",
                mosaic,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0]
    assert not out.exists()


def test_a_second_run_into_the_same_csv_is_refused_while_the_first_holds_it(mosaic, trained, tmp_path, capsys):
    import fcntl

    _, ckpt, config = trained
    out = tmp_path / "pred.csv"
    write_csv_atomically(str(out), ["earlier results"], [])
    with open(str(out) + ".lock", "a") as held:  # another run in progress
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert (
            cli_main(
                [
                    "predict-large",
                    "--config",
                    config,
                    "--ckpt_path",
                    ckpt,
                    "--images",
                    mosaic,
                    "--level",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "being written by another predict-large run" in errors[0]
    assert out.read_text() == "earlier results\n"  # kept


def test_a_rerun_with_other_options_is_refused_instead_of_keeping_the_old_results(mosaic, trained, tmp_path, capsys):
    """The rows of --out depend on the weights, the normalisation, the edge and the reader: a rerun that
    changes one would skip the finished images and keep results of another computation."""
    _, ckpt, config = trained
    out = tmp_path / "pred.csv"
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--level",
        "2",
        "--out",
        str(out),
        "--images",
        mosaic,
    ]
    assert cli_main(argv) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert cli_main([*argv, "--edge", "pad"]) != 0
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    expected = f"error: --out {str(out)!r} holds 1 results computed with other options (edge 'crop' → 'pad')"
    assert line.startswith(expected)
    assert out.read_bytes() == before
    other = tmp_path / "other.ckpt"
    shutil.copy(ckpt, other)
    assert cli_main([*argv[:4], str(other), *argv[5:]]) != 0
    assert "checkpoint " in capsys.readouterr().err
    assert cli_main(argv) == 0  # the same options resume
    assert "already in" in capsys.readouterr().out and out.read_bytes() == before


def test_the_old_band_option_name_still_works_with_a_notice(mosaic, trained, tmp_path, capsys):
    """``--chunk-size`` was predict-large's name for the band height; it now reads ``--band-rows``."""
    _, ckpt, config = trained
    argv = ["predict-large", "--config", config, "--ckpt_path", ckpt, "--images", mosaic]
    assert cli_main([*argv, "--out", str(tmp_path / "p.csv"), "--chunk-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "note: --chunk-size is now --band-rows" in err and "error: --band-rows 0:" in err
