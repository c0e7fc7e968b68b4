"""Time and peak memory of the retention op per mode and sequence length.

    python -m vir_lightning bench-retention [--tokens 1024 4096 16384] [--decay 1d 2d] [--task train] [--csv out.csv]

``--task inference`` times the forward pass without autograd; ``--task train`` the forward and the
backward pass (q, k, v requiring gradients, the output times a fixed random gradient).

Every configuration runs in its own process (see :mod:`vir_lightning.benchmarks.measure`): peak
memory is the resident memory the op adds; time is the median of several calls after a warm-up.
Configurations predicted to exceed ``--max-memory-gb`` are skipped with a message instead of run.
"""

from __future__ import annotations

import math

from ..retention.forms import CHUNKWISE, EXACT_FORMS, PARALLEL
from .measure import measure, worker_main

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
                lambda: retention(q, k, v, rates, **kwargs),
                cfg["repeats"],
                cfg["min_seconds"],
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


if __name__ == "__main__":  # run_isolated: one configuration, in this process
    raise SystemExit(worker_main(_worker))
