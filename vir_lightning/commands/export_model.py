"""``export-model``: a training checkpoint → a pretrained folder (``config.json`` + ``model.safetensors``).

    python -m vir_lightning export-model runs/quickstart/checkpoints/last.ckpt models/quickstart

The folder is what :func:`vir_lightning.from_pretrained`, ``predict``, ``validate``, ``predict-large``,
``export-onnx`` and ``fit --model.init_args.pretrained`` read: no training config is needed, and
nothing in it can run code. With Lightning's ``EMAWeightAveraging`` the checkpoint's ``state_dict``
holds the averaged weights, so those are exported.
"""

from __future__ import annotations

import argparse
import os

from ..io import add_overwrite_argument, check_output_path


def export_model(checkpoint_path: str, directory: str, overwrite: bool = False) -> dict:
    """Write the pretrained folder of a classification checkpoint; returns its config."""
    from ..deploy.checkpoints import classifier_from_checkpoint
    from ..deploy.pretrained import save_pretrained

    check_output_path(directory, "export-model output", directory=True, replaces=True, inputs=(checkpoint_path,))
    if os.path.isdir(checkpoint_path):
        raise ValueError(
            f"{checkpoint_path!r} is a folder; give the .ckpt file written by fit (a pretrained folder needs no export)"
        )
    model, hparams = classifier_from_checkpoint(checkpoint_path)
    return save_pretrained(
        model,
        directory,
        class_names=hparams.get("class_names"),
        preprocessing=hparams.get("preprocessing"),
        overwrite=overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vir_lightning export-model",
        description="Turn a training checkpoint into a pretrained folder: config.json (model, classes, image size,"
        " normalisation) and model.safetensors, loadable with vir_lightning.from_pretrained(DIR).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by `python -m vir_lightning fit`")
    parser.add_argument("out", help="the folder to write (replaced whole only if vir_lightning wrote it)")
    add_overwrite_argument(parser, "OUT")
    args = parser.parse_args(argv)
    config = export_model(args.checkpoint, args.out, args.overwrite)
    normalised = "with" if config["preprocessing"] else "without (the checkpoint predates its record)"
    print(
        f"wrote {args.out}: {config['model_name']}, {config['num_classes']} classes,"
        f" {config['img_size'][0]}×{config['img_size'][1]} px, {normalised} its normalisation"
    )
    return 0
