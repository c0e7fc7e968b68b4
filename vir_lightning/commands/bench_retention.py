"""``bench-retention``: the command line of :mod:`vir_lightning.benchmarks.retention_op` (what it measures and how
is described there); each configuration is measured in its own process by that module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from ..benchmarks import retention_op
from ..benchmarks.measure import add_measure_args, check_measure_args, check_positive, run_isolated, write_results_csv
from ..benchmarks.retention_op import MODE_CHOICES, _grid_for, _predicted_bytes, _worker, crossover
from ..retention.forms import CHUNKWISE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vir_lightning bench-retention", description=retention_op.__doc__.split("\n\n")[0]
    )
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--modes", nargs="+", choices=MODE_CHOICES, default=list(MODE_CHOICES))
    p.add_argument("--decay", nargs="+", choices=("1d", "2d"), default=["1d", "2d"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=None, help="tokens (1D) / grid rows (2D); default per op")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    p.add_argument(
        "--task",
        choices=("inference", "train"),
        default="inference",
        help="inference: forward without autograd; train: forward + backward",
    )
    p.add_argument(
        "--crossover",
        action="store_true",
        help="print the length up to which parallel is faster than chunkwise (for mode='auto')",
    )
    p.add_argument("--max-memory-gb", type=float, default=12.0, help="skip configurations predicted above this")
    add_measure_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every bad value as one ValueError before any configuration runs (each would otherwise
    fail, or be skipped, in its own row and the command still succeed)."""
    check_measure_args(args)
    for option, values in (
        ("--tokens", args.tokens),
        ("--batch", args.batch),
        ("--heads", args.heads),
        ("--head-dim", args.head_dim),
        ("--chunk-size", args.chunk_size),
    ):
        check_positive(option, values)
    if not args.max_memory_gb > 0:
        raise ValueError(f"--max-memory-gb {args.max_memory_gb}: expected a positive number of GB")
    if "2d" in args.decay:
        for tokens in args.tokens:
            _grid_for(tokens)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    _check_args(args)
    import torch

    print(
        f"# retention op benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" torch {torch.__version__}, {args.threads} threads, CPU, {args.dtype},"
        f" batch {args.batch}, heads {args.heads}, head_dim {args.head_dim}, {args.task}"
    )
    print("| decay | tokens | mode | chunk | time ms (median) | min–max ms | peak MB | finite |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for decay in args.decay:
        for mode in args.modes:
            for tokens in args.tokens:
                cfg = dict(
                    decay=decay,
                    mode=mode,
                    tokens=tokens,
                    batch=args.batch,
                    heads=args.heads,
                    head_dim=args.head_dim,
                    chunk_size=args.chunk_size if mode == CHUNKWISE else None,
                    dtype=args.dtype,
                    task=args.task,
                    threads=args.threads,
                    allocator=args.allocator,
                    repeats=args.repeats,
                    min_seconds=args.min_seconds,
                )
                if _predicted_bytes(cfg) > args.max_memory_gb * 2**30:
                    result = {"error": f"skipped: predicted > {args.max_memory_gb:g} GB"}
                else:
                    result = run_isolated("vir_lightning.benchmarks.retention_op", cfg)
                row = {**cfg, **result}
                rows.append(row)
                chunk = "default" if mode == CHUNKWISE and cfg["chunk_size"] is None else (cfg["chunk_size"] or "—")
                if "error" in result:
                    print(f"| {decay} | {tokens} | {mode} | {chunk} | {result['error']} | | | |")
                else:
                    print(
                        f"| {decay} | {tokens} | {mode} | {chunk} | {result['time_ms']:.1f} |"
                        f" {result['time_min_ms']:.1f}–{result['time_max_ms']:.1f} | {result['peak_mb']:.0f} |"
                        f" {result['finite']} |"
                    )
                sys.stdout.flush()
    for decay in args.decay:
        for mode in args.modes:
            by_tokens = {r["tokens"]: r for r in rows if r["decay"] == decay and r["mode"] == mode and "time_ms" in r}
            steps = zip(args.tokens, args.tokens[1:], strict=False)
            for a, b in [(a, b) for a, b in steps if a in by_tokens and b in by_tokens]:
                ratio = by_tokens[b]["time_ms"] / by_tokens[a]["time_ms"]
                print(
                    f"{decay} {mode}: time({b})/time({a}) = {ratio:.2f}  (token ratio {b / a:g};"
                    f" time per token × {ratio * a / b:.2f})"
                )
    if args.crossover:
        for decay in args.decay:
            print(f"auto crossover {decay}: parallel up to {crossover(rows, decay)} tokens, chunkwise beyond")
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0
