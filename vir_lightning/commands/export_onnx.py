"""``export-onnx``: a checkpoint or pretrained folder → an ONNX graph, checked in ONNX Runtime.

    python -m vir_lightning export-onnx CKPT|DIR OUT.onnx --form parallel|chunkwise|streaming-step
        [--img-size H [W]] [--width W --band-rows R] [--opset N]

``parallel`` / ``chunkwise``: ``images`` (batch, C, H, W) → ``logits`` (and for an H-ViR the four
stage maps ``stage1`` … ``stage4``), at one image size (``--img-size``, default the training size).
``streaming-step``: one band of patch rows and every block's state → the band's features, the new
states and the logits so far, for images of one width (``--width``) and any height; see
``predict-large --runtime onnxruntime``. The batch is dynamic in both. After writing, the graph is
run in ONNX Runtime beside torch on a random batch and the largest relative difference printed.
"""

from __future__ import annotations

import argparse
import os

from ..io import add_overwrite_argument, check_output_path
from ..retention.forms import CHUNKWISE, PARALLEL


def _parser() -> argparse.ArgumentParser:
    from ..deploy.onnx_graphs import ONNX_FORMS

    p = argparse.ArgumentParser(prog="python -m vir_lightning export-onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a .ckpt written by fit, or a pretrained folder (export-model)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--form", required=True, help=f"one of {', '.join(ONNX_FORMS)}")
    p.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="whole-image forms: H [W] in pixels (default: the training size)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="streaming-step: image width in pixels, a multiple of the patch (default: the training width)",
    )
    p.add_argument(
        "--band-rows", type=int, default=1, help="streaming-step: patch rows per call (default 1: images of any height)"
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    add_overwrite_argument(p, "OUT")
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    args = _parser().parse_args(argv)
    from ..deploy.checkpoints import classifier_from_checkpoint
    from ..deploy.onnx_export import check_form, export_onnx

    if args.img_size is not None and len(args.img_size) not in (1, 2):
        raise ValueError(f"--img-size takes H or H W, not {len(args.img_size)} numbers")
    whole = args.form in (PARALLEL, CHUNKWISE)
    if whole and (args.width is not None or args.band_rows != 1):
        raise ValueError(f"--width and --band-rows shape the streaming step; the {args.form} form takes --img-size")
    if not whole and args.img_size is not None:
        raise ValueError("--img-size is for the whole-image forms; the streaming step takes --width (any height)")
    size = None if args.img_size is None else tuple(args.img_size * (3 - len(args.img_size)))
    run = (
        f"export-onnx of {os.path.abspath(args.source)} ({args.form}, size {size or args.width or 'trained'},"
        f" band rows {args.band_rows}, opset {args.opset or 'default'})"
    )
    check_output_path(args.out, "export-onnx output", inputs=(args.source,), overwrite=args.overwrite, run=run)
    out_folder = os.path.realpath(os.path.dirname(os.path.abspath(args.out)))
    if os.path.isdir(args.source) and out_folder == os.path.realpath(args.source):
        raise ValueError(
            f"export-onnx output {args.out!r} is inside the pretrained folder it reads; write it elsewhere"
        )
    model, hparams = classifier_from_checkpoint(args.source)
    check_form(model, args.form)  # before the long trace
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed": not ours to fix
    print(f"exporting {hparams['model_name']} ({args.form}); tracing takes a minute or so")
    meta = export_onnx(
        model,
        args.out,
        args.form,
        img_size=size,
        width=args.width,
        band_rows=args.band_rows,
        opset=args.opset,
        class_names=hparams.get("class_names"),
        preprocessing=hparams.get("preprocessing"),
        overwrite=args.overwrite,
        run=run,
    )
    shape = (
        f"{meta['image_size'][0]}×{meta['image_size'][1]} px images"
        if whole
        else f"bands of {meta['band_rows']} patch rows × {meta['width']} px"
    )
    print(
        f"wrote {args.out}: {meta['model_name']} {args.form}, {shape}, dynamic batch, outputs"
        f" {', '.join(meta['outputs'])}; ONNX Runtime vs torch: {meta['max_relative_difference']:.1e} relative"
    )
    return 0
