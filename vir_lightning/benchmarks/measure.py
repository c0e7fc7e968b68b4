"""Measurement helpers shared by the benchmarks: per-process peak memory, timing, isolation.

Each configuration runs in a fresh subprocess so its peak memory is its own. After a warm-up call,
the kernel's peak-RSS counter (/proc/self/clear_refs) is reset and one call's peak *added* resident
memory is read, with glibc returning freed memory at once (fallback where that is unavailable:
ru_maxrss, an upper bound). Time is the median of several calls, with the spread (min–max).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from ..io import add_overwrite_argument, check_output_path, write_csv_atomically


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False  # not glibc: nothing changes


def return_freed_memory() -> bool:
    """Make glibc give every allocation above 128 KB its own mapping, unmapped when freed.

    The resident set then follows the live tensors, so its peak is the memory a call needs.
    (By default glibc moves its mmap threshold up as tensors are freed and serves later ones from
    a heap that only shrinks from the top: the peak then depends on fragmentation.)
    """
    m_mmap_threshold = -3  # from <malloc.h>
    return _mallopt(m_mmap_threshold, 128 * 1024)


def keep_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory (no mmap, no trim).

    By default each tensor above a few MB is a fresh mmap, and every page of it is faulted in on
    first touch — on this VM that costs ~12 ms per 50 MB, more than a 50 MB GELU. A heap that keeps
    freed pages makes the next layer's tensors warm, as jemalloc/tcmalloc do. Returns False where
    glibc's ``mallopt`` is not available (nothing changes then).
    """
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return _mallopt(m_mmap_max, 0) and _mallopt(m_trim_threshold, 2**31 - 1)


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


def measure(
    call: Callable[[], object],
    repeats: int = 3,
    min_seconds: float = 1.0,
    first_call_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    allocator: str = "system",
) -> tuple[object, dict]:
    """Warm up, measure the peak memory of one call, then time ``call`` on the CPU.

    1. A warm-up call inside ``first_call_context`` (e.g. a FLOP counter, so it never slows a
       timed call); one-time set-up (kernels, optimizer state) happens here.
    2. One call whose peak resident memory above the resident set before it is ``peak_mb``, with
       freed memory returned to the system (:func:`return_freed_memory`), so it is the call's
       working memory — activations, temporaries, gradients — not allocator leftovers.
    3. With ``allocator="cached"``, the allocator then keeps freed memory (:func:`keep_freed_memory`)
       and one more untimed call warms it.
    4. Timed calls: at least ``repeats``, more until ``min_seconds`` passed.

    Returns ``(result of the warm-up call, {"time_ms", "time_min_ms", "time_max_ms", "repeats",
    "peak_mb"})``.
    """
    return_freed_memory()
    with first_call_context():
        result = call()
    base = rss_bytes()
    reset_peak()
    call()
    peak = peak_bytes() - base
    if allocator == "cached" and keep_freed_memory():
        call()

    def time_one() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    times = _timed_calls(time_one, repeats, min_seconds)
    return result, {**_summary(times), "peak_mb": max(peak, 0) / 2**20}


def measure_cuda(
    call: Callable[[], object],
    repeats: int = 3,
    min_seconds: float = 1.0,
    first_call_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[object, dict]:
    """:func:`measure` on a CUDA device: the peak is ``torch.cuda.max_memory_allocated`` during the
    second call above what was allocated before it; each timed call is bracketed by CUDA events,
    read after a synchronisation."""
    import torch

    with first_call_context():
        result = call()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base

    def time_one() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()  # the events are only complete after this
        return start.elapsed_time(end) / 1e3

    times = _timed_calls(time_one, repeats, min_seconds)
    return result, {**_summary(times), "peak_mb": max(peak, 0) / 2**20}


def _timed_calls(time_one: Callable[[], float], repeats: int, min_seconds: float) -> list[float]:
    """At least ``repeats`` timed calls, more until ``min_seconds`` passed (at most 50)."""
    times = []
    budget_end = time.perf_counter() + min_seconds
    while len(times) < repeats or (time.perf_counter() < budget_end and len(times) < 50):
        times.append(time_one())
    return times


def _summary(times: list[float]) -> dict:
    return {
        "time_ms": statistics.median(times) * 1e3,
        "time_min_ms": min(times) * 1e3,
        "time_max_ms": max(times) * 1e3,
        "repeats": len(times),
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


def worker_main(worker: Callable[[dict], dict], argv: list[str] | None = None) -> int:
    """The ``python -m <benchmark module> --worker JSON`` side of :func:`run_isolated`: one
    configuration measured in this process, its result printed as the last stdout line."""
    parser = argparse.ArgumentParser(description="one benchmark configuration (run by run_isolated)")
    parser.add_argument("--worker", required=True, help="the configuration, as JSON")
    args, _ = parser.parse_known_args(argv)
    print(json.dumps(worker(json.loads(args.worker))))
    return 0


def add_measure_args(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    """The options every benchmark shares: threads, repeats, minimum time, allocator, CSV, worker mode."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls at least (after one warm-up call)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="keep timing until this much time passed")
    parser.add_argument(
        "--allocator",
        choices=("cached", "system"),
        default="cached",
        help="cached: glibc keeps freed memory (no page faults per new tensor); system: as is",
    )
    parser.add_argument("--csv", default=None, help="also write the results to this CSV file (atomically)")
    add_overwrite_argument(parser, "result files that another benchmark run wrote, or that were not written here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


#: Options that say where results go, not what they are.
OUTPUT_OPTIONS = ("csv", "out", "overwrite", "worker", "run")


def measured_run(args: argparse.Namespace) -> str:
    """What makes a benchmark's results what they are (every option but the output paths): results of
    a run with other options never replace them silently (see :func:`~vir_lightning.io.check_output_path`)."""
    options = ", ".join(f"{key}={value}" for key, value in sorted(vars(args).items()) if key not in OUTPUT_OPTIONS)
    return f"benchmark with {options}"


def check_measure_args(args: argparse.Namespace) -> None:
    """ValueError naming the option, before anything runs, for a value :func:`add_measure_args`'
    options cannot take (each configuration would otherwise fail alone, or the CSV after the runs)."""
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected at least 1")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected at least 1 timed call")
    if not 0 <= args.min_seconds < float("inf"):
        raise ValueError(f"--min-seconds {args.min_seconds}: expected a finite number >= 0")
    args.run = measured_run(args)
    if args.csv is not None:
        check_output_path(args.csv, "--csv", overwrite=args.overwrite, run=args.run)


def check_output_folder(option: str, path: str) -> None:
    """ValueError if ``path`` (or a folder above it) exists as something other than a folder."""
    head = os.path.abspath(path)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise ValueError(f"{option} {path!r}: {head!r} is a file, not a folder; choose another path")


def check_positive(option: str, values, minimum: float = 1) -> None:
    """ValueError naming ``option`` unless every value is at least ``minimum``."""
    bad = [v for v in (values if isinstance(values, list) else [values]) if v is not None and not v >= minimum]
    if bad:
        raise ValueError(
            f"{option} {' '.join(map(str, bad))}: expected {'values' if len(bad) > 1 else 'a value'} >= {minimum:g}"
        )


def write_results_csv(path: str, rows: list[dict], args: argparse.Namespace) -> None:
    """One row per configuration, the union of all keys as columns, written atomically (replacing an
    earlier file only as ``args`` allow: see :func:`check_measure_args`)."""
    fields = sorted({key for row in rows for key in row})
    write_csv_atomically(
        path, fields, ([row.get(k, "") for k in fields] for row in rows), overwrite=args.overwrite, run=args.run
    )
    print(f"wrote {path}")
