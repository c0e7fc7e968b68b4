"""ONNX Runtime (CPU) beside torch eager: one model's inference time and peak memory per image size.

    python -m vir_lightning bench-onnx [--model vir_small_patch16_224] [--resolutions 224 1024] [--csv out.csv]

Per resolution, in its own process: the model (random weights, seed 0) is built at that size,
exported with ``export_onnx`` in the form ``auto`` picks there (parallel for short sequences,
chunkwise beyond), and then timed in torch (``inference_mode``, eager) and in ONNX Runtime, one
after the other in the same process with the same thread count. The graph's outputs are compared
with torch's on the timed input. Memory is not reported: with two runtimes in one process, the
resident-set peak of a call is not its own (ONNX Runtime keeps an arena); ``predict-large``'s
whole-process peak is measured by ``experiments/deploy/predict_large_16k_runtimes.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

from ..retention.forms import AUTO
from .measure import add_measure_args, check_measure_args, check_positive, measure, run_isolated, write_results_csv


def _worker(cfg: dict) -> dict:
    import logging

    import numpy as np
    import torch

    from ..deploy.onnx_export import export_onnx, onnx_session
    from ..models import create_model
    from ..retention import resolve_mode

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    size = cfg["resolution"]
    model = create_model(cfg["model"], img_size=size, decay=cfg["decay"]).eval()
    ph, pw = model.patch_size
    grid = (size // ph, size // pw)
    tokens = grid[0] * grid[1] + int(model.has_class_token)
    form = resolve_mode(AUTO, tokens, grid if cfg["decay"] == "2d" else None, torch.device("cpu"))
    images = torch.randn(cfg["batch"], model.in_chans, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        export_onnx(model, path, form)
        export_seconds = time.perf_counter() - start
        model.set_retention_mode(form)
        session = onnx_session(path, cfg["threads"])
        feeds = {"images": images.numpy()}
        with torch.inference_mode():
            expected, torch_stats = measure(lambda: model(images), cfg["repeats"], cfg["min_seconds"],
                                            allocator=cfg["allocator"])
        (got,), ort_stats = measure(lambda: session.run(None, feeds), cfg["repeats"], cfg["min_seconds"],
                                    allocator=cfg["allocator"])
    difference = float(np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max())
    for stats in (torch_stats, ort_stats):
        stats.pop("peak_mb")  # see the module docstring
    return {"form": form, "export_s": export_seconds, "max_relative_difference": difference,
            **{f"torch_{k}": v for k, v in torch_stats.items()}, **{f"ort_{k}": v for k, v in ort_stats.items()},
            "speedup": torch_stats["time_ms"] / ort_stats["time_ms"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench-onnx", description=__doc__.split("\n\n")[0])
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

    print(f"# ONNX Runtime {onnxruntime.__version__} (CPU) vs torch {torch.__version__} eager —"
          f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads,"
          f" {args.model}, {args.decay}, batch {args.batch}, fp32, {args.allocator} allocator")
    print("| px | form | torch ms (min–max) | ONNX Runtime ms (min–max) | ORT speed-up | max rel diff | export s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for size in args.resolutions:
        cfg = dict(model=args.model, resolution=size, batch=args.batch, decay=args.decay, threads=args.threads,
                   repeats=args.repeats, min_seconds=args.min_seconds, allocator=args.allocator)
        result = run_isolated("vir_lightning.benchmarks.onnx_runtime", cfg)
        rows.append({**cfg, **result})
        if "error" in result:
            print(f"| {size} | {result['error']} | | | | | |")
        else:
            spread = {r: f"{result[f'{r}_time_min_ms']:.0f}–{result[f'{r}_time_max_ms']:.0f}" for r in ("torch", "ort")}
            print(f"| {size} | {result['form']} | {result['torch_time_ms']:.1f} ({spread['torch']}) |"
                  f" {result['ort_time_ms']:.1f} ({spread['ort']}) | {result['speedup']:.2f}× |"
                  f" {result['max_relative_difference']:.1e} | {result['export_s']:.0f} |")
        sys.stdout.flush()
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
