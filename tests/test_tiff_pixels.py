"""Large TIFFs are read as what they are: every photometric interpretation, bit depth and float range
is converted to the pixels it shows, or refused with one line naming the file — never a confident
wrong answer. Pixels are the real photos of the project's mosaic."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch
from test_predict_large import trained  # noqa: F401 - the module fixture: a checkpoint and its config

from vir_lightning.cli import main as cli_main
from vir_lightning.data.large_image import open_large_image
from vir_lightning.data.mosaic import write_mosaic

TILE = dict(tile=(64, 64))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> np.ndarray:
    """(256, 384, 3) uint8 real photo pixels."""
    path = str(tmp_path_factory.mktemp("photo") / "photo.tif")
    write_mosaic(path, 256, 384, levels=1, tile=64)
    return tifffile.imread(path)


def gray_of(photo: np.ndarray) -> np.ndarray:
    return np.rint(photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


def read(path) -> tuple[np.ndarray, object]:
    """The whole image read in bands of 37 rows (across tile edges), and the opened image."""
    with open_large_image(str(path)) as image:
        rows = [image.read_rows(r, min(r + 37, image.height)) for r in range(0, image.height, 37)]
        return np.concatenate(rows), image


def test_miniswhite_reads_as_the_gray_image_it_shows(photo, tmp_path):
    gray = gray_of(photo)
    tifffile.imwrite(tmp_path / "white.tif", 255 - gray, photometric="miniswhite", **TILE)
    pixels, image = read(tmp_path / "white.tif")
    assert (image.channels, image.max_value) == (1, 255.0)
    assert np.array_equal(pixels[..., 0], gray)


@pytest.mark.parametrize("full", [65535, 255])
def test_palette_reads_as_its_colour_map(photo, tmp_path, full):
    """16-bit colour maps (the TIFF standard) and 8-bit ones stored unscaled (common, Pillow reads them so)."""
    index = gray_of(photo)
    ramp = np.arange(256)
    colormap = (np.stack([ramp, 255 - ramp, ramp // 2]) * (full // 255)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=colormap, **TILE)
    pixels, image = read(tmp_path / "palette.tif")
    assert (image.channels, image.max_value) == (3, float(full))
    assert np.array_equal(pixels, colormap.T[index])


def test_cmyk_reads_as_the_rgb_it_prints(photo, tmp_path):
    rgb = photo.astype(np.float32)
    black = 255 - rgb.max(-1, keepdims=True)
    inks = np.where(black < 255, (255 - rgb - black) / np.maximum(255 - black, 1) * 255, 0)
    cmyk = np.rint(np.concatenate([inks, black], -1)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated", **TILE)
    pixels, image = read(tmp_path / "cmyk.tif")
    assert (image.channels, image.max_value) == (3, 255.0)
    assert np.abs(pixels - rgb).max() <= 2.0  # rounding of the inks


def test_uncompressed_ycbcr_reads_as_rgb(photo, tmp_path):
    r, g, b = (photo[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    ycbcr = np.stack([y, 128 + (b - y) / 1.772, 128 + (r - y) / 1.402], -1)
    tifffile.imwrite(
        tmp_path / "ycbcr.tif",
        np.clip(np.rint(ycbcr), 0, 255).astype(np.uint8),
        photometric="ycbcr",
        subsampling=(1, 1),
        **TILE,
    )
    pixels, image = read(tmp_path / "ycbcr.tif")
    assert image.channels == 3
    assert np.abs(pixels - photo).max() <= 2.0


@pytest.mark.parametrize("compression", ["jpeg", "lzw", "jpeg2000"])
def test_compressed_tiles_decode(photo, tmp_path, compression):
    """JPEG tiles (whole-slide and remote-sensing files), LZW and JPEG 2000, through imagecodecs."""
    tifffile.imwrite(tmp_path / "c.tif", photo, compression=compression, **TILE)
    pixels, image = read(tmp_path / "c.tif")
    assert (image.channels, image.dtype, image.max_value) == (3, np.uint8, 255.0)
    assert np.array_equal(pixels, tifffile.imread(tmp_path / "c.tif"))  # bands equal tifffile's own whole read
    assert np.abs(pixels.astype(np.float32) - photo).mean() < (4.0 if compression != "lzw" else 1e-9)


def test_bit_depths_keep_their_full_scale(photo, tmp_path):
    tifffile.imwrite(tmp_path / "bilevel.tif", gray_of(photo) > 127, **TILE)
    pixels, image = read(tmp_path / "bilevel.tif")
    assert image.max_value == 255.0 and set(np.unique(pixels)) == {0, 255}
    tifffile.imwrite(tmp_path / "16.tif", photo.astype(np.uint16) * 257, photometric="rgb", **TILE)
    pixels, image = read(tmp_path / "16.tif")
    assert image.max_value == 65535.0 and np.array_equal(pixels, photo.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "float.tif", photo.astype(np.float32) / 255, photometric="rgb", **TILE)
    pixels, image = read(tmp_path / "float.tif")
    assert image.max_value == 1.0 and np.allclose(pixels * 255, photo, atol=1e-3)


def test_alpha_is_kept_for_rgb_and_dropped_for_gray(photo, tmp_path):
    alpha = np.full(photo.shape[:2] + (1,), 200, np.uint8)
    tifffile.imwrite(
        tmp_path / "rgba.tif",
        np.concatenate([photo, alpha], -1),
        photometric="rgb",
        extrasamples=["unassalpha"],
        **TILE,
    )
    assert read(tmp_path / "rgba.tif")[1].channels == 4
    tifffile.imwrite(
        tmp_path / "ga.tif",
        np.concatenate([photo[..., :1], alpha], -1),
        photometric="minisblack",
        extrasamples=["unassalpha"],
        **TILE,
    )
    pixels, image = read(tmp_path / "ga.tif")
    assert image.channels == 1 and np.array_equal(pixels[..., 0], photo[..., 0])


def test_a_float_image_beyond_its_full_scale_is_refused_when_read(photo, tmp_path):
    tifffile.imwrite(tmp_path / "float255.tif", photo.astype(np.float32), photometric="rgb", **TILE)
    with open_large_image(str(tmp_path / "float255.tif")) as image, pytest.raises(ValueError) as err:
        image.read_rows(0, 64)
    assert str(err.value).startswith(f"{tmp_path / 'float255.tif'}: float pixels reach 2")
    assert "rescale it to [0, 1]" in str(err.value)


@pytest.mark.parametrize(
    ("name", "write", "what"),
    [
        ("int16.tif", dict(data="gray", dtype=np.int16), "signed integer is not supported"),
        ("lab.tif", dict(data="rgb", photometric="cielab"), "photometric CIELAB is not supported"),
        (
            "bands.tif",
            dict(data="five", photometric="minisblack", planarconfig="contig"),
            "5 samples per pixel with photometric MINISBLACK",
        ),
        ("uint32.tif", dict(data="gray", dtype=np.uint32), "32-bit integer samples is not supported"),
    ],
)
def test_what_cannot_be_read_as_it_is_is_refused_by_file_and_reason(photo, tmp_path, name, write, what):
    data = {"gray": photo[..., 0], "rgb": photo, "five": np.concatenate([photo, photo[..., :2]], -1)}[write.pop("data")]
    if "dtype" in write:
        data = data.astype(write.pop("dtype"))
    tifffile.imwrite(tmp_path / name, data, **write, **TILE)
    with pytest.raises(ValueError) as err:
        open_large_image(str(tmp_path / name))
    assert str(err.value).startswith(f"{tmp_path / name}: ")
    assert what in str(err.value) and "convert the image" in str(err.value)


def test_predict_large_sees_a_miniswhite_scan_as_its_minisblack_twin_and_refuses_a_float_0_255_one(
    photo,
    trained,  # noqa: F811
    tmp_path,
):
    """End to end: the two files show the same picture, so they get the same classes; the float file
    of 0–255 gets an error line, the others still their rows."""
    _, ckpt, config = trained
    gray = gray_of(photo)
    tifffile.imwrite(tmp_path / "black.tif", gray, photometric="minisblack", **TILE)
    tifffile.imwrite(tmp_path / "white.tif", 255 - gray, photometric="miniswhite", **TILE)
    tifffile.imwrite(tmp_path / "float255.tif", gray.astype(np.float32), photometric="minisblack", **TILE)
    out = tmp_path / "pred.csv"
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--images",
        str(tmp_path / "black.tif"),
        str(tmp_path / "white.tif"),
        str(tmp_path / "float255.tif"),
        "--out",
        str(out),
    ]
    code = cli_main(argv)
    with open(out, newline="") as f:
        rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}
    assert code != 0  # the float image was refused
    assert rows.keys() == {"black.tif", "white.tif"}
    probs = [[float(rows[n][f"prob_{i}"]) for i in range(1, 5)] for n in ("black.tif", "white.tif")]
    assert [rows[n]["class_1"] for n in ("black.tif", "white.tif")] == [rows["black.tif"]["class_1"]] * 2
    assert torch.allclose(torch.tensor(probs[0]), torch.tensor(probs[1]), atol=1e-6)
