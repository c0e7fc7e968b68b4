"""Small file utilities shared by the commands that write results: nothing half-written is left."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence


def _nearest_existing(folder: str) -> str:
    """``folder`` or its closest ancestor that exists (the one a makedirs would create below)."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


#: Written into every folder :func:`atomic_output` makes: only a folder holding it (or an empty one) is
#: replaced whole, so ``export-cluttered ~/data`` cannot delete files that this library did not write.
OUTPUT_MARKER = ".written-by-vir_lightning"


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (through links, ``..`` and hard links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path: str, what: str = "output", directory: bool = False, replaces: bool = False,
                      inputs: Sequence[str] = ()) -> None:
    """Raise a one-line ValueError, naming the fix, when :func:`atomic_output` could not write ``path``,
    or when writing it would replace one of the command's own ``inputs``.

    Called before any work by the commands whose results take long to compute, so a bad output
    path fails at once instead of after the work: ``path`` names an existing folder (file wanted)
    or file (folder wanted), an existing read-only file (the user protected it: it is not
    replaced), or a place below a file or without write permission. With ``replaces`` (a folder
    that will be replaced whole), also a folder that holds files and no :data:`OUTPUT_MARKER`:
    something other than this library's output, kept.
    """
    path = os.fspath(path)  # a pathlib.Path as well as a str
    if not path:
        raise ValueError(f"{what}: the output path is empty; give a file name")
    if not directory and path.endswith(("/", os.sep)) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} ends with '/', so it names a folder; give a file name")
    if not directory and os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory; give a file name (e.g. {os.path.join(path, 'out')}…)")
    for source in inputs:
        if source and _same_file(path, os.fspath(source)):
            raise ValueError(f"{what} {path!r} is this command's own input {os.fspath(source)!r}: writing it would"
                             " replace that input; choose another output path")
    if directory and os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is an existing file; give a folder name")
    if replaces and os.path.isdir(path) and not os.path.exists(os.path.join(path, OUTPUT_MARKER)):
        try:
            foreign = bool(os.listdir(path))
        except OSError as err:
            message = f"{what} {path!r}: cannot read the folder ({err.strerror}); choose another location"
            raise ValueError(message) from None
        if foreign:
            raise ValueError(f"{what} {path!r} is a folder with other files in it, not one this command wrote (or one"
                             " written before vir_lightning marked its folders), so it is kept: the output replaces"
                             " its folder whole; choose a new folder name, or delete that folder yourself")
    if os.path.isfile(path) and not os.stat(path).st_mode & 0o222:
        raise ValueError(f"{what} {path!r} exists and is read-only, so it is kept; make it writable"
                         " (chmod u+w) to replace it, or choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing):
        raise ValueError(f"{what} {path!r}: {existing!r} is a file, so the folder {parent!r} cannot be created;"
                         " choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r}: no permission to write in {existing!r}; choose a writable location")


@contextlib.contextmanager
def atomic_output(path: str, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    A reader never sees a half-written file (or folder, with ``directory=True``), and an
    interrupted write leaves nothing behind and the earlier ``path`` intact. An existing ``path``
    is replaced (a read-only file is refused, and so is a folder this library did not write: see
    :func:`check_output_path`); a folder gets :data:`OUTPUT_MARKER`, and the result the user's
    umask. A path that cannot be written, or a full or read-only disk, is a ValueError.
    """
    path = os.fspath(path)
    if os.path.islink(path):  # write what the link points to, rather than replace the link by a file
        path = os.path.realpath(path)
    check_output_path(path, directory=directory, replaces=directory)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        os.makedirs(parent, exist_ok=True)
        if directory:
            tmp = tempfile.mkdtemp(dir=parent, prefix=f".partial-{base}-")
        else:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".partial-", suffix=os.path.splitext(base)[1])
            os.close(fd)
    except OSError as err:
        raise ValueError(f"cannot write {path!r} ({err.strerror}); choose a writable location") from None
    try:
        yield tmp
        if directory and os.path.isdir(tmp):
            with open(os.path.join(tmp, OUTPUT_MARKER), "w") as marker:
                marker.write("Written by vir_lightning; the next write to this folder replaces it whole.\n")
        if os.path.exists(tmp):
            # mkstemp / mkdtemp make it 0600 / 0700; the result gets the user's umask
            os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and os.path.isdir(path):
            # Move the old folder aside first, so a crash between the two renames still leaves it.
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{base}-")
            os.replace(path, os.path.join(old, base))
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(os.path.join(old, base), path)
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            raise ValueError(f"cannot write {path!r} ({err.strerror}); free space or choose another location"
                             " (the earlier file, if any, is intact)") from None
        raise


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


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
