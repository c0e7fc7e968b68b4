"""A huge real-pixel test image: a mosaic of the photos matplotlib ships, as a tiled pyramidal TIFF.

    python -m vir_lightning build-mosaic mosaic.tif --size 16384 16384 [--levels 3] [--tile 256]

Cells of 512×512 px are crops of the bundled photos (Grace Hopper's portrait and a colour photo of
a gift box), each flipped, transposed or colour-permuted by a hash of its position, so no two
neighbours repeat. The image is written tile by tile (never held whole; memory is one row of tiles),
zlib-compressed, level 0 first and each further level half the size of the previous one in the
following pages: the generic tiled-TIFF pyramid that tifffile and OpenSlide both read.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..io import atomic_output, check_output_path

CELL = 512
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


@functools.lru_cache(maxsize=1)
def photo_cells() -> tuple[np.ndarray, ...]:
    """CELL×CELL RGB crops of matplotlib's bundled photos (real pixels, no network)."""
    import matplotlib
    from PIL import Image

    cells = []
    folder = os.path.join(matplotlib.get_data_path(), "sample_data")
    for name in PHOTOS:
        with Image.open(os.path.join(folder, name)) as image:
            rgb = np.asarray(image.convert("RGB"))
        scale = CELL / min(rgb.shape[:2])
        if scale > 1:  # small photos are enlarged to a whole cell
            with Image.fromarray(rgb) as image:
                size = (round(rgb.shape[1] * scale + 0.5), round(rgb.shape[0] * scale + 0.5))
                rgb = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
        cells.append(np.ascontiguousarray(rgb[:CELL, :CELL]))
    return tuple(cells)


def _cell(row: int, col: int) -> np.ndarray:
    """The photo cell at mosaic cell (row, col): a photo, flipped/transposed/colour-permuted by a hash."""
    h = (row * 73_856_093) ^ (col * 19_349_663)
    cells = photo_cells()
    pixels = cells[h % len(cells)]
    if (h >> 3) & 1:
        pixels = pixels[:, ::-1]
    if (h >> 4) & 1:
        pixels = pixels[::-1]
    if (h >> 5) & 1:
        pixels = pixels.transpose(1, 0, 2)
    return pixels[..., [(0, 1, 2), (1, 2, 0), (2, 0, 1)][(h >> 6) % 3]]


def mosaic_region(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of the (unbounded) level-0 mosaic, (y1−y0, x1−x0, 3) uint8."""
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    for row in range(y0 // CELL, (y1 - 1) // CELL + 1):
        for col in range(x0 // CELL, (x1 - 1) // CELL + 1):
            top, left = row * CELL, col * CELL
            ys, ye = max(y0, top), min(y1, top + CELL)
            xs, xe = max(x0, left), min(x1, left + CELL)
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = _cell(row, col)[ys - top : ye - top, xs - left : xe - left]
    return out


def level_region(level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels of pyramid ``level`` (level 0 averaged over 2^level × 2^level blocks)."""
    f = 2**level
    block = mosaic_region(y0 * f, y1 * f, x0 * f, x1 * f).astype(np.float32)
    if f == 1:
        return block.astype(np.uint8)
    block = block.reshape(y1 - y0, f, x1 - x0, f, 3).mean(axis=(1, 3))
    return np.rint(block).astype(np.uint8)


def write_mosaic(
    path: str, height: int, width: int, levels: int = 3, tile: int = 256, overwrite: bool = False
) -> list[tuple[int, int]]:
    """Write the mosaic as a tiled pyramidal TIFF (BigTIFF above 2 GB of pixels), atomically.

    An existing ``path`` is replaced only if it is a mosaic of the same size, levels and tiles that
    this command wrote, or with ``overwrite`` (see :func:`~vir_lightning.io.check_output_path`).

    Returns the (height, width) of every level written.
    """
    import tifffile

    if height < 1 or width < 1:
        raise ValueError(f"--size {height} {width}: both sides must be positive")
    if tile < 16 or tile % 16:
        raise ValueError(f"--tile {tile}: TIFF tiles must be a positive multiple of 16")
    if levels < 1:
        raise ValueError(f"--levels {levels}: expected at least 1 (the full-resolution image)")
    run = f"build-mosaic {height}×{width}, {levels} levels, {tile}² tiles"
    check_output_path(path, "build-mosaic output", overwrite=overwrite, run=run)  # a folder says so first
    if os.path.splitext(path)[1].lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path!r}: the mosaic is a TIFF; give a .tif or .tiff file name")
    shapes = []
    for level in range(levels):
        h, w = height // 2**level, width // 2**level
        if h < 1 or w < 1:
            break
        shapes.append((h, w))
    bigtiff = height * width * 3 * 4 // 3 > 2**31
    with atomic_output(path, overwrite=overwrite, run=run) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for level, (h, w) in enumerate(shapes):

            def tiles(level=level, h=h, w=w):
                for y in range(0, h, tile):
                    band = level_region(level, y, min(y + tile, h), 0, w)
                    for x in range(0, w, tile):
                        piece = np.zeros((tile, tile, 3), np.uint8)  # edge tiles are padded
                        part = band[:, x : x + tile]
                        piece[: part.shape[0], : part.shape[1]] = part
                        yield piece

            tif.write(
                tiles(),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    return shapes
