"""``bench-onnx``: the command line of :mod:`vir_lightning.benchmarks.onnx_runtime` (what it measures and how
is described there); each configuration is measured in its own process by that module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from ..benchmarks import onnx_runtime
from ..benchmarks.measure import add_measure_args, check_measure_args, check_positive, run_isolated, write_results_csv
from ..benchmarks.onnx_runtime import _worker


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vir_lightning bench-onnx", description=onnx_runtime.__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", default="vir_small_patch16_224", help="a registered ViR or H-ViR name")
    p.add_argument("--resolutions", type=int, nargs="+", default=[224, 1024], help="square image sides in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--decay", choices=("1d", "2d"), default="1d")
    add_measure_args(p, repeats=5)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    check_measure_args(args)
    check_positive("--resolutions", args.resolutions)
    check_positive("--batch", args.batch)
    from ..models import create_model

    create_model(args.model, decay=args.decay, img_size=args.resolutions[0])  # an unknown name fails here, once
    import onnxruntime
    import torch

    print(
        f"# ONNX Runtime {onnxruntime.__version__} (CPU) vs torch {torch.__version__} eager —"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads,"
        f" {args.model}, {args.decay}, batch {args.batch}, fp32, {args.allocator} allocator"
    )
    print("| px | form | torch ms (min–max) | ONNX Runtime ms (min–max) | ORT speed-up | max rel diff | export s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for size in args.resolutions:
        cfg = dict(
            model=args.model,
            resolution=size,
            batch=args.batch,
            decay=args.decay,
            threads=args.threads,
            repeats=args.repeats,
            min_seconds=args.min_seconds,
            allocator=args.allocator,
        )
        result = run_isolated("vir_lightning.benchmarks.onnx_runtime", cfg)
        rows.append({**cfg, **result})
        if "error" in result:
            print(f"| {size} | {result['error']} | | | | | |")
        else:
            spread = {r: f"{result[f'{r}_time_min_ms']:.0f}–{result[f'{r}_time_max_ms']:.0f}" for r in ("torch", "ort")}
            print(
                f"| {size} | {result['form']} | {result['torch_time_ms']:.1f} ({spread['torch']}) |"
                f" {result['ort_time_ms']:.1f} ({spread['ort']}) | {result['speedup']:.2f}× |"
                f" {result['max_relative_difference']:.1e} | {result['export_s']:.0f} |"
            )
        sys.stdout.flush()
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0
