"""Execute one run: the normal CLI in its own process, in its own run directory, resumable.

A run directory holds ``config.yaml`` (the resolved config), ``run.log`` (everything the CLI
printed), ``metrics.json`` (written by the CLI after each subcommand), ``steps.json`` (the steps
that ended, with their seconds), a folder per tagged step (its own ``config.yaml``, checkpoints and
``metrics.json``) and, once the run ended, ``status.json``. Only ``status.json`` marks a run as
ended, and it is written atomically last:

- ``done``: never run again; its metrics are read from ``status.json``;
- ``failed``: recorded with the exit status and the log path; not retried unless asked;
- no status (the grid was killed, even with SIGKILL): run again from the first step that did not
  end, resuming a ``fit`` from its ``checkpoints/last.ckpt`` when there is one.

A tagged step starts from the checkpoint the run's fit selected, which the CLI names in
``checkpoints.json`` after the fit.

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


def _read_json(path: str, missing=None):
    return json.loads(Path(path).read_text()) if os.path.exists(path) else missing


def _write_json(path: str, content: dict) -> dict:
    # A run's own state (status.json, steps.json) in the run folder the grid made for it: the grid's
    # bookkeeping, which it keeps current even where a person edited it (to rerun a step, say).
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(content, indent=1))
    return content


def read_status(run_dir: str) -> dict | None:
    return _read_json(os.path.join(run_dir, "status.json"))


def status_for_metrics(run: dict, status: dict | None) -> dict | None:
    """``status`` of ``run`` (see :meth:`Run.to_dict`) for the metrics the spec names now.

    A grid resumed after its spec gained a metric finds runs that ended ``done`` with only the old
    ones: the new metric is read from the ``metrics.json`` the run's steps wrote (they log every
    metric); one that was never logged makes the run ``failed`` here, with the reason, instead of a
    blank cell in a done row. ``status.json`` itself is left as the run wrote it.
    """
    if not status or status.get("state") != "done":
        return status
    metrics = status.get("metrics") or {}
    if all(m in metrics for m in run["metrics"]):
        return status
    logged = {**_collect_metrics(run), **metrics}
    missing = [m for m in run["metrics"] if m not in logged]
    if missing:
        status_path = os.path.join(run["run_dir"], "status.json")
        return {
            **status,
            "state": "failed",
            "reason": (
                f"metrics {missing} were not logged (logged: {sorted(logged)}); the spec names them since this"
                f" run ended: delete {status_path} to run it again"
            ),
        }
    return {**status, "metrics": {m: logged[m] for m in run["metrics"]}}


def _write_status(run_dir: str, status: dict) -> dict:
    return _write_json(os.path.join(run_dir, "status.json"), status)


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
        return _write_status(
            run_dir, dict(state="failed", reason=f"{type(err).__name__}: {err}", log=os.path.join(run_dir, "run.log"))
        )


def _fit_weights(run_dir: str) -> str:
    """The checkpoint tagged steps start from: the one the run's fit selected (its best, the one
    ``test_after_fit`` tested), else its ``last.ckpt``."""
    best = _read_json(os.path.join(run_dir, "checkpoints.json"), {}).get("best_model_path")
    if best and os.path.exists(best):
        return best
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if os.path.exists(last):
        return last
    raise FileNotFoundError(
        f"the run's fit left no checkpoint in {run_dir}/checkpoints for the tagged steps to start from"
    )


def _step_command(run: dict, step: dict) -> list[str]:
    run_dir = run["run_dir"]
    step_dir = os.path.join(run_dir, step["tag"]) if step["tag"] else run_dir
    cmd = [sys.executable, "-m", "vir_lightning", step["run"], "--config", os.path.join(step_dir, "config.yaml")]
    if step["tag"]:
        cmd += ["--model.init_args.pretrained", _fit_weights(run_dir)]
    last = os.path.join(step_dir, "checkpoints", "last.ckpt")
    if os.path.exists(last):
        # Only a fit writes checkpoints into a step's folder. A fit resumes where a killed grid
        # stopped; the run's own validate/test use the weights its fit produced.
        cmd += ["--ckpt_path", last]
    elif step["run"] == "fit":
        # A fit that has not ended (ended steps are skipped) and cannot resume starts afresh. What its
        # folder holds is a killed or failed attempt's (a best checkpoint saved before a SIGKILL, say):
        # the grid's own, to replace, where the fit's guard would refuse it as an earlier run's results.
        cmd += ["--overwrite", "true"]
    return cmd


def _collect_metrics(run: dict) -> dict:
    """Every metric the steps logged: the run's own as named, a tagged step's as ``<metric>@<tag>``."""
    collected = {}
    for tag in [None] + [s["tag"] for s in run["steps"] if s["tag"]]:
        logged = _read_json(os.path.join(run["run_dir"], tag or "", "metrics.json"), {})
        collected.update({f"{k}@{tag}" if tag else k: v for k, v in logged.items()})
    return collected


def _execute(run: dict) -> dict:
    run_dir = run["run_dir"]
    log_path = os.path.join(run_dir, "run.log")
    progress_path = os.path.join(run_dir, "steps.json")  # steps that ended, with their seconds
    progress = _read_json(progress_path, {})
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    if run.get("threads") and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(run["threads"])  # runs side by side share the cores, not oversubscribe
    start = time.time()
    resumed = False
    with open(log_path, "a") as log:
        for step in run["steps"]:
            if step["name"] in progress:
                continue  # ended before the grid was stopped: never redone
            cmd = _step_command(run, step)
            resumed = resumed or "--ckpt_path" in cmd and step["run"] == "fit"
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            step_start = time.time()
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(), preexec_fn=_die_with_parent
            )
            if proc.returncode != 0:
                return _write_status(
                    run_dir,
                    dict(
                        state="failed",
                        reason=f"{step['name']} exited with status {proc.returncode}",
                        log=log_path,
                        seconds=round(time.time() - start, 1),
                        resumed=resumed,
                    ),
                )
            progress[step["name"]] = round(time.time() - step_start, 1)
            _write_json(progress_path, progress)
    logged = _collect_metrics(run)
    missing = [m for m in run["metrics"] if m not in logged]
    if missing:
        return _write_status(
            run_dir,
            dict(
                state="failed",
                reason=f"metrics {missing} were not logged (logged: {sorted(logged)})",
                log=log_path,
                seconds=round(time.time() - start, 1),
                resumed=resumed,
            ),
        )
    return _write_status(
        run_dir,
        dict(
            state="done",
            metrics={m: logged[m] for m in run["metrics"]},
            log=log_path,
            seconds=round(time.time() - start, 1),
            resumed=resumed,
            steps=progress,
        ),
    )
