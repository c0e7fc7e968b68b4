"""A run folder (``trainer.default_root_dir``): every output of a run lives under it, one fit writes
into it at a time, and a fresh fit never replaces an earlier run's results unless told to.

The rules (docs/guides/reliability.md):

- ``--trainer.default_root_dir DIR`` on the command line moves the loggers' ``save_dir`` and the
  checkpoint callbacks' ``dirpath`` into ``DIR`` too (the grid runner places its runs the same way).
- A fit holds an exclusive lock on ``DIR/.fit.lock`` while it runs; a second fit into ``DIR`` stops
  with an error naming the holder instead of overwriting its checkpoints and metrics.
- A fresh fit (no ``--ckpt_path``) into a folder that holds an earlier run's results stops with an
  error; ``--overwrite true`` replaces them, ``--ckpt_path last`` resumes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterator

LOCK_NAME = ".fit.lock"
#: What a fit leaves in its run folder besides the checkpoints; a fresh fit would replace them.
RESULT_FILES = ("metrics.json", "checkpoints.json")


def config_entries(value) -> list:
    """A config's logger/callbacks entry as a list (one entry, a list of them, or nothing)."""
    if isinstance(value, list):
        return value
    return [value] if value is not None and not isinstance(value, bool) else []


def point_outputs_into(trainer, run_dir: str) -> None:
    """Point a trainer config's outputs into ``run_dir``, in place: the root dir, every logger's
    ``save_dir`` and every callback's ``dirpath`` (as ``run_dir/checkpoints``).

    ``trainer`` is the ``trainer`` section of a config, a dict or a jsonargparse Namespace (both
    support ``in``, ``[]`` and ``.get``).
    """
    trainer["default_root_dir"] = run_dir
    for logger in config_entries(trainer.get("logger")):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None and "save_dir" in init_args:
            init_args["save_dir"] = run_dir
    for callback in config_entries(trainer.get("callbacks")):
        init_args = callback.get("init_args") if hasattr(callback, "get") else None
        if init_args is not None and "dirpath" in init_args:
            init_args["dirpath"] = os.path.join(run_dir, "checkpoints")


def previous_results(run_dir: str, checkpoint_dirs: list[str]) -> list[str]:
    """The files of an earlier run that a fresh fit into ``run_dir`` would replace or mix with."""
    found = [os.path.join(run_dir, name) for name in RESULT_FILES if os.path.isfile(os.path.join(run_dir, name))]
    for directory in dict.fromkeys(checkpoint_dirs):
        found += sorted(glob.glob(os.path.join(glob.escape(directory), "*.ckpt")))
    return found


def has_last_checkpoint(checkpoint_dirs: list[str]) -> bool:
    """Whether ``--ckpt_path last`` has a ``last*.ckpt`` to resume from in these folders."""
    return any(glob.glob(os.path.join(glob.escape(d), "last*.ckpt")) for d in checkpoint_dirs)


@contextlib.contextmanager
def fit_lock(run_dir: str) -> Iterator[None]:
    """Hold ``run_dir``'s fit lock for the duration; ValueError at once if another process holds it.

    An OS lock (``flock``), so a killed fit never leaves a stale lock behind; the holder's pid is
    written into the file for the message.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ValueError(
                f"another fit (pid {holder}) is writing into {run_dir}; wait for it to end, or give this run "
                "its own folder with --trainer.default_root_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
