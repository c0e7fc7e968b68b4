"""Forward time and peak memory of a backbone's feature pyramid per retention mode, at one input size.

    python -m vir_lightning bench-backbone [--model hvir_tiny] [--size 800 1333] [--modes parallel chunkwise]

The measured call is what a detector runs: ``forward_intermediates`` (all four stage outputs) in
eval mode under ``torch.inference_mode``, batch ``--batch``, float32 on the CPU. Each configuration
runs in its own process (see :mod:`vir_lightning.benchmarks.measure`); the outputs of every mode are
checked against parallel mode's (the relative difference is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from .measure import add_measure_args, measure, run_isolated, write_results_csv

MODE_CHOICES = ("parallel", "chunkwise", "recurrent")


def _worker(cfg: dict) -> dict:
    import torch

    from ..models import create_model

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    extra = {"directions": cfg["directions"]} if cfg["directions"] else {}
    model = create_model(cfg["model"], num_classes=0, layer_scale_init=1.0, **extra).eval()
    model.set_retention_mode(cfg["mode"], cfg["chunk_size"])
    x = torch.randn(cfg["batch"], 3, cfg["height"], cfg["width"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats, stats = measure(
            lambda: model.forward_intermediates(x, intermediates_only=True), cfg["repeats"], cfg["min_seconds"],
            allocator=cfg["allocator"],
        )
        # A fingerprint of the outputs, so the parent can compare modes without moving tensors.
        probe = torch.cat([f.flatten()[:: max(1, f.numel() // 4096)] for f in feats]).double()
    return {**stats, "probe": probe.tolist(), "grids": [list(f.shape[-2:]) for f in feats]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench-backbone", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hvir_tiny", help="a registered H-ViR name (default hvir_tiny)")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--modes", nargs="+", choices=MODE_CHOICES, default=["parallel", "chunkwise"])
    p.add_argument("--directions", type=int, nargs="+", default=[0], help="2D decay directions (0 = model default)")
    p.add_argument("--chunk-size", type=int, default=None, help="chunkwise chunk size in grid rows")
    add_measure_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    import torch

    height, width = args.size
    print(
        f"# backbone benchmark — {args.model} {height}×{width} batch {args.batch}, forward_intermediates, fp32,"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads,"
        f" torch {torch.__version__}"
    )
    print("| directions | mode | chunk | time ms (median) | min–max ms | peak MB | rel. diff vs parallel |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for directions in args.directions:
        reference = None
        for mode in args.modes:
            cfg = dict(
                model=args.model, height=height, width=width, batch=args.batch, mode=mode, directions=directions,
                chunk_size=args.chunk_size if mode == "chunkwise" else None, threads=args.threads,
                allocator=args.allocator,
                repeats=args.repeats, min_seconds=args.min_seconds,
            )
            result = run_isolated("vir_lightning.benchmarks.backbone", cfg)
            probe = result.pop("probe", None)
            diff = ""
            if probe is not None:
                if reference is None and mode == "parallel":
                    reference = torch.tensor(probe)
                elif reference is not None:
                    diff = f"{float((torch.tensor(probe) - reference).norm() / reference.norm()):.1e}"
            row = {**cfg, **result, "rel_diff": diff}
            rows.append(row)
            label = directions or "default"
            chunk = "default" if mode == "chunkwise" and cfg["chunk_size"] is None else (cfg["chunk_size"] or "—")
            if "error" in result:
                print(f"| {label} | {mode} | {chunk} | {result['error']} | | | |")
            else:
                print(
                    f"| {label} | {mode} | {chunk} | {result['time_ms']:.0f} | {result['time_min_ms']:.0f}–"
                    f"{result['time_max_ms']:.0f} | {result['peak_mb']:.0f} | {diff or '—'} |"
                )
            sys.stdout.flush()
    if rows and "grids" in rows[0]:
        print(f"stage grids: {rows[0]['grids']}")
    if args.csv:
        write_results_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
