"""``python -m vir_lightning grid SPEC.yaml``: run a declarative grid, locally or on Ray.

    python -m vir_lightning grid experiments/decay_1d_vs_2d.yaml [--out DIR] [--dry-run]
        [--workers N] [--executor local|ray] [--ray-address ADDR] [--cpus-per-run N] [--retry-failed]

Every run is the normal CLI in its own process and run directory (see :mod:`.execute`). Runs that
ended are never redone; a grid stopped at any point (even SIGKILL) picks up where it stopped. The
reports in ``--out`` are rewritten after every finished run.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time

from ..grid.execute import execute_run, read_status, status_for_metrics
from ..grid.plan import plan
from ..grid.report import REPORT_FILES, report_run, write_reports
from ..grid.spec import load_spec
from ..io import add_overwrite_argument, check_output_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning grid", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="the grid spec (YAML)")
    p.add_argument("--out", default=None, help="results and run directories (default: runs/grids/<name>)")
    p.add_argument("--dry-run", action="store_true", help="check the spec and list the runs; run nothing")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local: runs at a time (default 1), each with cores/N threads unless OMP_NUM_THREADS is set",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="ray: the cluster to join (e.g. ray://head:10001 or auto); none: start a local Ray",
    )
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs each run reserves")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: keep them failed)")
    add_overwrite_argument(p, "report files in --out that another grid wrote, or that were not written here")
    return p


def _lock(out_dir: str):
    """One grid per output folder at a time; the lock dies with the process (even SIGKILL)."""
    handle = open(os.path.join(out_dir, ".grid.lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ValueError(f"another grid is running with --out {out_dir}; wait for it or use another --out") from None
    return handle


def _local(pending: list[dict], workers: int, retry_failed: bool):
    from concurrent.futures import ThreadPoolExecutor, as_completed

    # Each run gets its share of the cores (torch would start a thread per core in every run; Ray
    # does the same per task from its num_cpus).
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(execute_run, {**run, "threads": threads}, retry_failed): run for run in pending}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _ray(pending: list[dict], address: str | None, cpus_per_run: float, retry_failed: bool):
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_run)(execute_run)
        refs = {task.remote(run, retry_failed): run for run in pending}
        while refs:
            (ready,), _ = ray.wait(list(refs), num_returns=1)
            yield refs.pop(ready), ray.get(ready)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected at least 1")
    if not args.cpus_per_run > 0:
        raise ValueError(f"--cpus-per-run {args.cpus_per_run}: expected a positive number of CPUs")
    if args.executor != "ray" and (args.ray_address is not None or args.cpus_per_run != 1.0):
        raise ValueError(
            "--ray-address and --cpus-per-run are options of --executor ray; add --executor ray,"
            " or drop them (--workers sets the local runs at a time)"
        )
    spec = load_spec(args.spec)
    out_dir = os.path.abspath(args.out or os.path.join("runs", "grids", spec.name))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # a dry run says so too
        raise ValueError(f"--out {out_dir} is a file; give a folder for the results and runs")
    for name in REPORT_FILES:  # before any run trains; a dry run says so too
        check_output_path(os.path.join(out_dir, name), "--out", overwrite=args.overwrite, run=report_run(spec))
    if args.dry_run:
        lock = None
    else:
        os.makedirs(out_dir, exist_ok=True)
        lock = _lock(out_dir)
    command = "python -m vir_lightning grid " + " ".join(argv if argv is not None else sys.argv[1:])

    print(f"grid {spec.name}: checking {len(spec.points())} runs against the CLI …", flush=True)
    runs = plan(spec, out_dir, workers=min(4, os.cpu_count() or 1))
    statuses = {run.run_id: status_for_metrics(run.to_dict(), read_status(run.run_dir)) for run in runs}
    ended = {rid for rid, st in statuses.items() if st and (st["state"] == "done" or not args.retry_failed)}
    pending = [run for run in runs if run.run_id not in ended]
    for run in runs:
        state = (statuses[run.run_id] or {}).get("state")
        if run.run_id in ended:
            mark = state
        elif os.path.exists(os.path.join(run.run_dir, "checkpoints", "last.ckpt")):
            mark = "resume"
        else:
            mark = "pending"
        print(f"  {mark:8s} {run.run_id}  seed {run.point.seed}  {run.point.label()}")
    print(f"{len(runs)} runs: {len(runs) - len(pending)} ended, {len(pending)} to run; results in {out_dir}")
    if args.dry_run:
        return 0

    for run in runs:
        run.write_config()
    write_reports(spec, runs, statuses, out_dir, command, args.overwrite)
    by_id = {run.run_id: run for run in runs}
    if args.executor == "ray":
        results = _ray([r.to_dict() for r in pending], args.ray_address, args.cpus_per_run, args.retry_failed)
    else:
        results = _local([r.to_dict() for r in pending], args.workers, args.retry_failed)
    start = time.time()
    for finished, (run, status) in enumerate(results, start=1):
        status = statuses[run["run_id"]] = status_for_metrics(run, status)
        write_reports(spec, runs, statuses, out_dir, command, args.overwrite)
        detail = ", ".join(f"{k} {v:.4f}" for k, v in (status.get("metrics") or {}).items()) or status.get("reason")
        print(
            f"[{finished}/{len(pending)}] {status['state']:6s} {run['run_id']}  {by_id[run['run_id']].point.label()}"
            f"  seed {run['seed']}: {detail}  ({status.get('seconds', 0):.0f} s; {time.time() - start:.0f} s in all)",
            flush=True,
        )
    failed = [rid for rid, st in statuses.items() if st and st["state"] == "failed"]
    print(
        f"wrote {os.path.join(out_dir, 'results.csv')} and results.md"
        + (f"; {len(failed)} failed run(s), logs listed in results.md" if failed else "")
    )
    lock.close()  # released on exit anyway; explicit for the in-process callers (tests)
    return 1 if failed else 0
