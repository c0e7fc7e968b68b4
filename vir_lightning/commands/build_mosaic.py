"""``build-mosaic``: a huge real-pixel tiled pyramidal TIFF (:mod:`vir_lightning.data.mosaic`) for predict-large.

python -m vir_lightning build-mosaic mosaic.tif --size 16384 16384 [--levels 3] [--tile 256]
"""

from __future__ import annotations

import argparse
import os

from ..data import mosaic
from ..data.mosaic import write_mosaic
from ..io import add_overwrite_argument


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vir_lightning build-mosaic", description=mosaic.__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", help="output .tif")
    parser.add_argument("--size", type=int, nargs=2, default=(16384, 16384), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--levels", type=int, default=3, help="pyramid levels (each half the previous size)")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    add_overwrite_argument(parser, "OUT")
    args = parser.parse_args(argv)
    shapes = write_mosaic(args.out, *args.size, levels=args.levels, tile=args.tile, overwrite=args.overwrite)
    sizes = ", ".join(f"{w}×{h}" for h, w in shapes)
    print(f"wrote {args.out}: levels {sizes} px, {args.tile}² zlib tiles, {os.path.getsize(args.out) / 2**20:.0f} MB")
    return 0
