"""Execute one run: the normal CLI in its own process, in its own run directory, resumable.

A run directory holds ``config.yaml`` (the resolved config), ``run.log`` (everything the CLI
printed), ``metrics.json`` (written by the CLI after each subcommand) and, once the run ended,
``status.json``. Only ``status.json`` marks a run as ended, and it is written atomically last:

- ``done``: never run again; its metrics are read from ``status.json``;
- ``failed``: recorded with the exit status and the log path; not retried unless asked;
- no status (the grid was killed, even with SIGKILL): run again, resuming ``fit`` from the run's
  ``checkpoints/last.ckpt`` when there is one.

The CLI process gets SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a killed grid
leaves no orphan writing into a run directory that the resumed grid will use.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..io import atomic_output


def _die_with_parent() -> None:
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6").prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: a killed grid may leave its current run's process behind


def read_status(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "status.json")
    if not os.path.exists(path):
        return None
    return json.loads(Path(path).read_text())


def _write_status(run_dir: str, status: dict) -> dict:
    with atomic_output(os.path.join(run_dir, "status.json")) as tmp:
        Path(tmp).write_text(json.dumps(status, indent=1))
    return status


def execute_run(run: dict, retry_failed: bool = False) -> dict:
    """Run ``run`` (see :meth:`Run.to_dict`) to its end unless it already ended; returns its status.

    Importable by reference, so the same function is a Ray task on a cluster. Anything that goes
    wrong (the CLI failing, or this function itself) ends the run as ``failed``, never the grid.
    """
    run_dir = run["run_dir"]
    status = read_status(run_dir)
    if status is not None and (status["state"] == "done" or not retry_failed):
        return {**status, "skipped": True}
    try:
        return _execute(run)
    except Exception as err:  # noqa: BLE001 — recorded in the run's status, the grid goes on
        return _write_status(run_dir, dict(state="failed", reason=f"{type(err).__name__}: {err}",
                                           log=os.path.join(run_dir, "run.log")))


def _execute(run: dict) -> dict:
    run_dir = run["run_dir"]
    config = os.path.join(run_dir, "config.yaml")
    log_path = os.path.join(run_dir, "run.log")
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.time()
    resumed = False
    with open(log_path, "a") as log:
        for subcommand in run["subcommands"]:
            cmd = [sys.executable, "-m", "vir_lightning", subcommand, "--config", config]
            if os.path.exists(last) and "fit" in run["subcommands"]:
                # fit: resume where a killed grid stopped; validate/test: the weights fit produced
                cmd += ["--ckpt_path", last]
                resumed = resumed or subcommand == "fit"
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                                  preexec_fn=_die_with_parent)
            if proc.returncode != 0:
                return _write_status(run_dir, dict(
                    state="failed", reason=f"{subcommand} exited with status {proc.returncode}", log=log_path,
                    seconds=round(time.time() - start, 1), resumed=resumed,
                ))
    metrics_path = os.path.join(run_dir, "metrics.json")
    logged = json.loads(Path(metrics_path).read_text()) if os.path.exists(metrics_path) else {}
    missing = [m for m in run["metrics"] if m not in logged]
    if missing:
        return _write_status(run_dir, dict(
            state="failed", reason=f"metrics {missing} were not logged (logged: {sorted(logged)})", log=log_path,
            seconds=round(time.time() - start, 1), resumed=resumed,
        ))
    return _write_status(run_dir, dict(
        state="done", metrics={m: logged[m] for m in run["metrics"]}, log=log_path,
        seconds=round(time.time() - start, 1), resumed=resumed,
    ))
