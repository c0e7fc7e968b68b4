"""Measurement helpers shared by the benchmarks: per-process peak memory, timing, isolation.

Each configuration runs in a fresh subprocess so its peak memory is its own: the worker resets the
kernel's peak-RSS counter (/proc/self/clear_refs) after building its inputs and reports the peak
*added* by the measured call (fallback where that is unavailable: ru_maxrss, an upper bound).
Time is the median of several calls after a warm-up call, with the spread (min–max).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from ..io import write_csv_atomically


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size
    except OSError:
        pass  # not Linux: the peak falls back to ru_maxrss, an upper bound


def peak_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(call: Callable[[], object], repeats: int = 3, min_seconds: float = 1.0) -> tuple[object, dict]:
    """Run ``call`` once (warm-up, and the peak-memory measurement), then time it.

    Returns ``(first result, {"time_ms", "time_min_ms", "time_max_ms", "repeats", "peak_mb"})``;
    ``peak_mb`` is the resident memory added by the first call.
    """
    base = rss_bytes()
    reset_peak()
    result = call()
    peak = peak_bytes() - base
    times = []
    budget_end = time.perf_counter() + min_seconds
    while len(times) < repeats or (time.perf_counter() < budget_end and len(times) < 50):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return result, {
        "time_ms": statistics.median(times) * 1e3,
        "time_min_ms": min(times) * 1e3,
        "time_max_ms": max(times) * 1e3,
        "repeats": len(times),
        "peak_mb": max(peak, 0) / 2**20,
    }


def run_isolated(module: str, cfg: dict) -> dict:
    """``python -m module --worker JSON`` in a fresh process; its last stdout line is the result.

    A crash becomes ``{"error": "OOM"}`` (killed, or out of memory) or ``{"error": "failed: …"}``.
    """
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["killed"]
        oom = proc.returncode < 0 or "out of memory" in proc.stderr.lower()
        return {"error": "OOM" if oom else f"failed: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_measure_args(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    """The options every benchmark shares: threads, repeats, minimum time, CSV, worker mode."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls at least (after one warm-up call)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="keep timing until this much time passed")
    parser.add_argument("--csv", default=None, help="also write the results to this CSV file (atomically)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def write_results_csv(path: str, rows: list[dict]) -> None:
    """One row per configuration, the union of all keys as columns, written atomically."""
    fields = sorted({key for row in rows for key in row})
    write_csv_atomically(path, fields, ([row.get(k, "") for k in fields] for row in rows))
    print(f"wrote {path}")
