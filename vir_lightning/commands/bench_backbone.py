"""``bench-backbone``: the command line of :mod:`vir_lightning.benchmarks.backbone` (what it measures and how
is described there); each configuration is measured in its own process by that module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from ..benchmarks import backbone
from ..benchmarks.backbone import MM_BASELINES, MODE_CHOICES, _worker
from ..benchmarks.measure import add_measure_args, check_measure_args, check_positive, run_isolated, write_results_csv
from ..retention.forms import CHUNKWISE, PARALLEL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vir_lightning bench-backbone", description=backbone.__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", default="hvir_tiny", help="a registered H-ViR name (default hvir_tiny)")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--modes", nargs="+", choices=MODE_CHOICES, default=[PARALLEL, CHUNKWISE])
    p.add_argument("--directions", type=int, nargs="+", default=[0], help="2D decay directions (0 = model default)")
    p.add_argument("--chunk-size", type=int, default=None, help="chunkwise tile height in grid rows")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=("inference", "train"),
        default=["inference"],
        help="inference, and/or a training step (forward, loss on every output, backward)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=sorted(MM_BASELINES),
        default=[],
        help="MMDetection backbones measured alongside, in the same run (needs `make mm`)",
    )
    add_measure_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every bad value as one ValueError before any configuration runs (each would otherwise fail
    in its own row and the command still succeed)."""
    import torch

    from ..models import HybridViR, create_model

    check_measure_args(args)
    for option, values in (("--size", args.size), ("--batch", args.batch), ("--chunk-size", args.chunk_size)):
        check_positive(option, values)
    bad = [d for d in args.directions if d not in (0, 1, 2, 4)]
    if bad:
        raise ValueError(f"--directions {' '.join(map(str, bad))}: expected 0 (the model's default), 1, 2 or 4")
    with torch.device("meta"):  # cheap: no weights
        model = create_model(args.model, num_classes=0)  # ValueError names close matches for a typo
    if not isinstance(model, HybridViR):
        raise ValueError(
            f"--model {args.model!r} is not an H-ViR backbone; expected one of hvir_nano, hvir_tiny,"
            " hvir_small, hvir_base (`bench` measures the ViR/ViT classifiers)"
        )
    if args.baselines:
        try:
            import mmdet  # noqa: F401
        except ImportError:
            raise ImportError("--baselines needs MMDetection: run `make mm` (or drop --baselines)") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    _check_args(args)
    import torch

    height, width = args.size
    print(
        f"# backbone benchmark — {args.model} {height}×{width} batch {args.batch}, all four stage outputs, fp32,"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads,"
        f" torch {torch.__version__}"
    )
    print(
        "| task | backbone | directions | mode | chunk | time ms (median) | min–max ms | peak MB | params M |"
        " rel. diff vs parallel |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    common = dict(
        height=height,
        width=width,
        batch=args.batch,
        threads=args.threads,
        allocator=args.allocator,
        repeats=args.repeats,
        min_seconds=args.min_seconds,
    )
    for task in args.tasks:
        plan = [
            dict(
                model=args.model,
                mode=mode,
                directions=directions,
                chunk_size=args.chunk_size if mode == CHUNKWISE else None,
            )
            for directions in args.directions
            for mode in args.modes
        ]
        plan += [dict(model=name, mode="mmdet", directions=0, chunk_size=None) for name in args.baselines]
        references = {}
        for entry in plan:
            cfg = {**entry, **common, "task": task}
            result = run_isolated("vir_lightning.benchmarks.backbone", cfg)
            probe = result.pop("probe", None)
            diff = ""
            if probe is not None and cfg["mode"] != "mmdet":
                reference = references.get(cfg["directions"])
                if reference is None and cfg["mode"] == PARALLEL:
                    references[cfg["directions"]] = torch.tensor(probe)
                elif reference is not None:
                    diff = f"{float((torch.tensor(probe) - reference).norm() / reference.norm()):.1e}"
            row = {**cfg, **result, "rel_diff": diff}
            rows.append(row)
            label = "—" if cfg["mode"] == "mmdet" else (cfg["directions"] or "default")
            default_chunk = cfg["mode"] == CHUNKWISE and cfg["chunk_size"] is None
            chunk = "default" if default_chunk else (cfg["chunk_size"] or "—")
            name = f"{cfg['model']} (MMDetection)" if cfg["mode"] == "mmdet" else cfg["model"]
            mode = "—" if cfg["mode"] == "mmdet" else cfg["mode"]
            if "error" in result:
                print(f"| {task} | {name} | {label} | {mode} | {chunk} | {result['error']} | | | | |")
            else:
                print(
                    f"| {task} | {name} | {label} | {mode} | {chunk} | {result['time_ms']:.0f} |"
                    f" {result['time_min_ms']:.0f}–{result['time_max_ms']:.0f} | {result['peak_mb']:.0f} |"
                    f" {result['params_m']:.1f} | {diff or '—'} |"
                )
            sys.stdout.flush()
    grids = next((row["grids"] for row in rows if "grids" in row), None)
    if grids:
        print(f"stage grids: {grids}")
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0
