"""``predict-large``: classify huge images (whole-slide scans, satellite tiles) in streaming form.

    python -m vir_lightning predict-large --ckpt_path CKPT|DIR [--config CFG] --images A.tif [B.svs …]
        --out predictions.csv [--band-rows R] [--level L] [--features-dir DIR] [--edge crop|pad]
    python -m vir_lightning predict-large --runtime onnxruntime --onnx STEP.onnx --images … --out …

Each image is read band by band from disk (:mod:`vir_lightning.data.large_image`), normalised like
the training data, and pushed through the ViR in streaming mode (in torch, or with ``--runtime
onnxruntime`` through a step graph of ``export-onnx --form streaming-step`` in ONNX Runtime):
neither the image nor its tokens are ever held whole, so memory does not grow with the image
height. Per image: top-5 classes in a CSV (rewritten atomically after every image, so a killed run
loses nothing and a rerun skips what is done), and optionally the final-norm feature of every
patch as float16 ``(rows, cols, dim)`` in ``DIR/<name>.npy`` (written band by band; open it with
``np.load(path, mmap_mode="r")``) with ``DIR/<name>.json`` describing it.
An unreadable image is reported with its path and the others go on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import threading
from pathlib import Path

from ..data.large_image import READERS
from ..deploy.streaming_predict import load_onnx_model, load_streaming_model, patch_grid, predict_image
from ..io import add_overwrite_argument, atomic_output, check_output_path, write_csv_atomically

TOP_K = 5
FIXED_COLUMNS = [
    "path",
    "level",
    "reader",
    "height",
    "width",
    "grid_rows",
    "grid_cols",
    "edge",
    "edge_rows_px",
    "edge_cols_px",
]
COLUMNS = FIXED_COLUMNS + [f"{what}_{i}" for i in range(1, TOP_K + 1) for what in ("class", "prob")] + ["seconds"]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _read_done(out: str) -> list[dict]:
    """Rows of an earlier run's CSV (resume), or [] when there is none."""
    if not os.path.exists(out):
        return []
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a directory; give a CSV file name")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(
                f"--out {out!r} exists and is not a predict-large CSV; choose another file (it was left as is)"
            )
        return list(reader)


def _run_options(args, mean, std) -> dict:
    """What the rows of ``--out`` depend on besides the image and level: the weights, the normalisation,
    the edge handling and the reader (the band height and retention form do not change a result)."""
    from ..deploy.pretrained import WEIGHTS_FILE

    weights = _weights(args)
    stat = os.stat(os.path.join(weights, WEIGHTS_FILE) if os.path.isdir(weights) else weights)
    options = {
        "checkpoint": os.path.abspath(weights),
        "checkpoint_bytes": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "edge": args.edge,
        "reader": args.reader,
    }
    if args.runtime != "torch":  # (not recorded for torch: CSVs of earlier versions resume as before)
        options["runtime"] = args.runtime
    return options


def _weights(args) -> str:
    """The file (or pretrained folder) the predictions come from."""
    return args.onnx if args.runtime == "onnxruntime" else args.ckpt_path


def _check_same_run(args, mean, std, done: list[dict]) -> dict:
    """A rerun resumes ``--out`` only with the options its rows were computed with (recorded beside
    it in ``<out>.options.json``): otherwise its images would be skipped with another run's results.
    Returns this run's options, for :func:`_record_options` once a row is written."""
    options, path = _run_options(args, mean, std), args.out + ".options.json"
    if done and os.path.exists(path):
        try:
            earlier = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            earlier = {}
        changed = [
            f"{key} {earlier.get(key)!r} → {value!r}" for key, value in options.items() if earlier.get(key) != value
        ]
        if changed:
            raise ValueError(
                f"--out {args.out!r} holds {len(done)} results computed with other options"
                f" ({'; '.join(changed)}); a rerun would skip those images and keep their old"
                " results: rerun with the same options to resume, or choose another --out"
            )
    return options


def _record_options(args, options: dict) -> None:
    with atomic_output(args.out + ".options.json", overwrite=args.overwrite) as tmp:
        Path(tmp).write_text(json.dumps(options, indent=1))


def _make_folder(option: str, path: str) -> None:
    """``os.makedirs(path)``, or one ValueError naming ``option`` (a file in the way, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{option} {path!r}: cannot create the folder ({err.strerror}: {err.filename})") from None


def _lock_output(out: str):
    """An exclusive lock on ``<out>.lock`` (the open file; closing it releases the lock): two runs
    writing the same CSV would each rewrite it with only their own rows."""
    import fcntl

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    handle = open(os.path.abspath(out) + ".lock", "a")  # noqa: SIM115 (returned open: the lock lives with it)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"--out {out!r} is being written by another predict-large run; wait for it to finish"
            " or choose another --out"
        ) from None
    return handle


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning predict-large", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        default=None,
        help="the training config (normalisation, for checkpoints that do not record it; checked against"
        " the checkpoint)",
    )
    p.add_argument(
        "--ckpt_path",
        default=None,
        help="a checkpoint written by `python -m vir_lightning fit`, or a pretrained folder (export-model)",
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="torch (default), or ONNX Runtime on the CPU running an --onnx streaming-step graph",
    )
    p.add_argument("--onnx", default=None, help="--runtime onnxruntime: a graph of `export-onnx --form streaming-step`")
    p.add_argument("--images", nargs="+", required=True, help="TIFF/BigTIFF, whole-slide (OpenSlide) or PNG/JPEG files")
    p.add_argument("--out", required=True, help="CSV of top-5 predictions (rerun: images already in it are skipped)")
    p.add_argument(
        "--band-rows",
        "--chunk-size",  # the old name, still accepted (with a notice): it meant the band height here
        dest="band_rows",
        type=int,
        default=None,
        metavar="R",
        help="band height in patch rows (default: about 1024 tokens of whole rows; --chunk-size is the old name)",
    )
    p.add_argument("--level", type=int, default=0, help="pyramid level to read (0 = full resolution)")
    p.add_argument(
        "--reader",
        choices=READERS,
        default=READERS[0],
        help="auto: TIFF → tifffile, slide formats → OpenSlide, others → Pillow",
    )
    p.add_argument(
        "--edge",
        choices=("crop", "pad"),
        default="crop",
        help="sides that are not a multiple of the patch: crop them (default) or pad with the mean colour",
    )
    p.add_argument("--features-dir", default=None, help="also write per-patch float16 features: DIR/<name>.npy + .json")
    add_overwrite_argument(p, "--out (starting it afresh instead of resuming) and the features files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if any(arg == "--chunk-size" or arg.startswith("--chunk-size=") for arg in given):
        print("note: --chunk-size is now --band-rows (the band height in patch rows)", file=sys.stderr)
    if threading.current_thread() is threading.main_thread():
        # A `kill` (SIGTERM) unwinds like Ctrl-C, so the temporary CSV / features files are removed.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.runtime == "torch" and (args.ckpt_path is None or args.onnx is not None):
        raise ValueError(
            "--runtime torch needs --ckpt_path (a checkpoint or pretrained folder); --onnx is for --runtime onnxruntime"
        )
    if args.runtime == "onnxruntime" and (args.onnx is None or args.ckpt_path is not None or args.band_rows):
        raise ValueError(
            "--runtime onnxruntime takes --onnx STEP.onnx (its band height is fixed at export), not"
            " --ckpt_path or --band-rows"
        )
    if args.band_rows is not None and args.band_rows < 1:
        raise ValueError(f"--band-rows {args.band_rows}: the band height must be at least 1 patch row")
    if args.level < 0:
        raise ValueError(f"--level {args.level}: pyramid levels count from 0")
    by_file = {}
    for path in args.images:  # one image given twice (or by two spellings) is predicted once
        by_file.setdefault(os.path.realpath(path), path)
    if len(by_file) < len(args.images):
        print(f"{len(args.images) - len(by_file)} of --images name an image given before; each is predicted once")
        args.images = list(by_file.values())
    inputs = [p for p in (*args.images, _weights(args), args.config) if p]
    # Before loading the model and reading huge images. An --out of this command (resumed) or, with
    # --overwrite, any file; never one of the inputs.
    check_output_path(args.out, "--out", inputs=inputs, overwrite=args.overwrite)
    stems = {}
    if args.features_dir:
        check_output_path(args.features_dir, "--features-dir", directory=True)
        for path in args.images:
            stem = Path(path).stem
            if stems.setdefault(stem, path) != path:
                raise ValueError(
                    f"--features-dir: {stems[stem]!r} and {path!r} would both write {stem}.npy;"
                    " rename one or run them separately"
                )
            for suffix in (".npy", ".json"):
                check_output_path(
                    os.path.join(args.features_dir, stem + suffix),
                    "--features-dir file",
                    inputs=inputs,
                    overwrite=args.overwrite,
                )
        _make_folder("--features-dir", args.features_dir)
    _make_folder("--out", os.path.dirname(os.path.abspath(args.out)))
    with _lock_output(args.out):
        done = [] if args.overwrite else _read_done(args.out)
        if args.runtime == "onnxruntime":
            model, names, mean, std = load_onnx_model(args.config, args.onnx)
        else:
            model, names, mean, std = load_streaming_model(args.config, args.ckpt_path, args.band_rows)
        options = _check_same_run(args, mean, std, done)
        options_recorded = False

        from tqdm import tqdm

        from ..data.large_image import open_large_image
        from ..models.streaming import band_bounds, default_band_rows
        from ..tasks.progress import LineProgress

        finished = {(row["path"], row["level"]) for row in done}
        failures = 0
        for path in args.images:
            features = os.path.join(args.features_dir, Path(path).stem + ".npy") if args.features_dir else None
            if (path, str(args.level)) in finished:
                if features is None or os.path.exists(features):
                    print(f"{path}: already in {args.out}, skipped")
                    continue
                # predicted before without --features-dir: again, for its features (its row is replaced)
                done = [row for row in done if (row["path"], row["level"]) != (path, str(args.level))]
            try:
                with open_large_image(path, args.level, args.reader) as image:
                    rows, cols, _, _ = patch_grid(image.height, image.width, model.patch_size, args.edge)
                    if hasattr(model, "check_grid"):  # before the progress bar, so the error line stands alone
                        model.check_grid((rows, cols), path)
                    bands = len(band_bounds(max(rows, 1), model.band_rows or default_band_rows(max(cols, 1))))
                    passes = 2 if model.multipass else 1
                    bar = tqdm if sys.stderr.isatty() else LineProgress  # a log gets lines, not carriage returns
                    with bar(
                        total=bands * passes,
                        desc=Path(path).name,
                        unit="band",
                        file=sys.stderr,
                        leave=False,
                        dynamic_ncols=True,
                    ) as progress:
                        result = predict_image(model, image, mean, std, args.edge, features, progress, args.overwrite)
            except (ValueError, FileNotFoundError, OSError, MemoryError) as err:
                failures += 1
                message = str(err) if path in str(err) else f"{path}: {err}"  # numpy's MemoryError names no file
                if isinstance(err, MemoryError):
                    message += " (more memory than there is: rewrite the file tiled, or read another --level)"
                print(f"error: {message}", file=sys.stderr)
                continue
            top = result["probs"].topk(min(TOP_K, len(names)))
            pairs = [(names[i], f"{p:.6f}") for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
            pairs += [("", "")] * (TOP_K - len(pairs))
            row = {"path": path, **{k: result[k] for k in FIXED_COLUMNS[1:]}, "seconds": f"{result['seconds']:.2f}"}
            row.update({f"class_{i}": c for i, (c, _) in enumerate(pairs, 1)})
            row.update({f"prob_{i}": p for i, (_, p) in enumerate(pairs, 1)})
            if features:
                meta = {
                    "source": os.path.abspath(path),
                    "level": image.level,
                    "reader": image.reader,
                    "image_size": [image.height, image.width],
                    "grid": [result["grid_rows"], result["grid_cols"]],
                    "patch_size": list(model.patch_size),
                    "edge": args.edge,
                    "edge_px": [result["edge_rows_px"], result["edge_cols_px"]],
                    "dim": model.num_features,
                    "dtype": "float16",
                    "layout": "rows, cols, dim (final-norm features, first pass)",
                    "checkpoint": os.path.abspath(_weights(args)),
                }
                with atomic_output(features[: -len(".npy")] + ".json", overwrite=args.overwrite) as tmp:
                    Path(tmp).write_text(json.dumps(meta, indent=1))
            done.append(row)
            if not options_recorded:  # with the first row: a run that writes none leaves nothing
                _record_options(args, options)
                options_recorded = True
            write_csv_atomically(args.out, COLUMNS, ([r[c] for c in COLUMNS] for r in done), overwrite=args.overwrite)
            edge = {"crop": "cropped", "pad": "padded"}[args.edge]
            grid = f"{result['grid_rows']}×{result['grid_cols']}"
            edge_px = f"{result['edge_cols_px']}×{result['edge_rows_px']}"
            print(
                f"{path}: {image.width}×{image.height} px (level {image.level}, {image.reader}), grid {grid},"
                f" {edge} {edge_px} px → {pairs[0][0]} ({float(pairs[0][1]):.3f}) in {result['seconds']:.1f} s"
            )
        failed = f"; {failures} failed (see error: lines)" if failures else ""
        if os.path.exists(args.out):
            print(f"wrote {args.out}: {len(done)} images{failed}")
        else:
            print(f"nothing written to {args.out}: no image was predicted{failed}")
        return 1 if failures else 0
