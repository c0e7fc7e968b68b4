"""Time and peak memory of the retention op per mode and sequence length.

    python -m vir_lightning bench-retention [--tokens 1024 4096 16384] [--decay 1d 2d] [--task train] [--csv out.csv]

``--task inference`` times the forward pass without autograd; ``--task train`` the forward and the
backward pass (q, k, v requiring gradients, the output times a fixed random gradient).

Every configuration runs in its own process (see :mod:`vir_lightning.benchmarks.measure`): peak
memory is the resident memory the op adds; time is the median of several calls after a warm-up.
Configurations predicted to exceed ``--max-memory-gb`` are skipped with a message instead of run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

from ..retention.forms import CHUNKWISE, EXACT_FORMS, PARALLEL
from .measure import add_measure_args, check_measure_args, check_positive, measure, run_isolated, write_results_csv

MODE_CHOICES = EXACT_FORMS


def _grid_for(tokens: int) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"--decay 2d needs square token counts (a side×side grid); got --tokens {tokens}")
    return side, side


def _worker(cfg: dict) -> dict:
    """Run one configuration in this process; returns timings and memory."""
    import torch

    from ..retention import retention

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    shape = (cfg["batch"], cfg["heads"], cfg["tokens"], cfg["head_dim"])
    q, k, v = (torch.randn(shape, dtype=getattr(torch, cfg["dtype"])) for _ in range(3))
    rates = torch.tensor([0.97] * cfg["heads"])
    grid = _grid_for(cfg["tokens"]) if cfg["decay"] == "2d" else None
    kwargs = dict(mode=cfg["mode"], chunk_size=cfg["chunk_size"], grid_shape=grid)

    if cfg.get("task", "inference") == "train":
        for t in (q, k, v):
            t.requires_grad_(True)
        upstream = torch.randn(shape, dtype=q.dtype)

        def step():
            out = retention(q, k, v, rates, **kwargs)
            grads = torch.autograd.grad(out, (q, k, v), upstream)
            return torch.stack([g.abs().sum() for g in grads])

        out, stats = measure(step, cfg["repeats"], cfg["min_seconds"], allocator=cfg["allocator"])
    else:
        with torch.inference_mode():
            out, stats = measure(
                lambda: retention(q, k, v, rates, **kwargs), cfg["repeats"], cfg["min_seconds"],
                allocator=cfg["allocator"],
            )
    return {**stats, "finite": bool(torch.isfinite(out).all())}


def _predicted_bytes(cfg: dict) -> int:
    """Rough upper bound of the op's working memory (bytes), to skip configurations that cannot fit."""
    n, h, b, d = cfg["tokens"], cfg["heads"], cfg["batch"], cfg["head_dim"]
    train = 2 if cfg.get("task") == "train" else 1  # the backward pass keeps (or rebuilds) as much again
    if cfg["mode"] == PARALLEL:
        return train * 4 * n * n * (3 * b * h + 3)  # scores, product, decay table and its distance grid
    return train * 4 * b * h * n * d * 8  # inputs, outputs and per-chunk intermediates


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench-retention", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--modes", nargs="+", choices=MODE_CHOICES, default=list(MODE_CHOICES))
    p.add_argument("--decay", nargs="+", choices=("1d", "2d"), default=["1d", "2d"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=None, help="tokens (1D) / grid rows (2D); default per op")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    p.add_argument("--task", choices=("inference", "train"), default="inference",
                   help="inference: forward without autograd; train: forward + backward")
    p.add_argument("--crossover", action="store_true",
                   help="print the length up to which parallel is faster than chunkwise (for mode='auto')")
    p.add_argument("--max-memory-gb", type=float, default=12.0, help="skip configurations predicted above this")
    add_measure_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every bad value as one ValueError before any configuration runs (each would otherwise
    fail, or be skipped, in its own row and the command still succeed)."""
    check_measure_args(args)
    for option, values in (("--tokens", args.tokens), ("--batch", args.batch), ("--heads", args.heads),
                           ("--head-dim", args.head_dim), ("--chunk-size", args.chunk_size)):
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
                    decay=decay, mode=mode, tokens=tokens, batch=args.batch, heads=args.heads,
                    head_dim=args.head_dim, chunk_size=args.chunk_size if mode == CHUNKWISE else None,
                    dtype=args.dtype, task=args.task, threads=args.threads, allocator=args.allocator,
                    repeats=args.repeats, min_seconds=args.min_seconds,
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
                print(f"{decay} {mode}: time({b})/time({a}) = {ratio:.2f}  (token ratio {b / a:g};"
                      f" time per token × {ratio * a / b:.2f})")
    if args.crossover:
        for decay in args.decay:
            print(f"auto crossover {decay}: parallel up to {crossover(rows, decay)} tokens, chunkwise beyond")
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0


def crossover(rows: list[dict], decay: str) -> int:
    """The longest measured length at which parallel is at least as fast as chunkwise (0 if none):
    the value for ``AUTO_PARALLEL_MAX_TOKENS``."""
    time_of = {(r["mode"], r["tokens"]): r["time_ms"] for r in rows if r["decay"] == decay and "time_ms" in r}
    lengths = sorted({t for mode, t in time_of if (PARALLEL, t) in time_of and (CHUNKWISE, t) in time_of})
    best = 0
    for tokens in lengths:
        if time_of[PARALLEL, tokens] <= time_of[CHUNKWISE, tokens]:
            best = tokens
    return best


if __name__ == "__main__":
    raise SystemExit(main())
