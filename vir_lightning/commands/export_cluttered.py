"""``export-cluttered``: cluttered Fashion-MNIST (:mod:`vir_lightning.data.cluttered_fashion_mnist`)
written out as an image folder.

    python -m vir_lightning export-cluttered OUT [--train N] [--val N] [--test N] [--canvas PX] …
"""

from __future__ import annotations

import argparse
import inspect

from ..data.cluttered_fashion_mnist import SPLIT_IDS, ClutteredFashionMNISTDataModule, export_image_folder
from ..data.fashion_mnist import check_root
from ..io import check_output_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vir_lightning export-cluttered",
        description="Write cluttered Fashion-MNIST out as an image folder.",
    )
    parser.add_argument("out", help="output folder (gets train/, val/, test/ and one CSV of positions per split)")
    for split in SPLIT_IDS:
        parser.add_argument(f"--{split}", type=int, default=None, help=f"{split} images (default: the whole split)")
    # The generator's options, with the data module's own defaults (one place to change them).
    default = {name: p.default for name, p in inspect.signature(ClutteredFashionMNISTDataModule).parameters.items()}
    parser.add_argument("--canvas", type=int, default=default["canvas"])
    parser.add_argument("--object-scale", type=float, nargs=2, default=default["object_scale"], metavar=("LOW", "HIGH"))
    parser.add_argument("--clutter", type=int, default=default["clutter"])
    parser.add_argument("--clutter-size", type=int, default=default["clutter_size"])
    parser.add_argument("--train-fraction", type=float, default=default["train_fraction"])
    parser.add_argument("--seed", type=int, default=default["generator_seed"], help="the data module's generator_seed")
    parser.add_argument("--root", default=default["root"], help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    check_output_path(args.out, directory=True, replaces=True)  # before minutes of work
    check_root(args.root, option="--root")
    module = ClutteredFashionMNISTDataModule(
        root=args.root,
        canvas=args.canvas,
        object_scale=args.object_scale,
        clutter=args.clutter,
        clutter_size=args.clutter_size,
        train_fraction=args.train_fraction,
        generator_seed=args.seed,
    )
    written = export_image_folder(args.out, module, {split: getattr(args, split) for split in SPLIT_IDS})
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{split} {n}" for split, n in written.items())
        + f" images of {args.canvas}² px; positions in {args.out}/<split>.csv"
    )
    return 0
