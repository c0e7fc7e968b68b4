"""Small file utilities shared by the commands that write results."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence


def write_csv_atomically(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV to a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and an interrupted write leaves nothing behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".partial-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
