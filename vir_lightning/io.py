"""Small file utilities shared by the commands that write results: nothing half-written is left."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence


@contextlib.contextmanager
def atomic_output(path: str, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    A reader never sees a half-written file (or folder, with ``directory=True``), and an
    interrupted write leaves nothing behind. An existing ``path`` is replaced.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    if directory:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".partial-{base}-")
    else:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".partial-", suffix=os.path.splitext(base)[1])
        os.close(fd)
    try:
        yield tmp
        if not directory and os.path.exists(tmp):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result gets the user's umask
        if directory and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv_atomically(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV through :func:`atomic_output`."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
