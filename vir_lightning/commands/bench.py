"""``bench``: the command line of :mod:`vir_lightning.benchmarks.throughput` (what it measures and how
is described there); each configuration is measured in its own process by that module.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ..benchmarks import throughput
from ..benchmarks.measure import (
    add_measure_args,
    check_measure_args,
    check_output_folder,
    check_positive,
    run_isolated,
    write_results_csv,
)
from ..benchmarks.throughput import (
    MODULE,
    RETENTION_MODES,
    STREAMING,
    _configs,
    _label,
    _memory_limit_gb,
    _predicted_gb,
    _worker,
    machine_info,
    markdown_report,
    matmul_peak_gflops,
    plot_report,
)
from ..io import atomic_output, check_output_path
from ..retention.forms import AUTO, CHUNKWISE, PARALLEL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench", description=throughput.__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["vir_small_patch16_224", "vit_small_patch16_224"],
        help="registered model names (ViR, H-ViR, or vit_* baselines)",
    )
    p.add_argument("--baseline", default=None, help="the model the ratios are against (default: the first vit_*)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[224, 512, 1024, 2048])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--tasks", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    p.add_argument(
        "--modes",
        nargs="+",
        choices=RETENTION_MODES,
        default=[PARALLEL, CHUNKWISE, AUTO],
        help="retention modes for inference",
    )
    p.add_argument(
        "--train-modes",
        nargs="+",
        choices=RETENTION_MODES,
        default=[PARALLEL],
        help="retention modes for the training step",
    )
    p.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="+",
        default=[None],
        help="chunkwise chunk sizes (tokens in 1D, grid rows in 2D); default: the library's",
    )
    p.add_argument(
        "--band-rows",
        type=int,
        nargs="+",
        default=[None],
        help="streaming band heights in patch rows; default: about 1024 tokens of whole rows",
    )
    p.add_argument(
        "--whole-image-max-resolution",
        type=int,
        default=4096,
        help="every form but streaming (and the ViT) only up to this resolution: each holds the"
        " whole image's tokens, and a ViR-S chunkwise call at 8192² takes minutes here",
    )
    p.add_argument(
        "--train-max-resolution",
        type=int,
        default=512,
        help="training steps only up to this resolution (a 2048² ViT step takes minutes here)",
    )
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        default=[""],
        help='JSON options for the retention models (not the ViT), e.g. \'{"decay": "2d"}\';'
        " several sets give rows side by side ('' = the defaults)",
    )
    p.add_argument(
        "--grad-checkpointing",
        nargs="+",
        choices=("off", "on"),
        default=["off"],
        help="training steps of the retention models without and/or with gradient checkpointing",
    )
    p.add_argument(
        "--compile",
        nargs="+",
        choices=("off", "on"),
        default=["off"],
        help="eager and/or torch.compile(model, fullgraph=True) (compiled before timing; CPU: inductor)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="float32, or autocast to a 16-bit type",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="skip configurations predicted above this (default: 90%% of available memory)",
    )
    p.add_argument("--out", default="runs/bench", help="directory for results.csv, results.md and the plots")
    add_measure_args(p, repeats=3)
    return p


def _check_args(args) -> dict:
    """Validate before any run; returns the models built on the meta device (cheap) by name."""
    import torch

    from ..models import create_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if not args.device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device {args.device!r} is not supported; use cpu or cuda[:N]")
    check_measure_args(args)
    check_positive("--whole-image-max-resolution", args.whole_image_max_resolution)
    check_positive("--train-max-resolution", args.train_max_resolution)
    if args.max_memory_gb is not None and not args.max_memory_gb > 0:
        raise ValueError(f"--max-memory-gb {args.max_memory_gb}: expected a positive number of GB")
    check_output_folder("--out", args.out)
    for name in ("results.csv", "results.md"):  # before the runs, so no measurement is lost at the end
        check_output_path(os.path.join(args.out, name), "--out", overwrite=args.overwrite, run=args.run)
    for name, values in (
        ("--resolutions", args.resolutions),
        ("--batch-sizes", args.batch_sizes),
        ("--chunk-sizes", [c for c in args.chunk_sizes if c is not None]),
        ("--band-rows", [c for c in args.band_rows if c is not None]),
    ):
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"{name} {bad}: every value must be a positive integer")
    option_sets = []
    for text in args.model_kwargs:
        try:
            options = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise ValueError(f'--model-kwargs {text!r} is not JSON ({err}); e.g. \'{{"decay": "2d"}}\'') from None
        if not isinstance(options, dict):
            raise ValueError(f'--model-kwargs {text!r} must be a JSON object, e.g. \'{{"decay": "2d"}}\'')
        option_sets.append(options)
    models = {}
    with torch.device("meta"):
        for name in dict.fromkeys(args.models):
            models[name] = create_model(name)  # ValueError names close matches for a typo
            if models[name].retention_layers():
                for options, text in zip(option_sets, args.model_kwargs, strict=True):
                    try:
                        create_model(name, **options)
                    except (TypeError, ValueError) as err:  # a bad option, named with its flag
                        raise ValueError(f"--model-kwargs {text!r} for {name}: {err}") from None
    for name, model in models.items():
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1, 1))[0]
        bad = [r for r in args.resolutions if r % patch]
        if bad:
            raise ValueError(f"--resolutions {bad} are not multiples of {name}'s patch size {patch}")
    baseline = args.baseline or next((n for n, m in models.items() if not m.retention_layers()), None)
    if baseline is not None and baseline not in models:
        raise ValueError(f"--baseline {baseline!r} is not one of --models {list(models)}")
    args.baseline = baseline
    return models


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    models = _check_args(args)
    import torch

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device, args.dtype, args.threads)
    machine["matmul_peak_gflops"] = round(matmul_peak_gflops(args.device, args.dtype), 1)
    machine["allocator"] = args.allocator
    limit = args.max_memory_gb or _memory_limit_gb(args.device)
    command = "python -m vir_lightning bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}\n# " + ", ".join(f"{k} {v}" for k, v in machine.items()))

    rows = []
    for cfg in _configs(args, models):
        model = models[cfg["model"]]
        if cfg["task"] == "train" and cfg["resolution"] > args.train_max_resolution:
            continue
        predicted = _predicted_gb(model, cfg)
        if cfg["mode"] != STREAMING and cfg["resolution"] > args.whole_image_max_resolution:
            limit_res = args.whole_image_max_resolution
            result = {"error": f"skipped: whole-image form above --whole-image-max-resolution {limit_res}"}
        elif predicted > limit:
            result = {"error": f"skipped: predicted {predicted:.1f} GB > {limit:.1f} GB"}
        else:
            result = run_isolated(MODULE, cfg)
        row = {**cfg, **result, **{f"machine_{k}": v for k, v in machine.items()}}
        rows.append(row)
        if result.get("error"):
            print(f"{_label(row):48s} {cfg['task']:9s} {cfg['resolution']:5d}² b{cfg['batch']}: {result['error']}")
        else:
            print(
                f"{_label(row):48s} {cfg['task']:9s} {cfg['resolution']:5d}² b{cfg['batch']}:"
                f" {row['images_per_s']:8.3f} img/s  ({row['time_min_ms']:.0f}–{row['time_max_ms']:.0f} ms,"
                f" n={row['repeats']})  peak {row['peak_mb']:7.0f} MB  {row['gflop']:8.1f} GFLOP"
                f"  {row['achieved_gflops']:6.1f} GFLOP/s"
            )
        sys.stdout.flush()

    write_results_csv(str(out_dir / "results.csv"), rows, args)
    report = markdown_report(rows, machine, command, args.baseline)
    with atomic_output(out_dir / "results.md", overwrite=args.overwrite, run=args.run) as tmp:
        Path(tmp).write_text(report)
    print(f"wrote {out_dir / 'results.md'}")
    for path in plot_report(rows, out_dir, machine, args.overwrite, args.run):
        print(f"wrote {path}")
    return 0
